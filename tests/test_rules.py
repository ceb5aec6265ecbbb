"""Literal-input boundary tests for the detection rules (domain.md "Detection rules" 1–9)."""

from __future__ import annotations

import itertools
import json
import math
from datetime import date, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alliance.clinics import RuleConfig
from alliance.instruments import Instrument, instrument
from transforms.advisory import advisories
from transforms.calibration import reliable_change
from transforms.flags import FINDING_SCHEMA, declines_at_last_session, stopped_appearing
from transforms.rules import (
    RULES,
    SERIES_RULES,
    Episode,
    Series,
    Thresholds,
    declining_trend,
    escalation,
    reliable_decrease,
    risk_score,
    rupture,
    series_episodes,
    sudden_loss,
)
from transforms.runs import RULES as RUN_RULES
from transforms.runs import session_runs

SRS = instrument("SRS")
WAI = instrument("WAI_SR")
ORS = instrument("ORS")
START = date(2026, 1, 5)


def slopes_of(scores: list[float], window: int = 4) -> list[float | None]:
    """Least-squares slope over the last ``window`` sessions, None before a full window (as session_features)."""
    return [
        float(np.polyfit(np.arange(window), scores[i - window + 1 : i + 1], 1)[0]) if i >= window - 1 else None
        for i in range(len(scores))
    ]


def series(
    scores: list[float],
    inst: Instrument = SRS,
    numbers: list[int] | None = None,
    items: list[list[float] | None] | None = None,
    slopes: bool = False,
    window: int = 4,
) -> Series:
    """A dyad's series: weekly from 2026-01-05, sessions 1..n unless given; slopes only when asked for."""
    n = len(scores)
    return Series(
        instrument=inst,
        dates=[START + timedelta(weeks=i) for i in range(n)],
        numbers=numbers if numbers is not None else list(range(1, n + 1)),
        scores=[float(x) for x in scores],
        items=items if items is not None else [None] * n,
        slopes=slopes_of(scores, window) if slopes else [None] * n,
    )


def thresholds(
    inst: Instrument = SRS, rc: float | None = 5.0, pooled_sd: float | None = None, **config: Any
) -> Thresholds:
    return Thresholds.of(RuleConfig(**config), inst, rc, pooled_sd)


def sessions_of(s: Series) -> pl.DataFrame:
    """One series as the rules over every series read it (``Courses.sessions``)."""
    n = len(s.scores)
    return pl.DataFrame(
        {
            "k": [0] * n, "i": list(range(n)), "n": [n] * n, "clinic_id": ["c"] * n,
            "instrument": [s.instrument.code] * n, "session_date": s.dates, "session_number": s.numbers,
            "score": s.scores, "items": s.items,
        },
        schema_overrides={"k": pl.Int64, "i": pl.Int64, "n": pl.Int64, "items": pl.List(pl.Float64)},
    )  # fmt: skip


def advisory(rule: str, s: Series, th: Thresholds) -> list[dict[str, Any]]:
    """Rule 2 (drop) or 3 (low_item) on one series, run as scoring runs them over every series at once."""
    return advisories(sessions_of(s), {("c", s.instrument.code): th}).filter(pl.col("rule") == rule).to_dicts()


def run(rule: str, s: Series, th: Thresholds) -> list[Episode]:
    """A rule of ``transforms.runs`` (low_score, below_expected, not_on_track, engagement_gap) on one series, run
    as scoring runs them over every series at once, as episodes."""
    found = session_runs(sessions_of(s), {("c", s.instrument.code): th}).filter(pl.col("rule") == rule)
    return [
        Episode(
            rule, row["start"], row["last"], row["reason"], RULES[rule].severity,
            end=None if row["ongoing"] else row["stop"], outcome="ongoing" if row["ongoing"] else "repaired",
            magnitude=row["magnitude"], evidence=json.loads(row["evidence"]),
        )
        for row in found.iter_rows(named=True)
    ]  # fmt: skip


def spans_ok(episodes: list[Episode], n: int) -> None:
    """Start ≤ last < end; at most one ongoing; same-rule episodes never overlap.

    A flag is open from start until end; a withdrawn sudden-loss candidate never was a flag, and the next
    session's candidate may start before its end (see test_sudden_loss_withdrawn_candidate_does_not_block_the_next).
    """
    for e in episodes:
        assert 0 <= e.start <= e.last < n
        assert e.end is None or e.last < e.end
        assert (e.end is None) == e.ongoing
    assert sum(e.ongoing for e in episodes) <= 1
    ordered = sorted(episodes, key=lambda e: e.start)
    for before, after in itertools.pairwise(ordered):
        assert before.end is not None and before.last < after.start, (before, after)
        if before.outcome != "withdrawn":
            assert before.end <= after.start, (before, after)


# 1. Low SRS total ------------------------------------------------------------------------------


