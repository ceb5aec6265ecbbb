"""One seeded generator of realistic clinic exports, shared by the demo, the tests and the benchmark.

Each clinic gets an export in one vendor layout (US CSV, German CSV, Excel, nested JSON) with planted
alliance trajectories, a known number of invalid ratings and canary strings in its free-text columns,
so that every later stage can be checked against what was planted.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path

import tomlkit
import xlsxwriter
from tomlkit.items import Table

from alliance.instruments import Instrument, instrument

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
_EXTENSIONS = {"us_csv": "csv", "eu_csv": "csv", "xlsx": "xlsx", "json": "json"}
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
_MIN_WEEKS = 8
_PATTERN_MIN_SESSIONS = 8
_MAX_SESSIONS = 24
_SKIP_WEEK_CHANCE = 0.15
_ORS_SKIP_CHANCE = 0.08
_NAME_CANARY_EVERY = 7
_NOTE_CANARY_CHANCE = 0.06
_NOTE_CHANCE = 0.35
_CORRECTIONS = 5

Value = float | int | str


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
class SampleFile:
    """One written export and the counts a correct ingest must reproduce."""

    clinic_id: str
    path: Path
    layout: str
    rows_expected: int
    invalid_expected: int
    corrected_expected: int


@dataclass(frozen=True)
class SampleSet:
    """Everything generate_sample wrote and planted."""

    files: list[SampleFile]
    profiles: dict[str, dict]
    dyads: list[PlantedDyad]
    canaries: list[str]


# ---------------------------------------------------------------- clinics


@dataclass(frozen=True)
class _ClinicPlan:
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


def _clinic_plan(index: int) -> _ClinicPlan:
    layout = LAYOUTS[index % len(LAYOUTS)]
    if index < len(_NAMED_CLINICS):
        clinic_id, name, ref_prefix, therapist_prefix = _NAMED_CLINICS[index]
        return _ClinicPlan(clinic_id, name, layout, ref_prefix, therapist_prefix)
    number = f"{index + 1:02d}"
    return _ClinicPlan(f"clinic{number}", f"Community Clinic {number}", layout, f"C{number}", f"clinic{number}")


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


# ---------------------------------------------------------------- scales and trajectories


@dataclass(frozen=True)
class _Scale:
    """An instrument's totals in integer ticks (0.1 for 0–10 lines, 1 for Likert items)."""

    inst: Instrument
    tick: int

    @classmethod
    def of(cls, inst: Instrument) -> _Scale:
        return cls(inst, 1 if inst.item_max <= 7 else 10)

    @property
    def lo(self) -> int:
        return round(self.inst.total_min * self.tick)

    @property
    def hi(self) -> int:
        return round(self.inst.total_max * self.tick)

    @property
    def unit(self) -> float:
        """One SRS point expressed on this scale, so every shape reads in SRS terms."""
        return (self.hi - self.lo) / 40

    def value(self, ticks: int) -> Value:
        return ticks if self.tick == 1 else ticks / self.tick

    def clamp(self, ticks: float, lo: float | None = None, hi: float | None = None) -> int:
        low = self.lo if lo is None else max(self.lo, math.ceil(lo))
        high = self.hi if hi is None else min(self.hi, math.floor(hi))
        return min(high, max(low, round(ticks)))


def _steady(scale: _Scale, base: float, n: int, rng: random.Random) -> list[int]:
    """Ceiling-region scores: 36–40 on SRS, noise sd of about one point."""
    floor = scale.hi - 4 * scale.unit
    return [scale.clamp(rng.gauss(base, 0.8 * scale.unit), lo=floor) for _ in range(n)]


def _ceiling_base(scale: _Scale, rng: random.Random) -> float:
    return scale.hi - scale.unit * rng.uniform(1.2, 3.6)


