"""Weekly clinic and therapist series from scored sessions, and EWMA control charts that find the ones going wrong."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

import polars as pl

from alliance.instruments import instrument

EPS = 1e-6  # risk carries one decimal; this absorbs float noise at the threshold
MIN_BASELINE = 4  # fewer baseline weeks give no usable sigma
SERIES_KEY = ("level", "clinic_id", "therapist_id", "instrument")
KEY_SCHEMA: dict[str, pl.DataType] = {
    "level": pl.String(),
    "clinic_id": pl.String(),
    "therapist_id": pl.String(),
    "instrument": pl.String(),
}
CHART_SCHEMA: dict[str, pl.DataType] = {
    **KEY_SCHEMA,
    "metric": pl.String(),
    "week": pl.Date(),
    "value": pl.Float64(),
    "ewma": pl.Float64(),
    "lower": pl.Float64(),
    "upper": pl.Float64(),
    "signal": pl.String(),
}
SIGNAL_SCHEMA: dict[str, pl.DataType] = {
    **{k: v for k, v in CHART_SCHEMA.items() if k != "signal"},
    "direction": pl.String(),
}

Direction = Literal["low", "high"]


@dataclass(frozen=True)
class ChartPoint:
    """One week of an EWMA chart: the observed value, the smoothed value, its limits and any signal."""

    index: int  # 1-based position in the series (the i of the limit formula)
    week: date | None
    value: float
    ewma: float
    lower: float | None
    upper: float | None
    signal: Direction | None


def _alliance_weeks(sessions: pl.DataFrame) -> pl.DataFrame:
    """Sessions of alliance instruments only, with the Monday of their ISO week."""
    codes = [c for c in sessions.get_column("instrument").unique().to_list() if instrument(c).construct == "alliance"]
    return sessions.filter(pl.col("instrument").is_in(codes)).with_columns(
        pl.col("session_date").dt.truncate("1w").alias("week")
    )


def _by_level(frame: pl.DataFrame, aggs: list[pl.Expr]) -> pl.DataFrame:
    """The same weekly aggregates at clinic level (therapist_id null) and at therapist level."""
    clinic = frame.group_by("clinic_id", "instrument", "week").agg(aggs)
    clinic = clinic.with_columns(pl.lit("clinic").alias("level"), pl.lit(None, pl.String).alias("therapist_id"))
    therapist = frame.group_by("clinic_id", "therapist_id", "instrument", "week").agg(aggs)
    therapist = therapist.with_columns(pl.lit("therapist").alias("level"))
    columns = [*SERIES_KEY, "week", *(c for c in clinic.columns if c not in (*SERIES_KEY, "week"))]
    both = pl.concat([clinic.select(columns), therapist.select(columns)])
    return both.sort([*SERIES_KEY, "week"], nulls_last=False)


def weekly_alliance(sessions: pl.DataFrame) -> pl.DataFrame:
    """Weekly mean alliance score and session count per clinic and per therapist, one series per instrument.

    Example: ``weekly_alliance(sessions)`` → level, clinic_id, therapist_id, instrument, week, mean_score, n_sessions.
    """
    return _by_level(
        _alliance_weeks(sessions),
        [pl.col("score").mean().alias("mean_score"), pl.len().cast(pl.Int64).alias("n_sessions")],
    )


def weekly_flagged_share(sessions: pl.DataFrame, threshold: float = 30.0) -> pl.DataFrame:
    """Weekly share of the dyads seen that week whose session risk reached ``threshold``, per clinic and therapist.

    Example: ``weekly_flagged_share(sessions, 30)`` → …, week, flagged_share, n_dyads, n_flagged.
    """
    per_dyad = (
        _alliance_weeks(sessions)
        .group_by("clinic_id", "therapist_id", "instrument", "week", "dyad_id")
        .agg((pl.col("risk").fill_null(0.0) >= threshold - EPS).any().alias("flagged"))
    )
    weekly = _by_level(
        per_dyad,
        [pl.len().cast(pl.Int64).alias("n_dyads"), pl.col("flagged").sum().cast(pl.Int64).alias("n_flagged")],
    )
    share = (pl.col("n_flagged") / pl.col("n_dyads")).alias("flagged_share")
    return weekly.select(*SERIES_KEY, "week", share, "n_dyads", "n_flagged")


def complete_weeks(weekly: pl.DataFrame, today: dict[str, date]) -> pl.DataFrame:
    """Only the weeks that have ended in each clinic's own today (Monday + 7 days ≤ today): a week in progress,
    with the sessions of a day or two, is not yet a point to judge. Clinics missing from ``today`` keep none.

    Example: ``complete_weeks(weekly, {"northside": date(2026, 11, 25)})`` drops the week of 2026-11-23.
    """
    clinics = pl.DataFrame(
        {"clinic_id": list(today), "today": list(today.values())}, schema={"clinic_id": pl.String, "today": pl.Date}
    )
    return (
        weekly.join(clinics, on="clinic_id", how="inner")
        .filter(pl.col("week") + pl.duration(days=7) <= pl.col("today"))
        .drop("today")
    )


def _check(lam: float, L: float, baseline_weeks: int) -> None:
    if not 0 < lam <= 1:
        raise ValueError(f"lam must be in (0, 1], got {lam}")
    if L <= 0:
        raise ValueError(f"L must be positive, got {L}")
    if baseline_weeks < 1:
        raise ValueError(f"baseline_weeks must be at least 1, got {baseline_weeks}")


def _half_width(i: int, sigma: float, lam: float, L: float) -> float:
    """Half the width of the EWMA limits at point i (1-based): L·σ·√(λ/(2−λ)·(1−(1−λ)^(2i)))."""
    return L * sigma * math.sqrt(lam / (2 - lam) * (1 - (1 - lam) ** (2 * i)))


def _signal(ewma: float, lower: float, upper: float) -> Direction | None:
    if ewma < lower:
        return "low"
    if ewma > upper:
        return "high"
    return None


def ewma_chart(
    values: Sequence[float],
    lam: float = 0.2,
    L: float = 3.0,
    baseline_weeks: int = 8,
    weeks: Sequence[date] | None = None,
) -> list[ChartPoint]:
    """EWMA control chart with target and sigma from the first ``baseline_weeks`` points; signals only after them.

    Example: ``ewma_chart([37, 38, 37, 38, 37, 38, 37, 38, 33, 33, 33])[-1].signal == "low"``.
    """
    target = _target(values, lam, L, baseline_weeks, weeks)
    if target is None:
        return []
    points: list[ChartPoint] = []
    ewma = target[0]
    for i, value in enumerate(values, start=1):
        ewma = lam * float(value) + (1 - lam) * ewma
        points.append(_point(i, value, ewma, target, lam, L, baseline_weeks, weeks))
    return points


def latest_point(
    values: Sequence[float],
    lam: float = 0.2,
    L: float = 3.0,
    baseline_weeks: int = 8,
    weeks: Sequence[date] | None = None,
) -> ChartPoint | None:
    """``ewma_chart(...)[-1]`` without building the weeks before it: the same recursion, one pair of limits
    (a night judges the latest week of every series of the network)."""
    target = _target(values, lam, L, baseline_weeks, weeks)
    if target is None:
        return None
    ewma = target[0]
    for value in values:
        ewma = lam * float(value) + (1 - lam) * ewma
    return _point(len(values), values[-1], ewma, target, lam, L, baseline_weeks, weeks)


def _target(
    values: Sequence[float], lam: float, L: float, baseline_weeks: int, weeks: Sequence[date] | None
) -> tuple[float, float, bool] | None:
    """Target, sigma and whether the baseline can set limits; None for an empty series."""
    _check(lam, L, baseline_weeks)
    if weeks is not None and len(weeks) != len(values):
        raise ValueError(f"{len(weeks)} weeks for {len(values)} values")
    if not values:
        return None
    baseline = [float(v) for v in values[:baseline_weeks]]
    sigma = statistics.stdev(baseline) if len(baseline) > 1 else 0.0
    return statistics.fmean(baseline), sigma, len(baseline) >= MIN_BASELINE and sigma > 1e-12


def _point(
    i: int,
    value: float,
    ewma: float,
    target: tuple[float, float, bool],
    lam: float,
    L: float,
    baseline_weeks: int,
    weeks: Sequence[date] | None,
) -> ChartPoint:
    mu0, sigma, usable = target
    lower = upper = None
    signal: Direction | None = None
    if usable:
        half = _half_width(i, sigma, lam, L)
        lower, upper = mu0 - half, mu0 + half
        # the baseline defines the target: only the weeks after it are monitored
        signal = _signal(ewma, lower, upper) if i > baseline_weeks else None
    week = weeks[i - 1] if weeks is not None else None
    return ChartPoint(i, week, float(value), ewma, lower, upper, signal)


def _series(weekly: pl.DataFrame, metric: str) -> Iterator[tuple[dict[str, Any], list[date], list[float]]]:
    """Each series (level, clinic, therapist, instrument) of ``weekly`` as its key, weeks and metric values."""
    if metric not in weekly.columns:
        raise ValueError(f"no column {metric!r} in the weekly frame (columns: {', '.join(weekly.columns)})")
    grouped = (
        weekly.drop_nulls(metric)
        .sort([*SERIES_KEY, "week"], nulls_last=False)
        .group_by(list(SERIES_KEY), maintain_order=True)
        .agg(pl.col("week"), pl.col(metric).cast(pl.Float64))
    )
    for row in grouped.iter_rows(named=True):
        yield {k: row[k] for k in SERIES_KEY}, row["week"], row[metric]


def _row(key: dict[str, Any], metric: str, p: ChartPoint) -> dict[str, Any]:
    return {
        **key,
        "metric": metric,
        "week": p.week,
        "value": p.value,
        "ewma": p.ewma,
        "lower": p.lower,
        "upper": p.upper,
    }


def chart_frame(
    weekly: pl.DataFrame, metric: str, lam: float = 0.2, L: float = 3.0, baseline_weeks: int = 8
) -> pl.DataFrame:
    """The full EWMA chart of every series in ``weekly`` (for the dashboard to plot).

    Example: ``chart_frame(weekly_alliance(sessions), "mean_score")`` → one row per series and week.
    """
    rows = [
        {**_row(key, metric, p), "signal": p.signal}
        for key, weeks, values in _series(weekly, metric)
        for p in ewma_chart(values, lam, L, baseline_weeks, weeks)
    ]
    return pl.DataFrame(rows, schema=CHART_SCHEMA)


def trend_signals(
    weekly: pl.DataFrame,
    metric: str,
    direction: Direction,
    lam: float = 0.2,
    L: float = 3.0,
    baseline_weeks: int = 8,
    count: str | None = None,
    min_count: int = 1,
) -> pl.DataFrame:
    """The series whose latest week is out of control in the bad ``direction`` (mean alliance: low; share: high).

    With ``count`` (a column such as ``n_sessions``), the latest week signals only when at least ``min_count``
    sessions stand behind it: one flagged session in a quiet week is not a trend.

    Example: ``trend_signals(weekly_alliance(sessions), "mean_score", "low", count="n_sessions", min_count=5)``
    → one row per series in trouble.
    """
    if direction not in ("low", "high"):
        raise ValueError(f"direction must be 'low' or 'high', got {direction!r}")
    latest_count = {}
    if count is not None:
        last_weeks = weekly.drop_nulls(metric).sort("week").group_by(list(SERIES_KEY), maintain_order=True).last()
        latest_count = {tuple(r[k] for k in SERIES_KEY): r[count] for r in last_weeks.iter_rows(named=True)}
    rows = []
    for key, weeks, values in _series(weekly, metric):
        last = latest_point(values, lam, L, baseline_weeks, weeks)
        enough = count is None or latest_count.get(tuple(key.values()), 0) >= min_count
        if last is not None and last.signal == direction and enough:
            rows.append({**_row(key, metric, last), "direction": direction})
    return pl.DataFrame(rows, schema=SIGNAL_SCHEMA)