@pytest.mark.parametrize(("score", "flagged"), [(36.0, False), (35.9, True)])
def test_low_score_flags_below_36_not_at_36(score: float, flagged: bool) -> None:
    assert len(run("low_score", series([38.0, score]), thresholds())) == flagged


def test_low_score_reason_names_score_session_and_cutoff() -> None:
    [episode] = run("low_score", series([38.0, 35.9]), thresholds())
    assert episode.reason == "SRS 35.9 at session 2 is below the cutoff 36: discuss"
    assert (episode.start, episode.last, episode.outcome, episode.end) == (1, 1, "ongoing", None)
    assert episode.severity == "advisory"  # a low level alone is shown, not queued


def test_low_score_two_low_sessions_are_one_episode_repaired_at_36() -> None:
    [episode] = run("low_score", series([38.0, 35.0, 34.0, 36.0]), thresholds())
    assert (episode.start, episode.last, episode.end, episode.outcome) == (1, 2, 3, "repaired")
    assert episode.magnitude == pytest.approx(2.0)
    assert "SRS 34.0 at session 3" in episode.reason and "2 sessions in a row" in episode.reason


def test_low_score_ongoing_when_last_session_is_low() -> None:
    [first, second] = run("low_score", series([35.0, 37.0, 35.5]), thresholds())
    assert first.outcome == "repaired" and second.ongoing and second.start == 2


@pytest.mark.parametrize(("score", "flagged"), [(35.0, False), (34.9, True)])
def test_low_score_clinic_cutoff_35_is_honoured(score: float, flagged: bool) -> None:
    found = run("low_score", series([38.0, score]), thresholds(low_cutoff=35))
    assert len(found) == flagged
    if flagged:
        assert "below the cutoff 35" in found[0].reason


@pytest.mark.parametrize("config", [{}, {"low_cutoff": 36.0}])
def test_low_score_never_fires_on_wai_sr_without_published_cutoff(config: dict[str, float]) -> None:
    assert run("low_score", series([20.0, 12.0, 13.0], inst=WAI), thresholds(WAI, **config)) == []


# 2. Drop from last session ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "flagged"),
    [
        (37.0, 36.1, False),  # Δ −0.9
        (32.3, 31.4, False),  # Δ −0.9
        (37.0, 36.0, True),  # Δ −1.0 exactly
        (32.3, 31.3, True),  # float difference is −0.9999999999999964, still Δ −1.0
    ],
)
def test_drop_flags_at_minus_1_not_minus_0_9(before: float, after: float, flagged: bool) -> None:
    found = advisory("drop", series([before, after]), thresholds())
    assert len(found) == flagged
    if flagged:
        assert found[0]["start"] == 1 and found[0]["ongoing"]
        assert found[0]["reason"] == f"SRS fell from {before:.1f} to {after:.1f} at session 2"


def test_drop_stays_open_while_1_point_below_and_repairs_within_1_point() -> None:
    # fell from 38: 37.0 is still 1 point below (open), 37.1 is back within 1 point (repaired)
    [episode] = advisory("drop", series([38.0, 37.0, 37.0, 37.0, 37.1]), thresholds())
    assert (episode["start"], episode["last"], episode["stop"], episode["ongoing"]) == (1, 3, 4, False)
    assert "back to 37.1 at session 5" in episode["reason"]


def test_drop_second_fall_inside_open_episode_raises_magnitude_not_a_second_flag() -> None:
    [episode] = advisory("drop", series([38.0, 37.0, 35.0]), thresholds())
    assert episode["ongoing"] and (episode["start"], episode["last"]) == (1, 2)
    assert episode["magnitude"] == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("before", "after", "flagged"),
    [
        (50.0, 48.9, False),  # Δ −1.1 WAI points < 1 SRS point
        (50.0, 48.8, True),  # Δ −1.2 WAI points = 1 SRS point (48 WAI points over 40 SRS points)
        (30.0, 28.8, True),  # float difference −1.1999999999999993
    ],
)
def test_drop_on_wai_sr_is_rescaled_to_1_2_points(before: float, after: float, flagged: bool) -> None:
    assert len(advisory("drop", series([before, after], inst=WAI), thresholds(WAI))) == flagged


# 3. Low item (advisory) -------------------------------------------------------------------------


@pytest.mark.parametrize(("lowest", "flagged"), [(9.0, False), (8.9, True)])
def test_low_item_flags_below_9_not_at_9(lowest: float, flagged: bool) -> None:
    items: list[list[float] | None] = [[10.0, 10.0, 10.0, 10.0], [9.5, 9.5, 9.5, lowest]]
    found = advisory("low_item", series([40.0, 28.5 + lowest], items=items), thresholds())
    assert len(found) == flagged
    if flagged:
        assert found[0]["reason"] == "SRS item(s) overall below 9 at session 2"