def _sudden_loss(scale: _Scale, n: int, rng: random.Random) -> tuple[list[int], int]:
    event = rng.randint(3, n - 4)
    totals = _steady(scale, _ceiling_base(scale, rng), event, rng)
    previous = totals[-1]
    level = scale.clamp(previous * (1 - rng.uniform(0.33, 0.45)))
    # the loss persists: later sessions hover at the new level, never back within 25% of the old score
    ceiling = min(level + 1.5 * scale.unit, previous * 0.7)
    totals.append(level)
    totals += [scale.clamp(rng.gauss(level, 0.6 * scale.unit), hi=ceiling) for _ in range(n - event - 1)]
    return totals, event


def _slow_decline(scale: _Scale, n: int, rng: random.Random) -> tuple[list[int], int]:
    event = rng.randint(3, n - 5)
    totals = _steady(scale, scale.hi - scale.unit * rng.uniform(1.0, 2.5), event, rng)
    steps = rng.randint(5, 9)
    for i in range(event, n):
        if i - event < steps:
            # about one SRS point a session: a slide that no single session-to-session drop reveals
            totals.append(scale.clamp(totals[-1] - scale.unit * rng.uniform(0.7, 1.3)))
        else:
            totals.append(scale.clamp(rng.gauss(totals[-1], 0.2 * scale.unit), hi=totals[-1] + scale.unit))
    return totals, event


def _single_low(scale: _Scale, n: int, rng: random.Random) -> tuple[list[int], int]:
    event = rng.randint(3, n - 3)
    base = _ceiling_base(scale, rng)
    totals = _steady(scale, base, n, rng)
    below_34 = math.ceil(scale.hi - 6 * scale.unit) - 1
    # deep enough to cross the cutoff, shallow enough (< 8 points) not to read as a rupture
    low = rng.uniform(base - 7.5 * scale.unit, base - 3 * scale.unit)
    totals[event] = min(scale.clamp(low), below_34)
    return totals, event


