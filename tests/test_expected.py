"""Expected trajectories estimated from literal courses, and the rules that read them."""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl
import pytest

from alliance.clinics import RuleConfig
from alliance.instruments import instrument
from tests.test_rules import run
from transforms.expected import MIN_CELL, curves_frame, curves_of, estimate_expected
from transforms.rules import Series, Thresholds
from transforms.trajectory import session_features

ORS = instrument("ORS")
SRS = instrument("SRS")
DAY = date(2026, 1, 5)


def courses(code: str, starts: list[float], step: float, sessions: int = 4) -> pl.DataFrame:
    """One course per intake in ``starts``, rising by ``step`` a session (a recovery curve)."""
    rows = []
    for k, start in enumerate(starts):
        for i in range(sessions):
            value = start + step * i
            rows.append(
                {
                    "clinic_id": "c",
                    "client_id": f"p{k}",
                    "therapist_id": "t",
                    "instrument": code,
                    "session_date": DAY + timedelta(weeks=i),
                    "session_number": i + 1,
                    "items": [value / 4] * 4,
                    "total": value,
                }
            )
    return pl.DataFrame(rows)


# 5 intake bands of MIN_CELL courses each: intakes 10, 15, 20, 25, 30 with a little spread
STARTS = [base + 0.1 * j for base in (10.0, 15.0, 20.0, 25.0, 30.0) for j in range(MIN_CELL)]


def test_expected_curve_follows_similar_clients_by_intake_and_session() -> None:
    [curve] = estimate_expected(session_features(courses("ORS", STARTS, 2.0)))
    assert curve.instrument == "ORS" and len(curve.edges) == 4
    low, high = curve.at(10.5, 3), curve.at(30.5, 3)
    assert low is not None and high is not None
    assert low.expected == pytest.approx(10.95 + 4.0)  # mean intake of the band plus two sessions of +2
    assert low.lower < low.expected < low.upper and low.n == MIN_CELL
    assert high.expected == pytest.approx(30.95 + 4.0)
    assert curve.at(10.5, 30) == curve.at(10.5, 4) or curve.at(10.5, 30) is None  # capped at MAX_SESSION


def test_too_few_courses_give_no_curve() -> None:
    assert estimate_expected(session_features(courses("ORS", STARTS[: MIN_CELL * 5 - 1], 2.0))) == []


def test_curves_survive_the_round_trip_through_their_table() -> None:
    curves = estimate_expected(session_features(courses("ORS", STARTS, 2.0)))
    again = curves_of(curves_frame(curves))
    assert again["ORS"].cells == curves[0].cells and again["ORS"].edges == curves[0].edges
    assert again["ORS"].curve_id == curves[0].curve_id


def series(scores: list[float], inst: object = ORS) -> Series:
    n = len(scores)
    return Series(
        inst, [DAY + timedelta(weeks=i) for i in range(n)], list(range(1, n + 1)), scores, [None] * n, [None] * n
    )  # type: ignore[arg-type]


def test_not_on_track_is_below_the_lower_band_of_the_recovery_curve_not_below_25() -> None:
    [curve] = estimate_expected(session_features(courses("ORS", STARTS, 2.0)))
    th = Thresholds.of(RuleConfig(), ORS, 5.0, None, curve)
    band = curve.at(21.0, 3)
    assert band is not None
    # improving like similar clients, though still below 25: on track
    assert run("not_on_track", series([21.0, 23.0, 25.0]), th) == []
    # just below the lower band at the third session: not on track, the reason names the band
    [episode] = run("not_on_track", series([21.0, 22.0, round(band.lower - 0.1, 1)]), th)
    assert episode.start == 2 and episode.ongoing and "expected recovery band" in episode.reason
    assert run("not_on_track", series([21.0, 22.0, round(band.lower + 0.1, 1)]), th) == []


def test_alliance_below_what_similar_clients_score_is_advisory_evidence() -> None:
    [curve] = estimate_expected(session_features(courses("SRS", [s + 8 for s in STARTS], 0.0)))
    th = Thresholds.of(RuleConfig(), SRS, 4.0, 1.5, curve)
    band = curve.at(38.0, 2)
    assert band is not None
    [episode] = run("below_expected", series([38.0, band.lower - 0.5], SRS), th)
    assert episode.severity == "advisory" and "below the band" in episode.reason
    assert run("below_expected", series([38.0, band.lower], SRS), th) == []