def test_low_item_reason_names_every_low_item() -> None:
    [episode] = advisory("low_item", series([34.0], items=[[8.0, 10.0, 8.5, 7.5]]), thresholds())
    assert "relationship, approach, overall" in episode["reason"]
    assert episode["magnitude"] == pytest.approx(1.5)


def test_low_item_without_items_is_silent() -> None:
    assert advisory("low_item", series([20.0, 10.0]), thresholds()) == []


# 4. Reliable decrease ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "flagged"),
    [
        (40.0, 35.1, False),  # Δ −4.9
        (40.0, 35.0, True),  # Δ −5.0 = −RC
        (36.3, 31.3, True),  # float difference is 4.9999999999999964
    ],
)
def test_reliable_decrease_flags_at_minus_rc(before: float, after: float, flagged: bool) -> None:
    found = reliable_decrease(series([before, after]), thresholds(rc=5.0))
    assert len(found) == flagged
    if flagged:
        assert "beyond the reliable change 5.0" in found[0].reason
        assert found[0].evidence["rc"] == 5.0


def test_reliable_decrease_needs_a_calibrated_rc() -> None:
    assert reliable_decrease(series([40.0, 20.0]), thresholds(rc=None)) == []


def test_reliable_change_is_jacobson_truax() -> None:
    # 1.96 · √2 · 3 · √0.4 = 2.77186 · 3 · 0.632456 = 5.2592
    assert reliable_change(3.0, 0.6) == pytest.approx(5.2592, abs=1e-4)
    assert reliable_change(4.0, 0.75) == pytest.approx(1.96 * math.sqrt(2) * 4.0 * 0.5)
    assert reliable_change(3.0, 1.0) == 0.0


# 5. Sudden alliance loss ------------------------------------------------------------------------


def test_sudden_loss_all_three_criteria_with_3_plus_3_points() -> None:
    # fall 38 → 28 = 10 ≥ RC 5, 10.3 below the pre-loss mean 38.3; mean diff 10.7 > 2.776 · pooled SD 0.58
    [episode] = sudden_loss(series([38.0, 39.0, 38.0, 28.0, 27.0, 28.0]), thresholds(rc=5.0))
    assert episode.reason == "SRS fell from 38.0 to 28.0 at session 4: sudden loss, 3 criteria met"
    assert not episode.provisional and episode.ongoing and episode.severity == "high"
    assert episode.evidence["t"] == 2.776
    assert episode.evidence["criteria"] == {"a": True, "b": True, "c": True}


@pytest.mark.parametrize(
    ("after", "flagged"),
    [
        (11.1, False),  # fall 4.9 < RC 5 (b holds: 5.2 below the pre-loss mean 16.3)
        (11.0, True),  # fall 5.0 = RC
    ],
)
def test_sudden_loss_criterion_a_fall_at_least_rc(after: float, flagged: bool) -> None:
    assert len(sudden_loss(series([16.0, 17.0, 16.0, after, 11.0, 12.0]), thresholds(rc=5.0))) == flagged


@pytest.mark.parametrize(
    ("after", "flagged"),
    [
        (34.4, False),  # 4.93 below the pre-loss mean 39.33 (a holds: 5.6 ≥ RC 5)
        (34.3, True),  # 5.03 below it
    ],
)
def test_sudden_loss_criterion_b_a_reliable_change_below_the_pre_loss_mean(after: float, flagged: bool) -> None:
    assert len(sudden_loss(series([39.0, 39.0, 40.0, after, after, after]), thresholds(rc=5.0))) == flagged


def test_sudden_loss_at_the_ceiling_needs_no_quarter_of_the_score() -> None:
    # 40 → 34 is 15% of 40: Tang & DeRubeis's 25% would miss it; it is 6 points, beyond RC, below the level
    [episode] = sudden_loss(series([40.0, 40.0, 40.0, 34.0, 34.0, 34.0]), thresholds(rc=5.0))
    assert episode.ongoing and episode.evidence["criteria"] == {"a": True, "b": True, "c": True}


def test_sudden_loss_after_one_high_session_is_not_a_loss_from_the_level() -> None:
    # 40 → 34.5 is a fall ≥ RC, but the level before was 35.3: only 0.8 below it
    assert sudden_loss(series([33.0, 33.0, 40.0, 34.5, 34.0, 34.0]), thresholds(rc=5.0)) == []


def test_sudden_loss_criterion_c_fails_when_post_sessions_bounce_back_withdrawn() -> None:
    # post 28, 37, 38: mean diff 4.0 < 2.776 · pooled SD 3.92
    [episode] = sudden_loss(series([38.0, 39.0, 38.0, 28.0, 37.0, 38.0]), thresholds(rc=5.0))
    assert episode.outcome == "withdrawn" and not episode.ongoing
    assert (episode.start, episode.last, episode.end) == (3, 3, 5)
    assert "withdrawn: criterion c not met" in episode.reason
    assert episode.evidence["criteria"] == {"a": True, "b": True, "c": False}


