"""EWMA control charts on weekly clinic and therapist series: limits, signals, levels and instruments."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.trends import (
    chart_frame,
    complete_weeks,
    ewma_chart,
    latest_point,
    trend_signals,
    weekly_alliance,
    weekly_flagged_share,
)

MONDAY = date(2026, 1, 5)
BASELINE = [37.0, 38.0, 37.0, 38.0, 37.0, 38.0, 37.0, 38.0]  # mean 37.5; deviations ±0.5 → SD √(8·0.25/7)
MU0 = 37.5
SIGMA = math.sqrt(2 / 7)


def weeks(n: int) -> list[date]:
    return [MONDAY + timedelta(weeks=i) for i in range(n)]


def sessions(rows: Sequence[tuple[str, str, str, str, date, float, float | None]]) -> pl.DataFrame:
    """dyad_sessions rows: (clinic, therapist, dyad, instrument, date, score, risk)."""
    return pl.DataFrame(
        rows,
        schema={
            "clinic_id": pl.String,
            "therapist_id": pl.String,
            "dyad_id": pl.String,
            "instrument": pl.String,
            "session_date": pl.Date,
            "score": pl.Float64,
            "risk": pl.Float64,
        },
        orient="row",
    )


def one_dyad(scores: list[float], instrument: str = "SRS", therapist: str = "t1", dyad: str = "d1") -> pl.DataFrame:
    # a Wednesday session each week: truncation must move it back to Monday
    return sessions(
        [
            ("north", therapist, dyad, instrument, w + timedelta(days=2), s, 0.0)
            for w, s in zip(weeks(len(scores)), scores, strict=True)
        ]
    )


def test_limits_match_hand_computation_at_first_and_late_points() -> None:
    points = ewma_chart([*BASELINE, *([37.5] * 200)], lam=0.2, L=3.0, baseline_weeks=8)
    # i = 1: λ/(2−λ)·(1−(1−λ)²) = 0.2/1.8 · 0.36 = 0.04 → half-width 3·σ·0.2
    assert points[0].lower == pytest.approx(MU0 - 0.6 * SIGMA)
    assert points[0].upper == pytest.approx(MU0 + 0.6 * SIGMA)
    assert points[0].ewma == pytest.approx(0.2 * 37 + 0.8 * MU0)
    # large i: the factor tends to √(λ/(2−λ)) = 1/3 → half-width σ
    assert points[-1].lower == pytest.approx(MU0 - SIGMA)
    assert points[-1].upper == pytest.approx(MU0 + SIGMA)


def test_ewma_recursion_starts_at_the_target() -> None:
    points = ewma_chart([*BASELINE, 30.0])
    z = MU0
    for value, point in zip([*BASELINE, 30.0], points, strict=True):
        z = 0.2 * value + 0.8 * z
        assert point.ewma == pytest.approx(z)


def test_stable_series_gives_no_signal() -> None:
    values = [37.0, 38.0, 37.5, 38.0, 37.0, 38.0, 37.5, 37.0, 38.0, 37.5, 37.0, 38.0, 37.5, 38.0, 37.0, 37.5]
    assert all(p.signal is None for p in ewma_chart(values))


def test_three_weeks_three_sigma_down_signals_low_on_the_latest_week() -> None:
    drop = MU0 - 3 * SIGMA
    points = ewma_chart([*BASELINE, drop, drop, drop], weeks=weeks(11))
    assert points[-1].signal == "low"
    assert points[-1].week == weeks(11)[-1]
    assert points[-1].ewma < points[-1].lower  # type: ignore[operator]


def test_no_signals_inside_the_baseline() -> None:
    points = ewma_chart([37.0, 38.0, 37.0, 38.0, 20.0, 20.0, 20.0, 20.0])
    assert all(p.signal is None for p in points)


def test_series_shorter_than_the_baseline_gives_no_signal() -> None:
    assert all(p.signal is None for p in ewma_chart([37.0, 38.0, 37.0, 38.0, 37.0, 38.0, 20.0]))


def test_flat_baseline_gives_no_limits_and_no_signal() -> None:
    points = ewma_chart([37.0] * 8 + [20.0, 20.0])
    assert all(p.signal is None and p.lower is None and p.upper is None for p in points)


def test_fewer_than_four_baseline_points_give_no_signal() -> None:
    assert all(p.signal is None for p in ewma_chart([37.0, 38.0, 37.0, 10.0, 10.0, 10.0], baseline_weeks=3))


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="lam"):
        ewma_chart([1.0], lam=0)
    with pytest.raises(ValueError, match="weeks"):
        ewma_chart([1.0, 2.0], weeks=weeks(1))


def test_weekly_alliance_means_per_level_and_iso_week() -> None:
    frame = sessions(
        [
            ("north", "t1", "d1", "SRS", date(2026, 1, 5), 36.0, 0.0),  # Monday
            ("north", "t1", "d2", "SRS", date(2026, 1, 11), 38.0, 0.0),  # Sunday, same week
            ("north", "t2", "d3", "SRS", date(2026, 1, 7), 31.0, 0.0),
            ("north", "t2", "d3", "ORS", date(2026, 1, 7), 12.0, 0.0),  # outcome: left out
        ]
    )
    weekly = weekly_alliance(frame)
    assert weekly.columns == ["level", "clinic_id", "therapist_id", "instrument", "week", "mean_score", "n_sessions"]
    rows = {(r["level"], r["therapist_id"]): r for r in weekly.iter_rows(named=True)}
    assert set(rows) == {("clinic", None), ("therapist", "t1"), ("therapist", "t2")}
    assert rows[("clinic", None)]["mean_score"] == pytest.approx(35.0)
    assert rows[("clinic", None)]["n_sessions"] == 3
    assert rows[("therapist", "t1")]["mean_score"] == pytest.approx(37.0)
    assert {r["week"] for r in rows.values()} == {date(2026, 1, 5)}


def test_instruments_are_never_mixed() -> None:
    # SRS falls, WAI-SR (12–60) stays high: mixing them would blur both series
    srs = one_dyad([*BASELINE, 25.0, 25.0, 25.0], "SRS", dyad="d1")
    wai = one_dyad([55.0, 56.0, 55.0, 56.0, 55.0, 56.0, 55.0, 56.0, 55.5, 55.5, 55.5], "WAI_SR", dyad="d2")
    weekly = weekly_alliance(pl.concat([srs, wai]))
    assert weekly.filter(pl.col("level") == "clinic").height == 22
    assert set(weekly["n_sessions"].to_list()) == {1}
    signals = trend_signals(weekly, "mean_score", "low")
    assert set(signals["instrument"].to_list()) == {"SRS"}
    assert set(signals["level"].to_list()) == {"clinic", "therapist"}


def test_trend_signals_returns_the_latest_week_of_a_falling_series() -> None:
    weekly = weekly_alliance(one_dyad([*BASELINE, 34.0, 34.0, 34.0]))
    signals = trend_signals(weekly, "mean_score", "low")
    assert signals.columns == [
        "level",
        "clinic_id",
        "therapist_id",
        "instrument",
        "metric",
        "week",
        "value",
        "ewma",
        "lower",
        "upper",
        "direction",
    ]
    assert signals.height == 2
    assert set(signals["week"].to_list()) == {weeks(11)[-1]}
    assert set(signals["metric"].to_list()) == {"mean_score"}
    assert trend_signals(weekly, "mean_score", "high").is_empty()


def test_a_signal_that_has_recovered_by_the_latest_week_is_not_returned() -> None:
    weekly = weekly_alliance(one_dyad([*BASELINE, 35.5, 35.5, 38.0, 38.0, 38.0, 38.0, 38.0]))
    chart = chart_frame(weekly, "mean_score")
    assert "low" in chart["signal"].to_list()
    assert trend_signals(weekly, "mean_score", "low").is_empty()


def test_short_series_give_no_signal() -> None:
    weekly = weekly_alliance(one_dyad([37.0, 38.0, 37.0, 38.0, 37.0, 20.0, 20.0]))
    assert trend_signals(weekly, "mean_score", "low").is_empty()


def test_rising_flagged_share_signals_high() -> None:
    # ten dyads a week; 1–2 flagged in the baseline, 6 in each of the last three weeks
    flagged_per_week = [1, 2, 1, 1, 2, 1, 2, 1, 6, 6, 6]
    rows = [
        ("north", "t1" if d < 5 else "t2", f"d{d}", "SRS", w, 35.0, 55.0 if d < k else 10.0)
        for w, k in zip(weeks(11), flagged_per_week, strict=True)
        for d in range(10)
    ]
    weekly = weekly_flagged_share(sessions(rows), threshold=30)
    clinic = weekly.filter(pl.col("level") == "clinic")
    assert clinic["flagged_share"].to_list() == pytest.approx([k / 10 for k in flagged_per_week])
    assert clinic["n_dyads"].to_list() == [10] * 11
    signals = trend_signals(weekly, "flagged_share", "high")
    assert signals.filter(pl.col("level") == "clinic").height == 1
    assert signals["direction"].to_list() == ["high"] * signals.height
    assert trend_signals(weekly, "flagged_share", "low").is_empty()


def test_flagged_share_counts_dyads_not_sessions_and_uses_the_threshold() -> None:
    frame = sessions(
        [
            ("north", "t1", "d1", "SRS", date(2026, 1, 5), 30.0, 30.0),  # at the threshold: flagged
            ("north", "t1", "d1", "SRS", date(2026, 1, 6), 30.0, 0.0),
            ("north", "t1", "d2", "SRS", date(2026, 1, 6), 38.0, 29.9),
            ("north", "t1", "d3", "SRS", date(2026, 1, 6), 38.0, None),
        ]
    )
    row = weekly_flagged_share(frame).filter(pl.col("level") == "therapist").row(0, named=True)
    assert (row["n_dyads"], row["n_flagged"]) == (3, 1)
    assert row["flagged_share"] == pytest.approx(1 / 3)


def test_chart_frame_plots_every_series() -> None:
    weekly = weekly_alliance(pl.concat([one_dyad(BASELINE, therapist="t1"), one_dyad(BASELINE, therapist="t2")]))
    chart = chart_frame(weekly, "mean_score")
    assert chart.height == 3 * 8  # clinic + two therapists, 8 weeks each
    assert chart["signal"].null_count() == chart.height
    assert chart_frame(weekly.head(0), "mean_score").is_empty()


def test_a_week_in_progress_is_not_judged() -> None:
    # eleven full weeks falling at the end, then one Wednesday session of week 12 at a normal score
    frame = pl.concat([one_dyad([*BASELINE, 34.0, 34.0, 34.0]), one_dyad([*BASELINE, 34.0, 34.0, 34.0, 38.0])])
    weekly = weekly_alliance(frame.unique())
    week12 = weeks(12)[-1]
    on_wednesday = {"north": week12 + timedelta(days=2)}
    kept = complete_weeks(weekly, on_wednesday)
    assert week12 not in kept["week"].to_list() and kept["week"].max() == weeks(11)[-1]
    assert set(trend_signals(kept, "mean_score", "low")["week"].to_list()) == {weeks(11)[-1]}
    on_next_monday = {"north": week12 + timedelta(days=7)}
    assert complete_weeks(weekly, on_next_monday)["week"].max() == week12
    assert complete_weeks(weekly, {"south": week12}).is_empty()  # a clinic not asked about keeps nothing


def test_a_week_in_progress_with_one_flagged_session_is_not_100_percent_flagged() -> None:
    # ten dyads a week with one or two flagged; in the current week a single session so far, flagged
    rows = [
        ("north", "t1", f"d{d}", "SRS", w, 35.0, 55.0 if d < 1 + i % 2 else 10.0)
        for i, w in enumerate(weeks(10))
        for d in range(10)
    ]
    rows.append(("north", "t1", "d0", "SRS", weeks(11)[-1], 30.0, 60.0))
    weekly = weekly_flagged_share(sessions(rows), threshold=30)
    assert not trend_signals(weekly, "flagged_share", "high").is_empty()  # judged as it stood before
    today = {"north": weeks(11)[-1] + timedelta(days=1)}
    assert trend_signals(complete_weeks(weekly, today), "flagged_share", "high").is_empty()


def test_a_point_needs_enough_sessions_behind_it() -> None:
    weekly = weekly_alliance(one_dyad([*BASELINE, 34.0, 34.0, 34.0]))  # one session a week
    assert trend_signals(weekly, "mean_score", "low", count="n_sessions", min_count=1).height == 2
    assert trend_signals(weekly, "mean_score", "low", count="n_sessions", min_count=2).is_empty()


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.floats(0, 40, allow_nan=False) | st.sampled_from([36.0, 37.5, 38.0]), max_size=40),
    lam=st.sampled_from([0.2, 0.3, 1.0]),
    baseline_weeks=st.integers(1, 10),
)
def test_the_latest_point_is_the_full_charts_last_point(values: list[float], lam: float, baseline_weeks: int) -> None:
    """The night's shortcut (``latest_point``) against the chart it stands for, bit for bit."""
    days = weeks(len(values)) if values else None
    chart = ewma_chart(values, lam=lam, baseline_weeks=baseline_weeks, weeks=days)
    assert latest_point(values, lam=lam, baseline_weeks=baseline_weeks, weeks=days) == (chart[-1] if chart else None)
