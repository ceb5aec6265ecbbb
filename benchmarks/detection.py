"""Detection on realistic noise: generated courses loaded week by week through the real scoring functions.

A network of SRS+ORS dyads from the realistic sample profile is scored as it would be after each weekly
load: every dyad's sessions up to that week go through ``session_features`` and ``score`` (the same code
the pipeline runs on the stored ratings), silence through ``stopped_appearing``, and queue membership
through ``transforms.queue``. Calibrations (reliable change, pooled SD, expected trajectories) are
estimated from a separate history network of the same kind, as a clinic network's warehouse holds.
Reported: stable dyads ever queued, each planted shape queued within two sessions of its event, the queue
as a share of open dyads, and whether each queued dyad's headline reason names a decline.

Example: ``python -m benchmarks.detection --dyads 2000 --seed 3`` or ``alliance evaluate --dyads 2000``.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import polars as pl

from alliance.clinics import RuleConfig
from alliance.instruments import instrument
from alliance.samples.realistic import REALISTIC_PATTERNS, realistic_course, therapist_offset
from alliance.samples.trajectories import Scale, outcome_walk
from transforms.calibration import Calibration, estimate
from transforms.expected import ExpectedCurve, estimate_expected
from transforms.findings import score
from transforms.flags import FINDING_SCHEMA, declines_at_last_session, stopped_appearing
from transforms.queue import QueuePolicy, Standing, select_by_clinic, standing
from transforms.trajectory import session_features

START = date(2024, 1, 1)
WEEKS = 52
TAIL_DAYS = 56  # planted courses end this long before the window closes, so their silence is observed
CLINICS = 10
THERAPISTS_PER_CLINIC = 6
PLANTED_SHARE = 0.2
BASELINE_BANDS = ((0, 34, "< 34"), (34, 36, "34–36"), (36, 38, "36–38"), (38, 40, "38–40"), (40, 99, "≥ 40"))
NOISE_BANDS = ((0, 1.5, "SD < 1.5"), (1.5, 99, "SD ≥ 1.5"))
DETECT_PATTERNS = ("sudden_loss", "slow_decline", "dropout_after_decline")


@dataclass
class Course:
    """One generated dyad: its planted shape and its rated sessions."""

    dyad_id: str
    clinic_id: str
    therapist_id: str
    pattern: str
    event: int | None  # index into dates of the planted event
    level: float
    within_sd: float
    dates: list[date]
    numbers: list[int]
    srs: list[float]
    ors: list[float]


def network(dyads: int, seed: int, noise: float = 1.0) -> list[Course]:
    """Seeded courses spread over a year; about a fifth carry a planted shape."""
    rng = random.Random(f"detection/{seed}")
    offsets = {(c, t): therapist_offset(rng) for c in range(CLINICS) for t in range(THERAPISTS_PER_CLINIC)}
    planted = [p for p in REALISTIC_PATTERNS[1:] for _ in range(round(dyads * PLANTED_SHARE / 5))]
    patterns = planted + ["stable"] * (dyads - len(planted))
    rng.shuffle(patterns)
    ors_scale = Scale.of(instrument("ORS"))
    courses = []
    for index, pattern in enumerate(patterns):
        clinic, therapist = rng.randrange(CLINICS), rng.randrange(THERAPISTS_PER_CLINIC)
        course = realistic_course(pattern, offsets[(clinic, therapist)], rng, noise)
        span = sum(course.gaps)
        latest = 7 * WEEKS - span - (TAIL_DAYS if pattern != "stable" else 0)
        day = START + timedelta(days=rng.randint(0, max(0, latest)))
        dates: list[date] = []
        numbers: list[int] = []
        srs: list[float] = []
        event: int | None = None
        for i, (gap, value) in enumerate(zip(course.gaps, course.scores, strict=True)):
            day += timedelta(days=gap)
            if day >= START + timedelta(days=7 * WEEKS):
                break
            if value is None:
                continue
            if i == course.event:
                event = len(dates)
            dates.append(day)
            numbers.append(i + 1)
            srs.append(value)
        ors = [t / ors_scale.tick for t in outcome_walk(ors_scale, len(dates), rng)]
        courses.append(
            Course(
                f"e{seed}-{index:05d}",
                f"c{clinic:02d}",
                f"c{clinic:02d}-t{therapist}",
                pattern,
                event,
                course.level,
                course.within_sd,
                dates,
                numbers,
                srs,
                ors,
            )
        )
    return [c for c in courses if c.dates]


def ratings(courses: Iterable[Course], prefixes: bool) -> pl.DataFrame:
    """Ratings rows as the warehouse stores them; with ``prefixes`` one pseudo-dyad per course prefix."""
    rows: dict[str, list[Any]] = defaultdict(list)
    for c in courses:
        cuts = range(1, len(c.dates) + 1) if prefixes else [len(c.dates)]
        for k in cuts:
            dyad_id = f"{c.dyad_id}:{k}" if prefixes else c.dyad_id
            for i in range(k):
                for code, value in (("SRS", c.srs[i]), ("ORS", c.ors[i])):
                    rows["dyad_id"].append(dyad_id)
                    rows["clinic_id"].append(c.clinic_id)
                    rows["client_id"].append(c.dyad_id)
                    rows["therapist_id"].append(c.therapist_id)
                    rows["instrument"].append(code)
                    rows["session_date"].append(c.dates[i])
                    rows["session_number"].append(c.numbers[i])
                    rows["items"].append([round(value / 4, 1)] * 4)
                    rows["total"].append(value)
    schema: dict[str, pl.DataType] = {
        "dyad_id": pl.String(),
        "clinic_id": pl.String(),
        "client_id": pl.String(),
        "therapist_id": pl.String(),
        "instrument": pl.String(),
        "session_date": pl.Date(),
        "session_number": pl.Int32(),
        "items": pl.List(pl.Float64()),
        "total": pl.Float64(),
    }
    return pl.DataFrame(rows, schema=schema)


def calibrate(history: list[Course]) -> tuple[dict[str, Calibration], dict[str, ExpectedCurve]]:
    """What the network's warehouse would hold: calibrations and expected trajectories from full past courses."""
    features = session_features(ratings(history, prefixes=False))
    return {c.instrument: c for c in estimate(features)}, {c.instrument: c for c in estimate_expected(features)}