@pytest.mark.parametrize(
    ("scores", "t"),
    [
        ([38.0, 39.0, 38.0, 28.0, 27.0, 28.0], 2.776),  # 3 + 3 points
        ([38.0, 39.0, 38.0, 28.0, 27.0], 3.182),  # 3 + 2: the series ends one session after the drop
        ([38.0, 36.0, 24.0, 24.0], 4.303),  # 2 + 2: drop at the third session
    ],
)
def test_sudden_loss_t_by_degrees_of_freedom(scores: list[float], t: float) -> None:
    [episode] = sudden_loss(series(scores), thresholds(rc=5.0))
    assert episode.evidence["t"] == t
    assert not episode.provisional and episode.evidence["criteria"]["c"]


@pytest.mark.parametrize(
    ("scores", "outcome"),
    [
        # pre 38, 34, 38; mean diff / pooled SD = 2.976: passes at t = 2.776 (3 + 3)
        ([38.0, 34.0, 38.0, 23.0, 30.0, 29.0], "ongoing"),
        # pre 38, 34, 38; post 23, 30: ratio 2.969 fails at t = 3.182 (3 + 2), would pass at 2.776
        ([38.0, 34.0, 38.0, 23.0, 30.0], "withdrawn"),
        # pre 38, 36; post 24, 29: ratio 3.9 fails at t = 4.303 (2 + 2), would pass at 3.182
        ([38.0, 36.0, 24.0, 29.0], "withdrawn"),
    ],
)
def test_sudden_loss_criterion_c_uses_the_t_of_its_degrees_of_freedom(scores: list[float], outcome: str) -> None:
    [episode] = sudden_loss(series(scores), thresholds(rc=5.0))
    assert episode.outcome == outcome
    assert episode.evidence["criteria"]["c"] == (outcome == "ongoing")


def test_sudden_loss_at_last_session_is_provisional_then_confirmed() -> None:
    [early] = sudden_loss(series([38.0, 39.0, 38.0, 28.0]), thresholds(rc=5.0))
    assert early.provisional and early.ongoing
    assert "provisional" in early.reason and "c needs the next sessions" in early.reason
    assert "t" not in early.evidence
    [later] = sudden_loss(series([38.0, 39.0, 38.0, 28.0, 27.5, 28.5]), thresholds(rc=5.0))
    assert not later.provisional and later.ongoing and "3 criteria met" in later.reason
    assert later.start == early.start


def test_sudden_loss_with_one_session_before_skips_c() -> None:
    [episode] = sudden_loss(series([38.0, 28.0, 37.0, 38.0]), thresholds(rc=5.0))
    assert "c skipped: fewer than 2 sessions before" in episode.reason
    assert not episode.provisional and "c" not in episode.evidence["criteria"]
    assert episode.outcome == "repaired" and episode.end == 2  # 38 − 37 < RC: repaired


def test_sudden_loss_withdrawn_candidate_does_not_block_the_next() -> None:
    # 10 → 7.5 (RC 2.5, 25%): post 7.5, 1, 1 spreads too much for c; 7.5 → 1 then meets all three
    withdrawn, confirmed = sudden_loss(series([10.0, 10.0, 10.0, 7.5, 1.0, 1.0, 1.0]), thresholds(rc=2.5))
    assert (withdrawn.start, withdrawn.end, withdrawn.outcome) == (3, 5, "withdrawn")
    assert (confirmed.start, confirmed.outcome) == (4, "ongoing") and "3 criteria met" in confirmed.reason


def test_sudden_loss_needs_a_calibrated_rc() -> None:
    assert sudden_loss(series([38.0, 39.0, 38.0, 10.0, 10.0, 10.0]), thresholds(rc=None)) == []


# 6. Rupture and repair --------------------------------------------------------------------------

# Seven sessions at 38 then a dip x, pooled SD 3 (the dyad's own earlier SD is 0): the earlier mean is 38,
# so k = 2 flags x < 38 − 6 = 32 and k = 1 flags x < 35.


@pytest.mark.parametrize(
    ("dip", "k", "flagged"),
    [
        (32.0, 2.0, False),
        (31.9, 2.0, True),
        (34.9, 1.0, True),  # lenient k = 1 flags a shallower dip
        (35.0, 1.0, False),
    ],
)
def test_rupture_more_than_k_sd_below_earlier_mean(dip: float, k: float, flagged: bool) -> None:
    found = rupture(series([38.0] * 7 + [dip]), thresholds(pooled_sd=3.0, rupture_k=k))
    assert len(found) == flagged
    if flagged:
        assert found[0].start == 7 and found[0].evidence["sd"] == 3.0 and found[0].evidence["mean"] == 38.0


