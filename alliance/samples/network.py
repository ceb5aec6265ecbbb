"""A clinic network: clinic plans, clients and their sessions, invalid cases and corrected re-exports."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import date, timedelta

from alliance.instruments import instrument
from alliance.samples.clinics import (
    Block,
    CanaryMint,
    ClinicData,
    ClinicPlan,
    PlantedDyad,
    Row,
    fake_name,
    note,
    plain_note,
)
from alliance.samples.realistic import REALISTIC_PATTERNS, course_ticks, realistic_course, therapist_offset
from alliance.samples.trajectories import SHAPES, Scale, Value, ceiling_base, outcome_walk, rating, split_total, steady

PATTERNS = ("stable", "sudden_loss", "slow_decline", "single_low", "rupture_repair")
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
_CORRECTIONS = 5


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
    mint: CanaryMint,
) -> tuple[Block, PlantedDyad]:
    ref = f"{plan.ref_prefix}-{index + 1:04d}"
    low = _PATTERN_MIN_SESSIONS if pattern != "stable" else min(5, weeks)
    n = rng.randint(low, max(low, min(weeks, _MAX_SESSIONS)))
    dates = _session_dates(n, weeks, last_day, rng)
    scale = Scale.of(plan.alliance)
    totals, event = SHAPES[pattern](scale, n, rng)
    outcome_scale = Scale.of(instrument("ORS"))
    outcomes = outcome_walk(outcome_scale, n, rng)
    name = fake_name(plan, rng)
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
                note=note(plan, rng, mint, force_canary=index == 0 and s == n - 1),
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
        client_name=fake_name(plan, rng),
        therapist=rng.choice(therapists),
        when=last_day - timedelta(days=rng.randrange(7 * weeks)),
        number=rng.randint(1, 12),
        alliance=alliance,
        outcome=None,
        note=plain_note(plan, rng),
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


def _realistic_patterns(n: int, rng: random.Random) -> list[str]:
    """About 80% stable and 4% of each planted shape, every shape at least once from 6 dyads up."""
    each = max(1, round(n / 25)) if n >= 6 else 0
    patterns = [p for p in REALISTIC_PATTERNS[1:] for _ in range(each)]
    patterns += ["stable"] * (n - len(patterns))
    rng.shuffle(patterns)
    return patterns


def _realistic_block(
    plan: ClinicPlan,
    index: int,
    pattern: str,
    therapist: tuple[str, float],
    weeks: int,
    last_day: date,
    rng: random.Random,
    mint: CanaryMint,
    noise: float,
) -> tuple[Block, PlantedDyad]:
    """One dyad's course with real-world noise, placed at a random start; sessions past the window are cut."""
    ref = f"{plan.ref_prefix}-{index + 1:04d}"
    course = realistic_course(pattern, therapist[1], rng, noise)
    span = sum(course.gaps)
    window = 7 * weeks - 1
    # planted shapes fit inside the window; a stable course may still be running at its end
    latest = window - span if pattern != "stable" else window
    day = last_day - timedelta(days=window) + timedelta(days=rng.randint(0, max(0, latest)))
    scale = Scale.of(plan.alliance)
    ticks = course_ticks(scale, course.scores)
    outcome_scale = Scale.of(instrument("ORS"))
    outcomes = outcome_walk(outcome_scale, len(ticks), rng)
    name = fake_name(plan, rng)
    if index % _NAME_CANARY_EVERY == 0:
        name = f"{name} {mint()}"
    rows = []
    for s, (gap, total) in enumerate(zip(course.gaps, ticks, strict=True)):
        day += timedelta(days=gap)
        if day > last_day:
            break
        if total is None:
            continue
        measured = plan.has_outcome and rng.random() >= _ORS_SKIP_CHANCE
        rows.append(
            Row(
                client_ref=ref,
                client_name=name,
                therapist=therapist[0],
                when=day,
                number=s + 1,
                alliance=rating(scale, total, rng),
                outcome=rating(outcome_scale, outcomes[s], rng) if measured else None,
                note=note(plan, rng, mint, force_canary=index == 0 and s == 0),
                correctable=pattern == "stable",
            )
        )
    event = None if course.event is None else course.event + 1
    dyad = PlantedDyad(plan.id, ref, therapist[0], plan.alliance.code, pattern, event, course.level, course.within_sd)
    return Block(rows), dyad


def build_clinic(
    plan: ClinicPlan,
    seed: int,
    weeks: int,
    today: date,
    dyads: int,
    canaries: list[str],
    profile: str = "clean",
    noise: float = 1.0,
) -> ClinicData:
    rng = random.Random(f"{seed}/{plan.id}")
    mint = CanaryMint(plan.id, canaries)
    therapists = [f"{plan.therapist_prefix}-t{k:02d}" for k in range(1, rng.randint(3, 6) + 1)]
    data = ClinicData(plan)
    last_day = today - timedelta(days=1)
    if profile == "realistic":
        offsets = {t: therapist_offset(rng) for t in therapists}
        for index, pattern in enumerate(_realistic_patterns(dyads, rng)):
            who = rng.choice(therapists)
            args = (plan, index, pattern, (who, offsets[who]), weeks, last_day, rng, mint, noise)
            block, dyad = _realistic_block(*args)
            if block.rows:
                data.blocks.append(block)
                data.dyads.append(dyad)
    for index, pattern in enumerate(_assign_patterns(dyads, rng) if profile == "clean" else []):
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
