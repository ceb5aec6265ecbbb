"""The review queue: change before level, courses that end, the queue setting, and detection on realistic noise."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import polars as pl
import pytest

from alliance.clinics import RuleConfig
from alliance.instruments import instrument
from benchmarks.detection import evaluate
from tests.test_rules import run
from transforms.queue import QueuePolicy, Standing, course_ended, queue_frame, standing
from transforms.rules import Series, Thresholds, new_low, series_episodes

SRS = instrument("SRS")
DAY = date(2026, 3, 2)


def series(scores: list[float]) -> Series:
    n = len(scores)
    return Series(
        SRS, [DAY + timedelta(weeks=i) for i in range(n)], list(range(1, n + 1)), scores, [None] * n, [None] * n
    )


def th(rc: float | None = 4.0) -> Thresholds:
    return Thresholds.of(RuleConfig(), SRS, rc, 1.5)


def finding(rule: str, severity: str = "medium", provisional: bool = False, ongoing: bool = True) -> dict[str, Any]:
    return {
        "rule": rule,
        "severity": severity,
        "provisional": provisional,
        "ongoing": ongoing,
        "last_session_date": DAY,
        "evidence": "{}",
        "dyad_id": "d1",
    }


# new low: below the cutoff for the first time, a reliable change below the client's own level


@pytest.mark.parametrize(
    ("scores", "fires"),
    [
        ([38.0, 38.0, 34.0], True),  # 36 − ε below cutoff, 4.0 = RC below the mean 38
        ([38.0, 38.0, 34.1], False),  # 3.9 below: not a reliable change
        ([38.0, 34.0], False),  # one earlier session is no level yet
        ([36.0, 36.0, 35.9], False),  # below the cutoff but only 0.1 below its level
        ([35.5, 37.0, 37.0, 30.0], False),  # this client has been below the cutoff before: not new
    ],
)
def test_new_low_boundaries(scores: list[float], fires: bool) -> None:
    assert len(new_low(series(scores), th())) == fires


def test_new_low_is_provisional_until_the_next_session_stays_below_the_cutoff() -> None:
    [pending] = [e for e in series_episodes(series([38.0, 38.0, 33.0]), th()) if e.rule == "new_low"]
    assert pending.provisional and "for the first time" in pending.reason
    [held] = [e for e in series_episodes(series([38.0, 38.0, 33.0, 35.0]), th()) if e.rule == "new_low"]
    assert held.ongoing and not held.provisional
    [back] = [e for e in series_episodes(series([38.0, 38.0, 33.0, 36.0]), th()) if e.rule == "new_low"]
    assert back.outcome == "repaired"


def test_a_low_level_alone_does_not_queue_a_dyad() -> None:
    # a client who always sits at 33–34: low_score, drops and low items, but no decline
    course = series([34.0, 33.0, 34.0, 33.0, 34.0, 33.0])
    episodes = series_episodes(course, th()) + run("low_score", course, th())
    findings = [finding(e.rule, e.severity, e.provisional) | {"last_session_date": DAY} for e in episodes if e.ongoing]
    assert {f["rule"] for f in findings} >= {"low_score"}
    assert not QueuePolicy().select([standing(findings, 3, 7.0, RuleConfig())])[0]


# courses end


@pytest.mark.parametrize(
    ("cadence", "silent", "ended"), [(7.0, 35, False), (7.0, 36, True), (14.0, 42, False), (None, 36, True)]
)
def test_course_ended_after_course_end_days_beyond_its_interval(
    cadence: float | None, silent: int, ended: bool
) -> None:
    assert course_ended(silent, cadence, RuleConfig()) == ended


def test_an_ended_course_leaves_the_queue_unless_it_ended_after_a_decline() -> None:
    config = RuleConfig()
    decline = [finding("sudden_loss", "high")]
    assert standing(decline, 10, 7.0, config).eligible
    assert not standing(decline, 40, 7.0, config).eligible  # ended, no silence flag: out of the queue
    dropout = [*decline, finding("stopped_appearing", "high")]
    assert standing(dropout, 40, 7.0, config).eligible
    assert not standing(dropout, config.inactive_days, 7.0, config).eligible


def test_provisional_findings_are_shown_but_carry_no_risk() -> None:
    pending = standing([finding("rupture", provisional=True)], 0, 7.0, RuleConfig())
    assert pending.risk == 0 and pending.headline is None
    confirmed = standing([finding("rupture")], 0, 7.0, RuleConfig())
    assert confirmed.risk == 45.0 and confirmed.headline == "rupture" and confirmed.headline_is_decline


# the queue setting


def _standings(risks: list[float], open_courses: int) -> list[Standing]:
    out = [Standing(r, ("rupture",), "rupture", True, True, False) for r in risks]
    out += [Standing(0.0, (), None, False, True, False)] * (open_courses - len(risks))
    return out


def test_risk_threshold_queues_at_or_above_it() -> None:
    chosen = QueuePolicy(min_risk=45.0).select(_standings([45.0, 44.9, 60.0], 10))
    assert chosen[:3] == [True, False, True]


def test_target_share_keeps_the_highest_risks_up_to_the_share_of_open_dyads() -> None:
    standings = _standings([40.0, 70.0, 55.0, 35.0], 20)
    chosen = QueuePolicy(min_risk=30.0, target_share=0.10).select(standings)  # 10% of 20 open = 2
    assert [i for i, c in enumerate(chosen) if c] == [1, 2]
    assert "at most 10% of open dyads" in QueuePolicy(30.0, 0.10).describe()


def test_queue_frame_judges_each_dyad_from_its_flags_and_silence() -> None:
    flags = pl.DataFrame(
        [
            finding("rupture") | {"dyad_id": "a"},
            finding("rupture") | {"dyad_id": "b"},
            finding("low_score", "advisory") | {"dyad_id": "c"},
        ]
    )
    last = pl.DataFrame(
        {
            "dyad_id": ["a", "b", "c"],
            "clinic_id": ["k"] * 3,
            "last_session_date": [DAY, DAY - timedelta(days=60), DAY],
            "clinic_latest": [DAY] * 3,
            "cadence_days": [7.0, 7.0, 7.0],
        }
    )
    frame = queue_frame(flags, last, {}, QueuePolicy())
    assert frame.select("dyad_id", "in_queue", "course_open").rows() == [
        ("a", True, True),
        ("b", False, False),
        ("c", False, True),
    ]


# detection on generated realistic data, loaded week by week


@pytest.mark.slow
def test_detection_on_realistic_noise_meets_its_targets() -> None:
    # the README's seed-5 column; with 80 dyads per planted shape one dyad moves a share by 1.25 points
    result = evaluate(dyads=2000, seed=5)
    assert result.stable_ever_queued <= 0.05
    for pattern in ("sudden_loss", "slow_decline", "dropout_after_decline"):
        assert result.detected[pattern] >= 0.90, pattern
    assert result.queue_share_open <= 0.15
    assert result.headline_decline == 1.0