def test_rupture_sd_is_the_larger_of_own_and_pooled_once_five_sessions_are_in() -> None:
    earlier = [38.0, 34.0, 38.0, 34.0, 38.0]  # own SD 2.19, mean 36.4
    [episode] = rupture(series([*earlier, 31.9]), thresholds(pooled_sd=2.0))
    assert episode.evidence["sd"] == pytest.approx(float(np.std(earlier, ddof=1)))
    assert rupture(series([*earlier, 32.1]), thresholds(pooled_sd=2.0)) == []  # 36.4 − 2·2.19 = 32.02


def test_rupture_uses_the_pooled_sd_before_five_sessions() -> None:
    # two earlier sessions far apart (own SD 4.2) do not widen the band: pooled SD 1.5, floor 37 − 3 = 34
    [episode] = rupture(series([40.0, 34.0, 33.9]), thresholds(pooled_sd=1.5))
    assert episode.start == 2 and episode.evidence["sd"] == 1.5


@pytest.mark.parametrize("back", [35.0, 36.0])
def test_rupture_repaired_on_return_to_baseline_minus_sd(back: float) -> None:
    # earlier mean 38 − SD 3 = 35: 35.0 is a return to it
    [episode] = rupture(series([38.0] * 6 + [30.0, back]), thresholds(pooled_sd=3.0))
    assert (episode.start, episode.end, episode.outcome) == (6, 7, "repaired")
    assert "repaired: back to" in episode.reason and episode.severity == "medium"


def test_rupture_not_repaired_just_below_baseline_minus_sd() -> None:
    [episode] = rupture(series([38.0] * 6 + [30.0, 34.9]), thresholds(pooled_sd=3.0))
    assert episode.ongoing and episode.last == 7
    assert "unrepaired for 2 sessions" in episode.reason


@pytest.mark.parametrize(("unrepaired_sessions", "severity"), [(3, "high"), (4, "medium")])
def test_rupture_unrepaired_for_n_sessions_is_high(unrepaired_sessions: int, severity: str) -> None:
    # the rupture at session 9 (29 < 38 − 6) stays at 34 ≤ 35: unrepaired for 3 sessions
    [episode] = rupture(
        series([38.0] * 8 + [29.0, 34.0, 34.0]), thresholds(pooled_sd=3.0, unrepaired_sessions=unrepaired_sessions)
    )
    assert episode.ongoing and "unrepaired for 3 sessions" in episode.reason
    assert episode.severity == severity


def test_rupture_fires_from_the_third_session_with_a_pooled_sd() -> None:
    assert rupture(series([38.0, 10.0]), thresholds(pooled_sd=0.1, rupture_k=1.0)) == []
    assert len(rupture(series([38.0, 38.0, 10.0]), thresholds(pooled_sd=0.1, rupture_k=1.0))) == 1
    assert rupture(series([38.0, 38.0, 10.0]), thresholds(pooled_sd=None)) == []  # no SD to judge by yet


def test_a_rupture_at_the_latest_session_is_provisional_until_the_next_agrees() -> None:
    th = thresholds(pooled_sd=1.5)
    [pending] = [e for e in series_episodes(series([38.0, 38.0, 38.0, 30.0]), th) if e.rule == "rupture"]
    assert pending.provisional and pending.ongoing
    [confirmed] = [e for e in series_episodes(series([38.0, 38.0, 38.0, 30.0, 31.0]), th) if e.rule == "rupture"]
    assert not confirmed.provisional and confirmed.ongoing


# 7. Declining trend -----------------------------------------------------------------------------

# the rule's mechanics at W = 4, slope −0.8 and a 2.5-point fall (the defaults are W = 3, −0.6, 3.5)
W4 = {"trend_window": 4, "trend_slope": -0.8, "trend_decline": 2.5}


def test_declining_trend_steady_slide_of_1_point_a_session() -> None:
    [episode] = declining_trend(series([39.0, 38.0, 37.0, 36.0, 35.0, 34.0], slopes=True), thresholds(rc=None, **W4))
    assert episode.start == 4 and episode.ongoing and episode.evidence["slope"] == pytest.approx(-1.0)
    assert episode.reason == "SRS declining 1.0 points a session over sessions 1–5 (39.0 → 35.0)"


@pytest.mark.parametrize(("step", "flagged"), [(0.8, True), (0.7, False)])
def test_declining_trend_slope_at_most_minus_0_8(step: float, flagged: bool) -> None:
    scores = [round(40.0 - step * i, 1) for i in range(5)]  # 5 sessions: two windows of 4
    assert len(declining_trend(series(scores, slopes=True), thresholds(rc=None, **W4))) == flagged


