"""The screen's per-session judgements on courses whose rules are known: it rules out what cannot fire."""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl

from alliance.clinics import RuleConfig
from alliance.instruments import instrument
from flows.scoring import _features
from transforms.declines import declining_trend
from transforms.episodes import Series, Thresholds
from transforms.screen import SCREENED, possible_rules, thresholds_frame


def _course(scores: list[float]) -> pl.DataFrame:
    """One SRS course of the given totals, one week apart."""
    rows = [
        {
            "dyad_id": "d1",
            "clinic_id": "c1",
            "client_id": "p1",
            "therapist_id": "t1",
            "instrument": "SRS",
            "session_date": date(2026, 1, 5) + timedelta(days=7 * i),
            "session_number": i + 1,
            "items": [v / 4] * 4,
            "total": v,
        }
        for i, v in enumerate(scores)
    ]
    return pl.DataFrame(rows).with_columns(pl.col("session_number").cast(pl.Int32))


def _possible(scores: list[float], rc: float = 3.0, pooled_sd: float = 1.5) -> dict[str, list[bool]]:
    config = RuleConfig()
    features = _features(_course(scores), {"c1": config})
    th = Thresholds.of(config, instrument("SRS"), rc, pooled_sd)
    screened = possible_rules(features, thresholds_frame({("c1", "SRS"): th}))
    return {rule: screened[f"can_{rule}"].to_list() for rule in SCREENED}


def test_a_steady_course_at_the_ceiling_rules_out_every_screened_rule() -> None:
    possible = _possible([39.0, 38.5, 39.2, 38.8, 39.0, 38.6, 39.1, 38.9])
    assert not any(any(sessions) for sessions in possible.values())


def test_a_fall_is_possible_exactly_where_it_happens() -> None:
    # 38 → 33 at the sixth session: a fall of 5 against RC 3, 5 below the earlier mean (k·SD = 3), below 36
    possible = _possible([38.0, 38.2, 37.9, 38.1, 38.0, 33.0, 33.2])
    at_fall = [False] * 5 + [True, False]
    assert possible["sudden_loss"] == at_fall
    assert possible["reliable_decrease"] == at_fall
    assert possible["rupture"] == [False] * 5 + [True, True]
    # the first session below 36 is the only one a new low could open at
    assert possible["new_low"] == at_fall


def test_a_new_low_is_ruled_out_after_an_earlier_low_and_without_a_reliable_fall() -> None:
    # below 36 from the start: never new for the client
    assert not any(_possible([35.0, 37.0, 37.0, 33.0])["new_low"])
    # 36.5 → 35.5: below the cutoff for the first time, but 1.5 below the earlier mean against RC 3
    assert not any(_possible([37.0, 37.0, 35.5], rc=3.0)["new_low"])
    assert _possible([37.0, 37.0, 34.0], rc=3.0)["new_low"] == [False, False, True]


def test_a_fall_of_exactly_the_reliable_change_is_not_ruled_out() -> None:
    possible = _possible([38.0, 38.0, 35.0], rc=3.0)
    assert possible["sudden_loss"] == [False, False, True]


def test_a_slide_too_gentle_for_the_slope_is_not_ruled_out() -> None:
    # never 3.5 below an earlier high, but the last two sessions sit 2.6 below the first three's mean (RC 2.5):
    # rule 7 opens on its held-low branch at the last session, and the screen must let it run there
    scores = [38.0, 38.0, 38.0, 37.0, 36.5, 35.4, 35.4]
    assert _possible(scores, rc=2.5)["declining_trend"] == [False] * 6 + [True]
    config = RuleConfig()
    features = _features(_course(scores), {"c1": config})
    series = Series(instrument("SRS"), features["session_date"].to_list(), features["session_number"].to_list(),
                    scores, features["items"].to_list(), features["slope"].to_list())  # fmt: skip
    found = declining_trend(series, Thresholds.of(config, instrument("SRS"), 2.5, 1.5))
    assert [e.start for e in found] == [6]


def test_a_session_without_thresholds_rules_nothing_out() -> None:
    config = RuleConfig()
    features = _features(_course([39.0, 38.5, 39.2, 38.8]), {"c1": config})
    th = Thresholds.of(config, instrument("SRS"), 3.0, 1.5)
    screened = possible_rules(features, thresholds_frame({("another clinic", "SRS"): th}))
    assert all(screened[f"can_{rule}"].all() for rule in SCREENED)
