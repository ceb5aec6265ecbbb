"""A clinic network: clinic plans, clients and their sessions, invalid cases and corrected re-exports."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from datetime import date, timedelta

from alliance.instruments import Instrument, instrument
from alliance.samples.trajectories import SHAPES, Scale, Value, ceiling_base, outcome_walk, rating, split_total, steady

PATTERNS = ("stable", "sudden_loss", "slow_decline", "single_low", "rupture_repair")
LAYOUTS = ("us_csv", "eu_csv", "xlsx", "json")

# id, display name, client-ref prefix, therapist-id prefix
_NAMED_CLINICS = (
    ("northside", "Northside Counseling Center", "N", "north"),
    ("rheinpark", "Praxis am Rheinpark", "R", "rhein"),
    ("harbor", "Harbor Wellbeing Service", "H", "harbor"),
    ("lakeview", "Lakeview Family Therapy", "L", "lake"),
)
_TIMEZONES = {
    "us_csv": "America/Chicago",
    "eu_csv": "Europe/Berlin",
    "xlsx": "Europe/London",
    "json": "America/Los_Angeles",
}
EXTENSIONS = {"us_csv": "csv", "eu_csv": "csv", "xlsx": "xlsx", "json": "json"}
_INVALID_KINDS = (
    "out_of_range",
    "non_numeric",
    "missing_ref",
    "bad_date",
    "future_date",
    "session_zero",
    "total_mismatch",
    "duplicate_key",
)
_INVALID_SHARE = 0.015
MIN_WEEKS = 8
_PATTERN_MIN_SESSIONS = 8
_MAX_SESSIONS = 24
_SKIP_WEEK_CHANCE = 0.15
_ORS_SKIP_CHANCE = 0.08
_NAME_CANARY_EVERY = 7
_NOTE_CANARY_CHANCE = 0.06
_NOTE_CHANCE = 0.35
_CORRECTIONS = 5


@dataclass(frozen=True)
class PlantedDyad:
    """A client–therapist pair whose alliance trajectory was planted on purpose."""

    clinic_id: str
    client_ref: str
    therapist_id: str
    instrument: str
    pattern: str
    event_session: int | None


@dataclass(frozen=True)
class ClinicPlan:
    id: str
    name: str
    layout: str
    ref_prefix: str
    therapist_prefix: str

    @property
    def timezone(self) -> str:
        return _TIMEZONES[self.layout]

    @property
    def alliance(self) -> Instrument:
        return instrument("WAI_SR" if self.layout == "xlsx" else "SRS")

    @property
    def has_outcome(self) -> bool:
        return self.layout in ("us_csv", "json")


def clinic_plan(index: int) -> ClinicPlan:
    layout = LAYOUTS[index % len(LAYOUTS)]
    if index < len(_NAMED_CLINICS):
        clinic_id, name, ref_prefix, therapist_prefix = _NAMED_CLINICS[index]
        return ClinicPlan(clinic_id, name, layout, ref_prefix, therapist_prefix)
    number = f"{index + 1:02d}"
    return ClinicPlan(f"clinic{number}", f"Community Clinic {number}", layout, f"C{number}", f"clinic{number}")


class _CanaryMint:
    """Hands out numbered canary strings for one clinic and remembers them."""

    def __init__(self, clinic_id: str, issued: list[str]) -> None:
        self._clinic_id = clinic_id
        self._issued = issued
        self._count = 0

    def __call__(self) -> str:
        self._count += 1
        canary = f"CANARY-{self._clinic_id}-{self._count}"
        self._issued.append(canary)
        return canary


@dataclass(slots=True)
class Row:
    """One session line of an export, before layout-specific formatting."""

    client_ref: str
    client_name: str
    therapist: str
    when: date | str
    number: int
    alliance: list[Value]
    outcome: list[Value] | None
    note: str
    correctable: bool = False

    @property
    def ratings(self) -> int:
        return 1 + (self.outcome is not None)


@dataclass
class Block:
    """The rows of one client entry (a dyad, or one invalid case) as the JSON layout nests them."""

    rows: list[Row]
    invalid: int = 0


@dataclass
class ClinicData:
    plan: ClinicPlan
    blocks: list[Block] = field(default_factory=list)
    dyads: list[PlantedDyad] = field(default_factory=list)


_FIRST = {
    "en": ("Maria", "James", "Aisha", "Daniel", "Priya", "Tom", "Grace", "Luis", "Emma", "Noah", "Chloe", "Omar"),
    "de": ("Jürgen", "Özlem", "Lena", "Björn", "Käthe", "Mehmet", "Anna", "Jörg", "Sophie", "Lukas", "Hülya"),
    "es": ("José", "Ana", "Chloé", "Itzel", "Zoë", "Renée", "Andrés", "Ingrid", "Kai", "Mei", "Sean"),
}
_LAST = {
    "en": ("Lopez", "O'Brien", "Smith", "Nguyen", "Patel", "Johnson", "Walker", "Kim", "Brown", "Davies"),
    "de": ("Müller", "Schäfer", "Weiß", "Yildiz", "Köhler", "Groß", "Becker", "Hoffmann", "Krüger"),
    "es": ("Núñez", "García", "Okafor", "Müller-Lee", "Sánchez", "Chen", "Dubois", "Martín", "Reyes"),
}
_NOTES = {
    "en": (
        "Discussed work stress, sleep and family.",
        'Client said "rough week", wants to focus on boundaries.',
        "Homework: breathing exercise.\nFollow up next week.",
        "Reviewed goals; client prefers more structure.",
        "Arrived late, seemed tired, engaged later in session.",
        "Talked about the move, finances, and the kids.",
    ),
    "de": (
        "Klientin berichtet über Prüfungsangst; Schlaf etwas besser.",
        "Thema Trennung, Gefühle von Schuld – weiter beobachten.",
        "Hausaufgabe: Tagebuch führen.\nNächster Termin in 2 Wochen.",
        "Zuzahlung 10 € noch offen, Überweisung angekündigt.",
        'Klient sagt: "Es läuft gut", wirkt aber angespannt.',
    ),
}
_CANARY_NOTES = {
    "en": ("Call back re {c}, left voicemail.", "Supervisor check-in ({c}), no concerns.", "Ref {c}: see intake."),
    "de": ("Rückruf wegen {c}, Nachricht hinterlassen.", "Supervision ({c}): keine Bedenken."),
}
_LANGUAGE = {"us_csv": "en", "eu_csv": "de", "xlsx": "en", "json": "es"}


def _language(plan: ClinicPlan) -> str:
    return _LANGUAGE[plan.layout]


def _fake_name(plan: ClinicPlan, rng: random.Random) -> str:
    names = _language(plan)
    return f"{rng.choice(_FIRST[names])} {rng.choice(_LAST[names])}"


def _note_language(plan: ClinicPlan) -> str:
    return "de" if _language(plan) == "de" else "en"


def _plain_note(plan: ClinicPlan, rng: random.Random) -> str:
    return rng.choice(_NOTES[_note_language(plan)]) if rng.random() < _NOTE_CHANCE else ""


def _note(plan: ClinicPlan, rng: random.Random, mint: _CanaryMint, force_canary: bool) -> str:
    if force_canary or rng.random() < _NOTE_CANARY_CHANCE:
        return rng.choice(_CANARY_NOTES[_note_language(plan)]).format(c=mint())
    return _plain_note(plan, rng)


def _assign_patterns(n: int, rng: random.Random) -> list[str]:
    """About 80% stable and 5% of each planted shape; every shape at least once from 5 dyads up.

    The share mirrors a real caseload closely enough that the review queue lands near the 10–15% of
    dyads supervisors can act on (domain.md), with the persistent shapes (sudden loss, slow decline).
    """
    each = max(1, round(n / 20)) if n >= 5 else 0
    patterns = [p for p in PATTERNS[1:] for _ in range(each)]
    patterns += ["stable"] * (n - len(patterns))
    rng.shuffle(patterns)
    return patterns


def _session_dates(n: int, weeks: int, last_day: date, rng: random.Random) -> list[date]:
    """n weekly sessions with skipped weeks, placed at a random start inside the window."""
    skips = min(weeks - n, sum(rng.random() < _SKIP_WEEK_CHANCE for _ in range(n)))
    span = n + skips
    start = rng.randint(0, weeks - span)
    first_day = last_day - timedelta(days=7 * weeks - 1)
    weekday = rng.randrange(7)
    dates = []
    for week in sorted(rng.sample(range(span), n)):
        # an occasional reschedule stays inside its own week, so dates stay in order
        day = min(6, max(0, weekday + rng.choice((0, 0, 0, 0, -1, 1))))
        dates.append(first_day + timedelta(days=7 * (start + week) + day))
    return dates


def _planted_block(
    plan: ClinicPlan,
    index: int,
    pattern: str,
    therapist: str,
    weeks: int,
    last_day: date,
    rng: random.Random,
    mint: _CanaryMint,
) -> tuple[Block, PlantedDyad]:
    ref = f"{plan.ref_prefix}-{index + 1:04d}"
    low = _PATTERN_MIN_SESSIONS if pattern != "stable" else min(5, weeks)
    n = rng.randint(low, max(low, min(weeks, _MAX_SESSIONS)))
    dates = _session_dates(n, weeks, last_day, rng)
    scale = Scale.of(plan.alliance)
    totals, event = SHAPES[pattern](scale, n, rng)
    outcome_scale = Scale.of(instrument("ORS"))
    outcomes = outcome_walk(outcome_scale, n, rng)
    name = _fake_name(plan, rng)
    if index % _NAME_CANARY_EVERY == 0:
        name = f"{name} {mint()}"
    rows = []
    for s in range(n):
        measured = plan.has_outcome and rng.random() >= _ORS_SKIP_CHANCE
        rows.append(
            Row(
                client_ref=ref,
                client_name=name,
                therapist=therapist,
                when=dates[s],
                number=s + 1,
                alliance=rating(scale, totals[s], rng),
                outcome=rating(outcome_scale, outcomes[s], rng) if measured else None,
                note=_note(plan, rng, mint, force_canary=index == 0 and s == n - 1),
                correctable=pattern == "stable",
            )
        )
    dyad = PlantedDyad(plan.id, ref, therapist, plan.alliance.code, pattern, None if event is None else event + 1)
    return Block(rows), dyad


# ---------------------------------------------------------------- invalid rows


def _garbage_date(plan: ClinicPlan, today: date) -> str:
    return {"eu_csv": f"32.13.{today.year}", "json": f"{today.year}-13-32"}.get(plan.layout, f"31/31/{today.year}")


def _invalid_block(
    plan: ClinicPlan,
    kind: str,
    ref: str,
    therapists: list[str],
    weeks: int,
    today: date,
    rng: random.Random,
) -> Block:
    """One invalid case on a client ref no planted dyad uses; only the alliance rating is filled in."""
    scale = Scale.of(plan.alliance)
    n = len(plan.alliance.items)
    total = steady(scale, ceiling_base(scale, rng), 1, rng)[0]
    ticks = [*split_total(scale, total, rng), total]
    item = rng.randrange(n)
    if kind == "out_of_range":
        # 12.5 on a 0–10 line, 6 on a 1–5 item; the other items make up the same total, so only the range fails
        over = round(plan.alliance.item_max * scale.tick) + (25 if scale.tick == 10 else 1)
        rest = split_total(scale, total - over, rng, count=n - 1)
        ticks = [*rest[:item], over, *rest[item:], total]
    elif kind == "total_mismatch":
        ticks[-1] = total - round(scale.tick * rng.uniform(3, 6))
    alliance = [scale.value(t) for t in ticks]
    if kind == "non_numeric":
        alliance[item] = "n/a" if plan.layout in ("us_csv", "json") else "x"
    last_day = today - timedelta(days=1)
    row = Row(
        client_ref=ref,
        client_name=_fake_name(plan, rng),
        therapist=rng.choice(therapists),
        when=last_day - timedelta(days=rng.randrange(7 * weeks)),
        number=rng.randint(1, 12),
        alliance=alliance,
        outcome=None,
        note=_plain_note(plan, rng),
    )
    if kind == "missing_ref":
        row.client_ref = ""
    elif kind == "bad_date":
        row.when = _garbage_date(plan, today)
    elif kind == "future_date":
        row.when = today + timedelta(days=20)
    elif kind == "session_zero":
        row.number = 0
    elif kind == "duplicate_key":
        twin = replace(row, alliance=rating(scale, total - 2 * scale.tick, rng))
        return Block([row, twin], invalid=2)
    return Block([row], invalid=1)


def _ticks(scale: Scale, value: Value) -> int:
    assert not isinstance(value, str)
    return round(value * scale.tick)


def _invalid_blocks(
    plan: ClinicPlan,
    valid_ratings: int,
    first_ref: int,
    therapists: list[str],
    weeks: int,
    today: date,
    rng: random.Random,
) -> list[Block]:
    per_kind = max(1, round(valid_ratings * _INVALID_SHARE / len(_INVALID_KINDS)))
    kinds = [kind for kind in _INVALID_KINDS for _ in range(per_kind)]
    return [
        _invalid_block(plan, kind, f"{plan.ref_prefix}-{first_ref + i:04d}", therapists, weeks, today, rng)
        for i, kind in enumerate(kinds)
    ]


# ---------------------------------------------------------------- one clinic


def build_clinic(plan: ClinicPlan, seed: int, weeks: int, today: date, dyads: int, canaries: list[str]) -> ClinicData:
    rng = random.Random(f"{seed}/{plan.id}")
    mint = _CanaryMint(plan.id, canaries)
    therapists = [f"{plan.therapist_prefix}-t{k:02d}" for k in range(1, rng.randint(3, 6) + 1)]
    data = ClinicData(plan)
    last_day = today - timedelta(days=1)
    for index, pattern in enumerate(_assign_patterns(dyads, rng)):
        block, dyad = _planted_block(plan, index, pattern, rng.choice(therapists), weeks, last_day, rng, mint)
        data.blocks.append(block)
        data.dyads.append(dyad)
    valid = sum(row.ratings for block in data.blocks for row in block.rows)
    invalid = _invalid_blocks(plan, valid, dyads + 1, therapists, weeks, today, rng)
    # invalid cases land at seeded random positions among the clients
    for block in invalid:
        data.blocks.insert(rng.randint(0, len(data.blocks)), block)
    return data


def flat_rows(data: ClinicData, rng: random.Random) -> list[Row]:
    """CSV/Excel line order: planted sessions by date, each invalid row at its own random position."""
    planted = sorted(
        (row for block in data.blocks if not block.invalid for row in block.rows),
        key=lambda row: (row.when, row.client_ref, row.number),
    )
    strays = [row for block in data.blocks if block.invalid for row in block.rows]
    slots = sorted((rng.randint(0, len(planted)), i) for i in range(len(strays)))
    lines: list[Row] = []
    cursor = 0
    for slot, i in slots:
        lines += planted[cursor:slot]
        lines.append(strays[i])
        cursor = slot
    lines += planted[cursor:]
    return lines


def corrected(rows: list[Row], scale: Scale, rng: random.Random) -> tuple[list[Row], int]:
    """The same rows with a few stable ratings re-scored: one item and the total move together."""
    candidates = [i for i, row in enumerate(rows) if row.correctable]
    chosen = sorted(rng.sample(candidates, min(_CORRECTIONS, len(candidates))))
    floor = scale.hi - 4 * scale.unit
    item_hi = round(scale.inst.item_max * scale.tick)
    out = list(rows)
    for i in chosen:
        ticks = [_ticks(scale, v) for v in rows[i].alliance]
        total = ticks[-1]
        size = max(1, round(scale.tick * rng.uniform(0.3, 0.6)))
        # move down while the stable dyad stays in its ceiling region, else up
        step = -size if total - size >= floor else size
        item = max(range(len(ticks) - 1), key=lambda k: ticks[k] if step < 0 else -ticks[k])
        step = max(step, -ticks[item]) if step < 0 else min(step, item_hi - ticks[item])
        ticks[item] += step
        ticks[-1] = total + step
        out[i] = replace(rows[i], alliance=[scale.value(t) for t in ticks])
    return out, len(chosen)