@pytest.mark.parametrize(
    ("last", "flagged"),
    [
        (35.0, True),  # last two sessions' mean 35.5: 2.5 below the level 38 before the windows
        (35.1, False),  # mean 35.55: 2.45 below
    ],
)
def test_declining_trend_needs_a_fall_of_2_5_from_the_level_before(last: float, flagged: bool) -> None:
    scores = [38.0, 38.0, 37.0, 36.0, last]  # Theil–Sen slopes −0.83 and about −1
    assert len(declining_trend(series(scores), thresholds(rc=None, **W4))) == flagged


def test_declining_trend_is_robust_to_one_noisy_session() -> None:
    # a slide of 1 point a session with one session 4 points off: least squares flattens, Theil–Sen holds
    [episode] = declining_trend(series([40.0, 40.0, 39.0, 38.0, 41.0, 36.0, 35.0]), thresholds(rc=None, **W4))
    assert episode.ongoing and episode.evidence["slope"] <= -0.8
    assert declining_trend(series([38.0, 38.0, 38.0, 33.0, 38.0, 38.0, 38.0]), thresholds(rc=None, **W4)) == []


def test_declining_trend_single_steep_window_is_not_a_slide() -> None:
    # window ending at session 5 has slope −1.2; the windows either side are flat or −0.4
    assert declining_trend(series([38.0, 38.0, 38.0, 38.0, 34.0, 38.0], slopes=True), thresholds(rc=None, **W4)) == []


def test_declining_trend_noisy_flat_series_is_silent() -> None:
    scores = [38.0, 36.0, 39.0, 37.0, 38.0, 36.0, 39.0, 37.0, 38.5, 36.5]
    assert declining_trend(series(scores, slopes=True), thresholds(rc=None, **W4)) == []


# 8. Not on track and escalation -----------------------------------------------------------------


def test_not_on_track_ors_below_25_from_the_third_session() -> None:
    [episode] = run("not_on_track", series([20.0, 21.0, 22.0], inst=ORS), thresholds(ORS, rc=5.0))
    assert episode.start == 2 and episode.ongoing and episode.severity == "low"
    assert (
        episode.reason == "ORS 22.0 at session 3 below the cutoff 25 with no reliable improvement since intake (20.0)"
    )
    assert run("not_on_track", series([20.0, 20.0], inst=ORS), thresholds(ORS, rc=5.0)) == []


@pytest.mark.parametrize(
    ("third", "flagged"),
    [
        (24.9, True),  # improved 4.9 < RC 5, below 25
        (25.0, False),  # at the cutoff
    ],
)
def test_not_on_track_cutoff_25(third: float, flagged: bool) -> None:
    assert len(run("not_on_track", series([22.0, 22.0, third], inst=ORS), thresholds(ORS, rc=10.0))) == flagged


@pytest.mark.parametrize(("third", "flagged"), [(19.9, True), (20.0, False)])
def test_not_on_track_reliable_improvement_since_intake_clears_it(third: float, flagged: bool) -> None:
    # intake 15, RC 5: 20.0 is a reliable improvement even though still below 25
    assert len(run("not_on_track", series([15.0, 18.0, third], inst=ORS), thresholds(ORS, rc=5.0))) == flagged


def test_not_on_track_only_for_outcome_instruments() -> None:
    assert run("not_on_track", series([10.0, 10.0, 10.0]), thresholds()) == []


def _escalation(srs: list[float], ors: list[float]) -> Episode | None:
    alliance = series(srs)
    found = series_episodes(alliance, thresholds(rc=5.0))
    off_track = any(e.ongoing for e in run("not_on_track", series(ors, inst=ORS), thresholds(ORS, rc=5.0)))
    return escalation(alliance, found, off_track)


def test_escalation_when_a_confirmed_decline_and_not_on_track_are_both_ongoing() -> None:
    episode = _escalation([38.0, 38.0, 38.0, 30.0, 30.0], [20.0] * 5)
    assert episode is not None and episode.severity == "critical" and episode.rule == "escalation"
    assert {"new_low", "reliable_decrease", "sudden_loss"} <= set(episode.evidence["alliance_rules"])
    assert "sudden loss" in episode.reason and "not on track" in episode.reason


@pytest.mark.parametrize(
    ("srs", "ors"),
    [
        ([38.0, 38.0, 37.0], [20.0, 20.0, 20.0]),  # only a drop (37 is not low): not enough
        ([38.0, 35.0, 38.0], [20.0, 20.0, 20.0]),  # low score already repaired
        ([38.0, 38.0, 35.0], [20.0, 20.0, 30.0]),  # on track
        ([38.0, 38.0, 35.0], [20.0, 20.0]),  # not-on-track starts at the third session
        ([38.0, 38.0, 35.0], [20.0, 20.0, 20.0]),  # a low score alone is advisory, no decline
        ([38.0, 38.0, 38.0, 30.0], [20.0] * 4),  # the fall waits for the next session
    ],
)
def test_escalation_needs_both_ongoing_and_more_than_a_drop(srs: list[float], ors: list[float]) -> None:
    assert _escalation(srs, ors) is None