def _rupture_repair(scale: _Scale, n: int, rng: random.Random) -> tuple[list[int], int]:
    length = rng.randint(1, max(1, min(3, n // 5)))
    event = rng.randint(3, n - length - 2)
    base = _ceiling_base(scale, rng)
    totals = _steady(scale, base, n, rng)
    for i in range(event, event + length):
        totals[i] = scale.clamp(base - scale.unit * rng.uniform(10, 14))
    # the dip must stay at least 8 points below the dyad's own mean, which the dip itself lowers
    for _ in range(50):
        mean = sum(totals) / n
        shallow = [i for i in range(event, event + length) if mean - totals[i] < 8.5 * scale.unit]
        if not shallow:
            break
        for i in shallow:
            totals[i] = scale.clamp(math.floor(mean - 8.5 * scale.unit))
    return totals, event


def _stable(scale: _Scale, n: int, rng: random.Random) -> tuple[list[int], int | None]:
    return _steady(scale, _ceiling_base(scale, rng), n, rng), None


_SHAPES: dict[str, Callable[[_Scale, int, random.Random], tuple[list[int], int | None]]] = {
    "stable": _stable,
    "sudden_loss": _sudden_loss,
    "slow_decline": _slow_decline,
    "single_low": _single_low,
    "rupture_repair": _rupture_repair,
}


def _outcome_walk(scale: _Scale, n: int, rng: random.Random) -> list[int]:
    """ORS totals drifting upward from a clinical start, kept in 10–35."""
    lo, hi = 10 * scale.unit, 35 * scale.unit
    level = scale.unit * rng.uniform(12, 24)
    walk = []
    for _ in range(n):
        level = min(hi, max(lo, level + scale.unit * rng.gauss(0.5, 1.2)))
        walk.append(scale.clamp(level))
    return walk


def _split_total(scale: _Scale, total: int, rng: random.Random, count: int | None = None) -> list[int]:
    """Item ticks within the item range that sum exactly to the total (over `count` items if given)."""
    n = count or len(scale.inst.items)
    item_lo = round(scale.inst.item_min * scale.tick)
    item_hi = round(scale.inst.item_max * scale.tick)
    items = [total // n] * n
    start = rng.randrange(n)
    for k in range(total % n):
        items[(start + k) % n] += 1
    jitter = max(1, scale.tick // 2)
    for _ in range(n // 2):
        give = rng.randrange(n)
        take = (give + 1 + rng.randrange(n - 1)) % n
        amount = min(rng.randint(1, jitter), items[give] - item_lo, item_hi - items[take])
        if amount > 0:
            items[give] -= amount
            items[take] += amount
    return items


def _rating(scale: _Scale, total: int, rng: random.Random) -> list[Value]:
    """Items then total, in the instrument's own units."""
    return [scale.value(t) for t in [*_split_total(scale, total, rng), total]]


# ---------------------------------------------------------------- rows


@dataclass(slots=True)
class _Row:
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
class _Block:
    """The rows of one client entry (a dyad, or one invalid case) as the JSON layout nests them."""

    rows: list[_Row]
    invalid: int = 0


@dataclass
class _ClinicData:
    plan: _ClinicPlan
    blocks: list[_Block] = field(default_factory=list)
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


def _language(plan: _ClinicPlan) -> str:
    return _LANGUAGE[plan.layout]


def _fake_name(plan: _ClinicPlan, rng: random.Random) -> str:
    names = _language(plan)
    return f"{rng.choice(_FIRST[names])} {rng.choice(_LAST[names])}"


def _note_language(plan: _ClinicPlan) -> str:
    return "de" if _language(plan) == "de" else "en"


def _plain_note(plan: _ClinicPlan, rng: random.Random) -> str:
    return rng.choice(_NOTES[_note_language(plan)]) if rng.random() < _NOTE_CHANCE else ""


def _note(plan: _ClinicPlan, rng: random.Random, mint: _CanaryMint, force_canary: bool) -> str:
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
    plan: _ClinicPlan,
    index: int,
    pattern: str,
    therapist: str,
    weeks: int,
    last_day: date,
    rng: random.Random,
    mint: _CanaryMint,
) -> tuple[_Block, PlantedDyad]:
    ref = f"{plan.ref_prefix}-{index + 1:04d}"
    low = _PATTERN_MIN_SESSIONS if pattern != "stable" else min(5, weeks)
    n = rng.randint(low, max(low, min(weeks, _MAX_SESSIONS)))
    dates = _session_dates(n, weeks, last_day, rng)
    scale = _Scale.of(plan.alliance)
    totals, event = _SHAPES[pattern](scale, n, rng)
    outcome_scale = _Scale.of(instrument("ORS"))
    outcomes = _outcome_walk(outcome_scale, n, rng)
    name = _fake_name(plan, rng)
    if index % _NAME_CANARY_EVERY == 0:
        name = f"{name} {mint()}"
    rows = []
    for s in range(n):
        measured = plan.has_outcome and rng.random() >= _ORS_SKIP_CHANCE
        rows.append(
            _Row(
                client_ref=ref,
                client_name=name,
                therapist=therapist,
                when=dates[s],
                number=s + 1,
                alliance=_rating(scale, totals[s], rng),
                outcome=_rating(outcome_scale, outcomes[s], rng) if measured else None,
                note=_note(plan, rng, mint, force_canary=index == 0 and s == n - 1),
                correctable=pattern == "stable",
            )
        )
    dyad = PlantedDyad(plan.id, ref, therapist, plan.alliance.code, pattern, None if event is None else event + 1)
    return _Block(rows), dyad


# ---------------------------------------------------------------- invalid rows


def _garbage_date(plan: _ClinicPlan, today: date) -> str:
    return {"eu_csv": f"32.13.{today.year}", "json": f"{today.year}-13-32"}.get(plan.layout, f"31/31/{today.year}")


def _invalid_block(
    plan: _ClinicPlan,
    kind: str,
    ref: str,
    therapists: list[str],
    weeks: int,
    today: date,
    rng: random.Random,
) -> _Block:
    """One invalid case on a client ref no planted dyad uses; only the alliance rating is filled in."""
    scale = _Scale.of(plan.alliance)
    n = len(plan.alliance.items)
    total = _steady(scale, _ceiling_base(scale, rng), 1, rng)[0]
    ticks = [*_split_total(scale, total, rng), total]
    item = rng.randrange(n)
    if kind == "out_of_range":
        # 12.5 on a 0–10 line, 6 on a 1–5 item; the other items make up the same total, so only the range fails
        over = round(plan.alliance.item_max * scale.tick) + (25 if scale.tick == 10 else 1)
        rest = _split_total(scale, total - over, rng, count=n - 1)
        ticks = [*rest[:item], over, *rest[item:], total]
    elif kind == "total_mismatch":
        ticks[-1] = total - round(scale.tick * rng.uniform(3, 6))
    alliance = [scale.value(t) for t in ticks]
    if kind == "non_numeric":
        alliance[item] = "n/a" if plan.layout in ("us_csv", "json") else "x"
    last_day = today - timedelta(days=1)
    row = _Row(
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
        twin = replace(row, alliance=_rating(scale, total - 2 * scale.tick, rng))
        return _Block([row, twin], invalid=2)
    return _Block([row], invalid=1)


def _ticks(scale: _Scale, value: Value) -> int:
    assert not isinstance(value, str)
    return round(value * scale.tick)


def _invalid_blocks(
    plan: _ClinicPlan,
    valid_ratings: int,
    first_ref: int,
    therapists: list[str],
    weeks: int,
    today: date,
    rng: random.Random,
) -> list[_Block]:
    per_kind = max(1, round(valid_ratings * _INVALID_SHARE / len(_INVALID_KINDS)))
    kinds = [kind for kind in _INVALID_KINDS for _ in range(per_kind)]
    return [
        _invalid_block(plan, kind, f"{plan.ref_prefix}-{first_ref + i:04d}", therapists, weeks, today, rng)
        for i, kind in enumerate(kinds)
    ]


# ---------------------------------------------------------------- one clinic


def _build_clinic(
    plan: _ClinicPlan, seed: int, weeks: int, today: date, dyads: int, canaries: list[str]
) -> _ClinicData:
    rng = random.Random(f"{seed}/{plan.id}")
    mint = _CanaryMint(plan.id, canaries)
    therapists = [f"{plan.therapist_prefix}-t{k:02d}" for k in range(1, rng.randint(3, 6) + 1)]
    data = _ClinicData(plan)
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


def _flat_rows(data: _ClinicData, rng: random.Random) -> list[_Row]:
    """CSV/Excel line order: planted sessions by date, each invalid row at its own random position."""
    planted = sorted(
        (row for block in data.blocks if not block.invalid for row in block.rows),
        key=lambda row: (row.when, row.client_ref, row.number),
    )
    strays = [row for block in data.blocks if block.invalid for row in block.rows]
    slots = sorted((rng.randint(0, len(planted)), i) for i in range(len(strays)))
    lines: list[_Row] = []
    cursor = 0
    for slot, i in slots:
        lines += planted[cursor:slot]
        lines.append(strays[i])
        cursor = slot
    lines += planted[cursor:]
    return lines


def _corrected(rows: list[_Row], scale: _Scale, rng: random.Random) -> tuple[list[_Row], int]:
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


# ---------------------------------------------------------------- layouts


def _us_columns() -> tuple[list[str], dict[str, str]]:
    header = ["Client ID", "Client Name", "Clinician", "Session Date", "Session #"]
    header += ["SRS Relationship", "SRS Goals & Topics", "SRS Approach/Method", "SRS Overall", "SRS Total"]
    header += ["ORS Individually", "ORS Interpersonally", "ORS Socially", "ORS Overall", "ORS Total"]
    header += ["Session Notes"]
    canonical = [
        "client_ref", None, "therapist_id", "session_date", "session_number",
        "srs_relationship", "srs_goals", "srs_approach", "srs_overall", "srs_total",
        "ors_individually", "ors_interpersonally", "ors_socially", "ors_overall", "ors_total",
        None,
    ]  # fmt: skip
    return header, {h: c for h, c in zip(header, canonical, strict=True) if c}


# profile name -> header as the vendor's export actually spells it (odd case and spacing)
_EU_HEADER_QUIRKS = {"Klient-Nr.": "KLIENT-NR. ", "Ziele & Themen": "ziele  &  Themen"}


def _eu_columns() -> tuple[list[str], dict[str, str]]:
    names = ["Klient-Nr.", "Klient/in (Name)", "Therapeut/in", "Sitzungsdatum", "Sitzung"]
    names += ["Beziehung", "Ziele & Themen", "Vorgehen/Methode", "Gesamteinschätzung", "Summe", "Notiz (frei)"]
    canonical = [
        "client_ref", None, "therapist_id", "session_date", "session_number",
        "srs_relationship", "srs_goals", "srs_approach", "srs_overall", "srs_total", None,
    ]  # fmt: skip
    header = [_EU_HEADER_QUIRKS.get(n, n) for n in names]
    return header, {n: c for n, c in zip(names, canonical, strict=True) if c}


def _xlsx_columns() -> tuple[list[str], dict[str, str]]:
    items = [f"WAI {k}" for k in range(1, 13)]
    header = ["Client Code", "Client Name", "Therapist", "Date of Session", "Session No", *items, "WAI Total"]
    header.append("Comments")
    wai = instrument("WAI_SR")
    columns = {"Client Code": "client_ref", "Therapist": "therapist_id"}
    columns |= {"Date of Session": "session_date", "Session No": "session_number"}
    columns |= dict(zip(items, wai.item_fields, strict=True))
    columns["WAI Total"] = wai.total_field
    return header, columns


# the vendor's JSON keys per instrument, in registry item order
_JSON_KEYS = {
    "SRS": ("relationship", "goals", "approach", "overall"),
    "ORS": ("individually", "interpersonally", "socially", "overall"),
}


def _json_columns() -> dict[str, str]:
    columns = {"clients.client_ref": "client_ref", "clients.therapist": "therapist_id"}
    columns |= {"clients.sessions.date": "session_date", "clients.sessions.number": "session_number"}
    for code in ("SRS", "ORS"):
        inst = instrument(code)
        for key, target in zip(_JSON_KEYS[code], inst.item_fields, strict=True):
            columns[f"clients.sessions.{code.lower()}.{key}"] = target
        columns[f"clients.sessions.{code.lower()}.total"] = inst.total_field
    return columns


def _profile(plan: _ClinicPlan) -> dict:
    export: dict[str, object]
    if plan.layout == "us_csv":
        export = {"format": "csv", "encoding": "utf-8", "delimiter": ",", "date_format": "%m/%d/%Y"}
        export |= {"instruments": ["SRS", "ORS"], "columns": _us_columns()[1]}
    elif plan.layout == "eu_csv":
        export = {"format": "csv", "encoding": "cp1252", "delimiter": ";", "decimal_comma": True}
        export |= {"date_format": "%d.%m.%Y", "instruments": ["SRS"], "columns": _eu_columns()[1]}
    elif plan.layout == "xlsx":
        export = {"format": "xlsx", "sheet": "Sessions", "date_format": "%Y-%m-%d"}
        export |= {"instruments": ["WAI_SR"], "columns": _xlsx_columns()[1]}
    else:
        export = {"format": "json", "records": "clients.sessions", "date_format": "%Y-%m-%d"}
        export |= {"instruments": ["SRS", "ORS"], "columns": _json_columns()}
    return {"name": plan.name, "timezone": plan.timezone, "export": export}


def _number(value: Value, decimal_comma: bool = False) -> str:
    if isinstance(value, str):
        return value
    text = str(value) if isinstance(value, int) else f"{value:.1f}"
    return text.replace(".", ",") if decimal_comma else text


def _csv_date(when: date | str, fmt: str) -> str:
    return when if isinstance(when, str) else when.strftime(fmt)


def _write_us_csv(path: Path, rows: list[_Row]) -> None:
    blank = [""] * 5
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(_us_columns()[0])
        for row in rows:
            outcome = [_number(v) for v in row.outcome] if row.outcome is not None else blank
            writer.writerow(
                [row.client_ref, row.client_name, row.therapist, _csv_date(row.when, "%m/%d/%Y"), row.number]
                + [_number(v) for v in row.alliance]
                + outcome
                + [row.note]
            )


def _write_eu_csv(path: Path, rows: list[_Row]) -> None:
    with path.open("w", encoding="cp1252", newline="") as handle:
        writer = csv.writer(handle, delimiter=";", lineterminator="\r\n")
        writer.writerow(_eu_columns()[0])
        for row in rows:
            writer.writerow(
                [row.client_ref, row.client_name, row.therapist, _csv_date(row.when, "%d.%m.%Y"), row.number]
                + [_number(v, decimal_comma=True) for v in row.alliance]
                + [row.note]
            )


def _write_xlsx(path: Path, rows: list[_Row], plan: _ClinicPlan, today: date) -> None:
    book = xlsxwriter.Workbook(str(path), {"constant_memory": True})
    # a fixed creation stamp keeps the workbook reproducible
    book.set_properties({"created": datetime(today.year, today.month, today.day), "title": plan.name})
    date_cell = book.add_format({"num_format": "yyyy-mm-dd"})
    sheet = book.add_worksheet("Sessions")
    sheet.write_row(0, 0, _xlsx_columns()[0])
    for r, row in enumerate(rows, start=1):
        if row.client_ref:
            sheet.write_string(r, 0, row.client_ref)
        sheet.write_string(r, 1, row.client_name)
        sheet.write_string(r, 2, row.therapist)
        if isinstance(row.when, str):
            sheet.write_string(r, 3, row.when)
        else:
            sheet.write_datetime(r, 3, row.when, date_cell)
        sheet.write_number(r, 4, row.number)
        for c, value in enumerate(row.alliance, start=5):
            sheet.write(r, c, value)
        if row.note:
            sheet.write_string(r, 5 + len(row.alliance), row.note)
    about = book.add_worksheet("About")
    about.write_string(0, 0, f"Session feedback export, {plan.name}")
    about.write_string(1, 0, f"Generated {today.isoformat()}; instrument WAI-SR (12 items, 1-5).")
    about.write_string(2, 0, "One row per session; sheet 'Sessions'.")
    book.close()


def _json_rating(code: str, values: list[Value] | None) -> dict[str, Value] | None:
    if values is None:
        return None
    return dict(zip((*_JSON_KEYS[code], "total"), values, strict=True))


def _json_session(row: _Row) -> dict[str, object]:
    return {
        "date": row.when if isinstance(row.when, str) else row.when.isoformat(),
        "number": row.number,
        "srs": _json_rating("SRS", row.alliance),
        "ors": _json_rating("ORS", row.outcome),
        "note": row.note,
    }


def _write_json(path: Path, blocks: list[_Block], plan: _ClinicPlan, today: date) -> None:
    clients = [
        {
            "client_ref": block.rows[0].client_ref,
            "name": block.rows[0].client_name,
            "therapist": block.rows[0].therapist,
            "sessions": [_json_session(row) for row in block.rows],
        }
        for block in blocks
    ]
    document = {"export": {"clinic": plan.name, "generated": f"{today.isoformat()}T02:00:00"}, "clients": clients}
    path.write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def _write_clinic(
    data: _ClinicData, folder: Path, today: date, seed: int, re_export: bool
) -> tuple[SampleFile, SampleFile | None]:
    """The clinic's export and, for a US CSV clinic asked for one, its corrected re-export."""
    plan = data.plan
    rng = random.Random(f"{seed}/{plan.id}/layout")
    stem = f"{plan.id}_{today:%Y%m%d}"
    path = folder / f"{stem}.{_EXTENSIONS[plan.layout]}"
    invalid = sum(block.invalid for block in data.blocks)
    ratings = sum(row.ratings for block in data.blocks for row in block.rows)
    export = SampleFile(plan.id, path, plan.layout, ratings, invalid, 0)
    if plan.layout == "json":
        _write_json(path, data.blocks, plan, today)
        return export, None
    lines = _flat_rows(data, rng)
    if plan.layout == "eu_csv":
        _write_eu_csv(path, lines)
    elif plan.layout == "xlsx":
        _write_xlsx(path, lines, plan, today)
    else:
        _write_us_csv(path, lines)
    if not (re_export and plan.layout == "us_csv"):
        return export, None
    fixed, changed = _corrected(lines, _Scale.of(plan.alliance), rng)
    corrected = folder / f"{stem}_corrected.csv"
    _write_us_csv(corrected, fixed)
    return export, SampleFile(plan.id, corrected, plan.layout, ratings, invalid, changed)


# ---------------------------------------------------------------- public API


def generate_sample(
    out: Path,
    clinics: int = 4,
    weeks: int = 16,
    seed: int = 7,
    today: date | None = None,
    dyads_per_clinic: int = 30,
) -> SampleSet:
    """Write exports under out/<clinic_id>/ and return what was planted.

    Example: ``generate_sample(Path("demo"), clinics=4, today=date(2025, 3, 1)).files[0].path``
    is ``demo/northside/northside_20250301.csv``.
    """
    if weeks < _MIN_WEEKS:
        raise ValueError(f"weeks must be at least {_MIN_WEEKS} so planted patterns have room")
    if clinics < 1 or dyads_per_clinic < 1:
        raise ValueError("clinics and dyads_per_clinic must be positive")
    today = today or date.today()
    files: list[SampleFile] = []
    re_exports: list[SampleFile] = []
    profiles: dict[str, dict] = {}
    dyads: list[PlantedDyad] = []
    canaries: list[str] = []
    for index in range(clinics):
        plan = _clinic_plan(index)
        data = _build_clinic(plan, seed, weeks, today, dyads_per_clinic, canaries)
        folder = out / plan.id
        folder.mkdir(parents=True, exist_ok=True)
        # only the first US CSV clinic (index 0) sends a corrected re-export
        export, re_export = _write_clinic(data, folder, today, seed, re_export=index == 0)
        files.append(export)
        re_exports += [re_export] if re_export else []
        profiles[plan.id] = _profile(plan)
        dyads += data.dyads
    return SampleSet(files + re_exports, profiles, dyads, canaries)


def _toml_table(spec: dict) -> Table:
    table = tomlkit.table()
    for key, value in spec.items():
        table[key] = _toml_table(value) if isinstance(value, dict) else value
    return table


def add_profiles(clinics_file: Path, profiles: dict[str, dict]) -> list[str]:
    """Add (or replace) [clinics.<id>] tables in clinics.toml, keeping its comments; return the ids written.

    Example: ``add_profiles(home / "clinics.toml", generate_sample(home / "inbox").profiles)``.
    """
    text = clinics_file.read_text(encoding="utf-8") if clinics_file.exists() else ""
    document = tomlkit.parse(text)
    if "clinics" not in document:
        document["clinics"] = tomlkit.table(is_super_table=True)
    section = document["clinics"]
    assert isinstance(section, Table)
    for clinic_id, spec in profiles.items():
        section[clinic_id] = _toml_table(spec)
    clinics_file.write_text(tomlkit.dumps(document), encoding="utf-8")
    return list(profiles)