def prefix_findings(
    courses: list[Course],
    calibrations: dict[str, Calibration],
    curves: dict[str, ExpectedCurve],
    config: RuleConfig | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Ongoing findings of every course prefix (the dyad as scored after its k-th session), keyed 'id:k'."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    chunk = 400  # bounded memory: prefixes grow quadratically with course length
    for start in range(0, len(courses), chunk):
        frame = ratings(courses[start : start + chunk], prefixes=True)
        configs = {f"c{k:02d}": config for k in range(CLINICS)} if config else {}
        scored = score(
            session_features(frame, window=(config or RuleConfig()).trend_window), configs, calibrations, curves
        )
        for row in scored.findings.filter(pl.col("ongoing")).iter_rows(named=True):
            found[row["dyad_id"]].append(row)
    return found


@dataclass
class Evaluation:
    """Figures of one evaluation run."""

    dyads: int
    seed: int
    noise: float
    stable_ever_queued: float
    detected: dict[str, float]
    queue_share_open: float
    queue_share_seen: float
    headline_decline: float
    by_baseline: dict[str, tuple[int, float]]
    by_noise: dict[str, tuple[int, float]]
    planted_counts: dict[str, int]
    composition: dict[tuple[str, str], int]  # (planted pattern, headline rule) -> queued dyad-weeks
    missed: dict[str, list[str]]  # planted dyads not queued within two sessions of their event

    def passes(self) -> bool:
        return (
            self.stable_ever_queued <= 0.05
            and all(self.detected.get(p, 0.0) >= 0.90 for p in DETECT_PATTERNS)
            and self.queue_share_open <= 0.15
            and self.headline_decline >= 0.999
        )


def _band(value: float, bands: tuple[tuple[float, float, str], ...]) -> str:
    return next(label for lo, hi, label in bands if lo <= value < hi)


def _cadence(dates: list[date]) -> float | None:
    """The dyad's usual interval, as ``Writer.last_sessions`` gives it: the median gap between its sessions."""
    gaps = [(b - a).days for a, b in itertools.pairwise(dates)]
    return float(statistics.median(gaps)) if gaps else None


def _window_end(c: Course) -> date:
    """The last day a planted event may be found on: the date of the second session after it, or, when the
    course ended first, one of the dyad's usual intervals after each session that did not come."""
    assert c.event is not None
    after = c.dates[c.event + 1 : c.event + 3]
    if len(after) == 2:
        return after[1]
    gaps = [(b - a).days for a, b in itertools.pairwise(c.dates)] or [7]
    last = after[-1] if after else c.dates[c.event]
    return last + timedelta(days=(2 - len(after)) * int(statistics.median(gaps)))


def evaluate(
    dyads: int = 2000,
    seed: int = 3,
    noise: float = 1.0,
    policy: QueuePolicy | None = None,
    config: RuleConfig | None = None,
) -> Evaluation:
    """Generate, score week by week, and report; ``policy`` is the queue setting under test."""
    policy = policy or QueuePolicy()
    config = config or RuleConfig()
    courses = network(dyads, seed, noise)
    calibrations, curves = calibrate(network(dyads, seed + 10_000, noise))
    found = prefix_findings(courses, calibrations, curves, config)
    declines = declines_at_last_session(pl.DataFrame([f for fs in found.values() for f in fs], schema=FINDING_SCHEMA))
    loads = [START + timedelta(days=7 * w) for w in range(1, WEEKS + 1)]
    clinic_dates: dict[str, list[date]] = defaultdict(list)
    for c in courses:
        clinic_dates[c.clinic_id] += c.dates
    ever: dict[str, bool] = {}
    detected: dict[str, bool] = {}
    queued_total = open_total = queued_rows = decline_headlines = 0
    composition: Counter[tuple[str, str]] = Counter()
    for load in loads:
        latest = {cid: max((d for d in ds if d <= load), default=None) for cid, ds in clinic_dates.items()}
        visible = [(c, sum(d <= load for d in c.dates)) for c in courses if c.dates[0] <= load]
        last_rows = [
            {
                "clinic_id": c.clinic_id,
                "therapist_id": c.therapist_id,
                "dyad_id": f"{c.dyad_id}:{k}",
                "client_id": c.dyad_id,
                "instrument": "SRS",
                "last_session": c.numbers[k - 1],
                "last_session_date": c.dates[k - 1],
                "clinic_latest": latest[c.clinic_id],
                "cadence_days": _cadence(c.dates[:k]),
            }
            for c, k in visible
        ]
        configs = {c.clinic_id: config for c, _ in visible}
        silent = stopped_appearing(pl.DataFrame(last_rows), configs, declines) if last_rows else None
        silent_by = {row["dyad_id"]: row for row in (silent.iter_rows(named=True) if silent is not None else [])}
        standings: list[tuple[Course, int, Standing]] = []
        for c, k in visible:
            key = f"{c.dyad_id}:{k}"
            findings = [
                *found.get(key, []),
                *([silent_by[key]] if key in silent_by and silent_by[key]["ongoing"] else []),
            ]
            silent_days = ((latest[c.clinic_id] or load) - c.dates[k - 1]).days
            standings.append((c, k, standing(findings, silent_days, _cadence(c.dates[:k]), config)))
        chosen = select_by_clinic(policy, [c.clinic_id for c, _, _ in standings], [s for _, _, s in standings])
        for (c, _, st), queued in zip(standings, chosen, strict=True):
            is_open = c.dates[0] <= load <= c.dates[-1]
            open_total += is_open
            if not queued:
                continue
            queued_total += 1  # a dropout still queued counts against the open caseload too
            queued_rows += 1
            composition[(c.pattern, st.headline or "")] += 1
            decline_headlines += st.headline_is_decline
            ever[c.dyad_id] = True
            if c.event is not None and c.dates[c.event] <= load <= _window_end(c) + timedelta(days=6):
                detected[c.dyad_id] = True
    queued_any = sum(1 for _ in ever)
    stable = [c for c in courses if c.pattern == "stable"]

    def share(group: list[Course], hits: dict[str, bool]) -> float:
        return sum(hits.get(c.dyad_id, False) for c in group) / len(group) if group else 0.0

    by_baseline: dict[str, list[Course]] = defaultdict(list)
    by_noise: dict[str, list[Course]] = defaultdict(list)
    for c in stable:
        by_baseline[_band(c.level, BASELINE_BANDS)].append(c)
        by_noise[_band(c.within_sd, NOISE_BANDS)].append(c)
    # a planted event counts when its window closes inside the year the loads cover
    last_load = loads[-1]
    planted = {
        p: [c for c in courses if c.pattern == p and c.event is not None and _window_end(c) <= last_load]
        for p in REALISTIC_PATTERNS[1:]
    }
    return Evaluation(
        dyads=len(courses),
        seed=seed,
        noise=noise,
        stable_ever_queued=share(stable, ever),
        detected={p: share(group, detected) for p, group in planted.items()},
        queue_share_open=queued_total / open_total if open_total else 0.0,
        queue_share_seen=queued_any / len(courses) if courses else 0.0,
        headline_decline=decline_headlines / queued_rows if queued_rows else 1.0,
        by_baseline={
            b: (len(by_baseline[b]), share(by_baseline[b], ever)) for _, _, b in BASELINE_BANDS if b in by_baseline
        },
        by_noise={b: (len(by_noise[b]), share(by_noise[b], ever)) for _, _, b in NOISE_BANDS if b in by_noise},
        planted_counts={p: len(g) for p, g in planted.items()},
        composition=dict(composition.most_common()),
        missed={p: [c.dyad_id for c in g if not detected.get(c.dyad_id)] for p, g in planted.items()},
    )


def format_evaluation(e: Evaluation) -> str:
    """A plain-text report of one evaluation."""
    lines = [
        f"{e.dyads} dyads, seed {e.seed}, noise x{e.noise}: loaded week by week for {WEEKS} weeks",
        f"stable dyads ever in the queue: {e.stable_ever_queued:.1%}",
    ]
    for pattern, share in e.detected.items():
        lines.append(
            f"  {pattern}: {share:.1%} in the queue within two sessions of the event (n={e.planted_counts[pattern]})"
        )
    lines.append(f"queue share of open dyads (mean over weekly loads): {e.queue_share_open:.1%}")
    lines.append(f"dyads ever queued, of all dyads: {e.queue_share_seen:.1%}")
    lines.append(f"queued entries whose headline names a decline: {e.headline_decline:.1%}")
    lines.append(
        "stable dyads ever queued, by client baseline: "
        + ", ".join(f"{band} {share:.1%} (n={n})" for band, (n, share) in e.by_baseline.items())
    )
    lines.append(
        "stable dyads ever queued, by session-to-session SD: "
        + ", ".join(f"{band} {share:.1%} (n={n})" for band, (n, share) in e.by_noise.items())
    )
    lines.append("meets the targets" if e.passes() else "misses a target")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dyads", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--noise", type=float, default=1.0)
    args = parser.parse_args(argv)
    print(format_evaluation(evaluate(args.dyads, args.seed, args.noise)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