# 9. Engagement gap ------------------------------------------------------------------------------


@pytest.mark.parametrize(("numbers", "flagged"), [([1, 2, 3, 7], True), ([1, 2, 3, 6], False)])
def test_session_gap_three_unrated_sessions(numbers: list[int], flagged: bool) -> None:
    found = run("engagement_gap", series([38.0] * 4, numbers=numbers), thresholds())
    assert len(found) == flagged
    if flagged:
        assert found[0].start == 3 and found[0].ongoing
        assert found[0].reason == "3 sessions without a rating between sessions 3 and 7"


def test_session_gap_ends_when_the_next_session_is_rated() -> None:
    [episode] = run("engagement_gap", series([38.0] * 5, numbers=[1, 2, 3, 7, 8]), thresholds())
    assert (episode.start, episode.end, episode.outcome) == (3, 4, "repaired")


def _last_seen(silent_days: int) -> pl.DataFrame:
    last = date(2026, 3, 2)
    return pl.DataFrame(
        {
            "clinic_id": ["c1"],
            "therapist_id": ["t1"],
            "dyad_id": ["d1"],
            "client_id": ["p1"],
            "instrument": ["SRS"],
            "last_session": [9],
            "last_session_date": [last],
            "clinic_latest": [last + timedelta(days=silent_days)],
        }
    )


DECLINE = {"d1": "SRS 31.0 at session 9 is 4.0 SD below the dyad's earlier mean 38.0: rupture"}


@pytest.mark.parametrize(
    ("silent_days", "outcome"), [(10, None), (11, "ongoing"), (55, "ongoing"), (56, "inactive"), (400, "inactive")]
)
def test_stopped_appearing_after_a_decline_and_one_and_a_half_weekly_intervals(
    silent_days: int, outcome: str | None
) -> None:
    found = stopped_appearing(_last_seen(silent_days).with_columns(cadence_days=pl.lit(7.0)), {}, DECLINE)
    if outcome is None:
        assert found.height == 0
        return
    [row] = found.to_dicts()
    assert row["outcome"] == outcome and row["ongoing"] == (outcome == "ongoing")
    assert row["rule"] == "stopped_appearing" and row["last_session"] == 9
    assert json.loads(row["evidence"])["silent_days"] == min(silent_days, 56)  # a closed one: the day it closed
    assert "after a decline (SRS 31.0 at session 9" in row["reason"]


def test_a_closed_silence_keeps_the_figures_of_the_day_it_closed() -> None:
    """Judged on later nights, as the clinic's latest session moves on, a closed finding is the same row: a
    network's old dropouts are not rewritten every night."""
    weekly = pl.lit(7.0).alias("cadence_days")
    closed = [stopped_appearing(_last_seen(days).with_columns(weekly), {}, DECLINE) for days in (56, 57, 400)]
    assert closed[0].equals(closed[1]) and closed[0].equals(closed[2])
    [row] = closed[0].to_dicts()
    assert row["magnitude"] == 56.0 and "up to 2026-04-27; now counted as closed" in row["reason"]
    assert json.loads(row["evidence"])["closed_on"] == "2026-04-27"
    ongoing = [stopped_appearing(_last_seen(days).with_columns(weekly), {}, DECLINE) for days in (54, 55)]
    assert ongoing[0]["magnitude"].to_list() == [54.0] and ongoing[1]["magnitude"].to_list() == [55.0]
    # under an inactive_days shorter than the silence threshold, it closes the day it is first found
    short = RuleConfig(inactive_days=7)
    first, later = (stopped_appearing(_last_seen(d).with_columns(weekly), {"c1": short}, DECLINE) for d in (11, 30))
    assert first.equals(later) and first["magnitude"].to_list() == [11.0]


def test_a_course_that_ends_without_a_decline_is_not_stopped_appearing() -> None:
    assert stopped_appearing(_last_seen(40), {}, {}).height == 0
    assert stopped_appearing(_last_seen(40), {}, {"other": "x"}).height == 0


@pytest.mark.parametrize(("cadence", "silent_days", "flagged"), [(14.0, 20, False), (14.0, 21, True), (30.0, 28, True)])
def test_stopped_appearing_scales_with_cadence_up_to_gap_days(cadence: float, silent_days: int, flagged: bool) -> None:
    frame = _last_seen(silent_days).with_columns(cadence_days=pl.lit(cadence))
    assert stopped_appearing(frame, {}, DECLINE).height == flagged  # 1.5 intervals, at most gap_days 28


def test_stopped_appearing_honours_clinic_gap_days() -> None:
    config = {"c1": RuleConfig(gap_days=8)}
    assert stopped_appearing(_last_seen(7), config, DECLINE).height == 0  # 1.5 weeks capped at 8 days
    assert stopped_appearing(_last_seen(8), config, DECLINE).height == 1


def _decline(rule: str, flag: str, magnitude: float, evidence: str = "{}") -> dict[str, Any]:
    return {
        "flag_id": flag, "clinic_id": "c1", "therapist_id": "t1", "dyad_id": "d1", "client_id": "p1",
        "instrument": "SRS", "rule": rule, "severity": "medium", "ongoing": True, "outcome": "ongoing",
        "provisional": False, "magnitude": magnitude, "reason": f"{rule} {flag}", "evidence": evidence,
        "first_session": 5, "first_session_date": date(2026, 3, 2), "last_session": 9,
        "last_session_date": date(2026, 3, 30), "rc_used": None, "calibration_id": None,
    }  # fmt: skip


def test_silence_names_the_same_decline_whatever_order_the_flags_come_in() -> None:
    """At equal depth the weightier rule, then the lower flag id: the warehouse keeps no row order."""
    reliable = '{"reliable": true}'
    declines = [
        _decline("declining_trend", "b2", 4.0), _decline("rupture", "c3", 4.0, reliable),
        _decline("new_low", "a1", 4.0), _decline("declining_trend", "a0", 3.9), _decline("rupture", "c0", 6.0),
    ]  # fmt: skip
    for order in itertools.permutations(declines):
        assert declines_at_last_session(pl.DataFrame(list(order), schema=FINDING_SCHEMA)) == {"d1": "rupture c3"}
    no_rupture = [d for d in declines if d["rule"] != "rupture"]
    for order in itertools.permutations(no_rupture):
        found = declines_at_last_session(pl.DataFrame(list(order), schema=FINDING_SCHEMA))
        assert found == {"d1": "new_low a1"}  # new_low and declining_trend weigh the same: the flag id decides


# 10. Risk score ---------------------------------------------------------------------------------


def test_risk_score_examples() -> None:
    assert risk_score([]) == 0
    assert risk_score(["sudden_loss"]) == 55.0
    assert risk_score(["sudden_loss", "low_score"]) == pytest.approx(100 * (1 - 0.45 * 0.96), abs=0.05)
    assert risk_score(["low_score", "drop", "low_item", "reliable_decrease"]) < 30  # advisory and one fall


@given(st.sets(st.sampled_from(sorted(RULES))))
def test_risk_score_combines_weights_within_0_100(rules: set[str]) -> None:
    expected = 100 * (1 - math.prod(1 - RULES[r].weight for r in rules))
    score = risk_score(sorted(rules))
    assert score == pytest.approx(expected, abs=0.05)
    assert 0 <= score <= 100


# 11. One open flag per rule ---------------------------------------------------------------------

scores_strategy = st.lists(st.integers(0, 400).map(lambda v: v / 10), min_size=1, max_size=14)


@st.composite
def dyad_series(draw: st.DrawFn) -> tuple[Series, Thresholds]:
    inst = draw(st.sampled_from([SRS, SRS, WAI, ORS]))
    scores = draw(scores_strategy)
    if inst is WAI:
        scores = [round(12 + x * 1.2, 1) for x in scores]
    n = len(scores)
    steps = draw(st.lists(st.integers(1, 5), min_size=n, max_size=n))
    numbers = [sum(steps[: i + 1]) for i in range(n)]
    items = [
        draw(st.none() | st.lists(st.integers(0, 100).map(lambda v: v / 10), min_size=4, max_size=4)) for _ in range(n)
    ]
    s = Series(
        inst,
        [START + timedelta(weeks=i) for i in range(n)],
        numbers,
        scores,
        items,
        slopes_of(scores),
    )
    rc = draw(st.none() | st.sampled_from([1.0, 3.0, 5.0, 8.0]))
    pooled = draw(st.none() | st.sampled_from([0.5, 2.0, 3.0]))
    k = draw(st.sampled_from([1.0, 2.0]))
    return s, thresholds(inst, rc=rc, pooled_sd=pooled, rupture_k=k)


@settings(max_examples=300, deadline=None)
@given(dyad_series())
def test_every_rule_keeps_one_open_flag_and_ordered_spans(case: tuple[Series, Thresholds]) -> None:
    s, th = case
    for rule in SERIES_RULES:
        spans_ok(rule(s, th), len(s.scores))
    for name in RUN_RULES:
        spans_ok(run(name, s, th), len(s.scores))


@pytest.mark.parametrize(("rc", "flagged"), [(4.1, True), (4.2, False)])
def test_declining_trend_holds_when_the_last_two_sessions_sit_a_reliable_change_below_the_first_three(
    rc: float, flagged: bool
) -> None:
    # the slope is broken by one high session, but the level has moved: 33.9, 33.9 against 38 (defaults W = 3)
    found = declining_trend(series([38.0, 38.0, 38.0, 33.9, 38.0, 33.9, 33.9]), thresholds(rc=rc))
    assert [e.start for e in found] == ([6] if flagged else [])
