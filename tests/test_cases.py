"""Cases on literal frames: a dyad entering the queue opens one, it follows its dyad, and closes when it leaves."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from alliance.errors import AllianceError
from alliance.home import init_home
from alliance.samples import add_profiles, generate_sample
from alliance.settings import Settings, load_settings
from alliance.storage import Warehouse
from flows.pipeline import ingest_file
from flows.reviews import list_cases, rescore, review_case
from tests.conftest import TEST_KEY
from tests.reference import cases as reference_cases
from transforms.cases import CASE_SCHEMA, case_id, update_cases

T0 = datetime(2026, 11, 2, 2, 0, tzinfo=UTC)
D0 = date(2026, 11, 1)


def dyads(*rows: tuple[str, bool, bool, float, date]) -> pl.DataFrame:
    """(dyad_id, in_queue, course_open, risk_score, last_session_date)."""
    return pl.DataFrame(
        [
            {
                "dyad_id": d,
                "clinic_id": "north",
                "therapist_id": "t1",
                "client_id": f"c-{d}",
                "in_queue": q,
                "course_open": o,
                "risk_score": r,
                "last_session_date": s,
            }
            for d, q, o, r, s in rows
        ]
    )


def flag(dyad: str, rule: str, severity: str, last: date, ongoing: bool = True, provisional: bool = False) -> dict:
    return {
        "flag_id": f"{dyad}-{rule}",
        "dyad_id": dyad,
        "rule": rule,
        "severity": severity,
        "reason": f"{rule} at {last}",
        "ongoing": ongoing,
        "provisional": provisional,
        "last_session_date": last,
        "evidence": "{}",
    }


def flags(*rows: dict[str, Any]) -> pl.DataFrame:
    schema = {
        "flag_id": pl.String, "dyad_id": pl.String, "rule": pl.String, "severity": pl.String, "reason": pl.String,
        "ongoing": pl.Boolean, "provisional": pl.Boolean, "last_session_date": pl.Date, "evidence": pl.String,
    }  # fmt: skip
    return pl.DataFrame(list(rows), schema=schema)


NONE = pl.DataFrame(schema=CASE_SCHEMA)


def test_a_dyad_entering_the_queue_opens_one_case_headed_by_its_most_severe_finding() -> None:
    found = flags(
        flag("d1", "drop", "low", D0),
        flag("d1", "sudden_loss", "high", D0),
        flag("d1", "rupture", "medium", D0, provisional=True),  # not confirmed: not evidence yet
    )
    update = update_cases(NONE, dyads(("d1", True, True, 55.0, D0), ("d2", False, True, 0.0, D0)), found, T0)
    (case,) = update.cases.to_dicts()
    assert case["case_id"] == case_id("d1", D0)
    assert (case["status"], case["change"], case["severity"]) == ("open", "new", "high")
    assert (case["headline_rule"], case["headline_reason"]) == ("sudden_loss", f"sudden_loss at {D0}")
    assert case["rules"] == ["drop", "sudden_loss"] and case["flag_ids"] == ["d1-drop", "d1-sudden_loss"]
    assert update.changes.rows() == [(case["case_id"], "new")]


def test_an_unchanged_case_is_not_rewritten() -> None:
    found = flags(flag("d1", "sudden_loss", "high", D0))
    first = update_cases(NONE, dyads(("d1", True, True, 55.0, D0)), found, T0)
    again = update_cases(first.cases, dyads(("d1", True, True, 55.0, D0)), found, T0 + timedelta(days=1))
    assert again.cases.is_empty() and again.changes.is_empty()


@pytest.mark.parametrize(
    ("later", "worse"),
    [
        ([flag("d1", "drop", "medium", D0), flag("d1", "sudden_loss", "high", D0 + timedelta(7))], True),  # joined
        ([flag("d1", "drop", "high", D0 + timedelta(7))], True),  # severity rose
        ([flag("d1", "drop", "low", D0 + timedelta(7))], False),  # milder: updated, not worse
    ],
)
def test_a_case_is_worse_when_its_severity_rises_or_a_rule_joins(later: list[dict], worse: bool) -> None:
    first = update_cases(NONE, dyads(("d1", True, True, 40.0, D0)), flags(flag("d1", "drop", "medium", D0)), T0)
    week = D0 + timedelta(7)
    update = update_cases(first.cases, dyads(("d1", True, True, 60.0, week)), flags(*later), T0 + timedelta(7))
    (case,) = update.cases.to_dicts()
    assert case["case_id"] == first.cases["case_id"][0]  # the same case follows its dyad
    assert (case["change"] == "worse") is worse
    assert update.changes.rows() == ([(case["case_id"], "worse")] if worse else [])
    if worse:
        assert case["change_session_date"] == week and case["changed_at"] == T0 + timedelta(7)


def test_a_resolved_case_that_gets_worse_is_open_again_an_acknowledged_one_stays_acknowledged() -> None:
    first = update_cases(NONE, dyads(("d1", True, True, 40.0, D0)), flags(flag("d1", "drop", "medium", D0)), T0)
    week = D0 + timedelta(7)
    worse = flags(flag("d1", "drop", "medium", D0), flag("d1", "rupture", "high", week))
    for status, after in (("resolved", "open"), ("acknowledged", "acknowledged")):
        reviewed = first.cases.with_columns(pl.lit(status).alias("status"))
        (case,) = update_cases(reviewed, dyads(("d1", True, True, 60.0, week)), worse, T0).cases.to_dicts()
        assert case["status"] == after


@pytest.mark.parametrize(("course_open", "reason"), [(True, "left_queue"), (False, "course_ended")])
def test_a_case_closes_when_its_dyad_leaves_the_queue(course_open: bool, reason: str) -> None:
    first = update_cases(NONE, dyads(("d1", True, True, 40.0, D0)), flags(flag("d1", "drop", "medium", D0)), T0)
    later = T0 + timedelta(days=30)
    update = update_cases(first.cases, dyads(("d1", False, course_open, 0.0, D0)), flags(), later)
    (case,) = update.cases.to_dicts()
    assert (case["status"], case["close_reason"], case["closed_at"]) == ("closed", reason, later)
    assert update.changes.rows() == [(case["case_id"], "closed")]


def test_a_dyad_back_in_the_queue_gets_a_new_case_marked_back() -> None:
    first = update_cases(NONE, dyads(("d1", True, True, 40.0, D0)), flags(flag("d1", "drop", "medium", D0)), T0)
    closed = update_cases(first.cases, dyads(("d1", False, True, 0.0, D0 + timedelta(7))), flags(), T0).cases
    back_on = D0 + timedelta(28)
    found = flags(flag("d1", "rupture", "high", back_on))
    update = update_cases(closed, dyads(("d1", True, True, 50.0, back_on)), found, T0 + timedelta(28))
    (case,) = update.cases.to_dicts()
    assert case["case_id"] == case_id("d1", back_on) != closed["case_id"][0]
    assert (case["change"], case["previous_case_id"], case["status"]) == ("back", closed["case_id"][0], "open")


def test_closed_cases_are_never_reopened_or_rewritten() -> None:
    first = update_cases(NONE, dyads(("d1", True, True, 40.0, D0)), flags(flag("d1", "drop", "medium", D0)), T0)
    closed = update_cases(first.cases, dyads(("d1", False, False, 0.0, D0)), flags(), T0).cases
    assert update_cases(closed, dyads(("d1", False, False, 0.0, D0)), flags(), T0).cases.is_empty()


# --- on the generated network, through the real pipeline -------------------------------------------------------


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = load_settings(tmp_path_factory.mktemp("cases") / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(settings.inbox, clinics=4, weeks=20, seed=4, dyads_per_clinic=25)
    add_profiles(settings.clinics_file, sample.profiles)
    for file in sample.files:
        assert ingest_file(file.path, settings).status == "loaded"
    return settings


def warehouse_frame(settings: Settings, sql: str) -> pl.DataFrame:
    with Warehouse.of(settings).reader() as reader:
        return reader.frame(sql)


def test_one_open_case_per_queued_dyad_and_none_for_a_finished_course(network: Settings) -> None:
    dyads_ = warehouse_frame(network, "SELECT dyad_id, in_queue, course_open FROM dyads")
    cases = list_cases(network)
    queued = set(dyads_.filter(pl.col("in_queue"))["dyad_id"].to_list())
    assert queued and set(cases["dyad_id"].to_list()) == queued
    assert cases["dyad_id"].n_unique() == cases.height  # one item per dyad
    ended = set(dyads_.filter(~pl.col("course_open"))["dyad_id"].to_list())
    assert ended and not ended & set(cases["dyad_id"].to_list())
    assert all(cases["headline_reason"].is_not_null()) and all(len(r) >= 1 for r in cases["rules"].to_list())


def test_reviewing_a_case_covers_its_flags_and_is_recorded(network: Settings) -> None:
    case = list_cases(network).row(0, named=True)
    assert review_case(network, case["case_id"], "acknowledged", "Dr Lee", "raised in supervision") == "open"
    flags_ = warehouse_frame(network, "SELECT flag_id, status FROM flags")
    behind = flags_.filter(pl.col("flag_id").is_in(case["flag_ids"]))
    assert behind.height == len(case["flag_ids"]) and set(behind["status"].to_list()) == {"acknowledged"}
    (row,) = warehouse_frame(network, "SELECT * FROM case_reviews").to_dicts()
    assert (row["case_id"], row["reviewed_by"], row["to_status"]) == (case["case_id"], "Dr Lee", "acknowledged")
    assert sorted(row["flag_ids"]) == sorted(case["flag_ids"])
    reviews = warehouse_frame(network, "SELECT flag_id, note FROM reviews")
    assert set(reviews["flag_id"].to_list()) == set(case["flag_ids"])  # each flag reviewed, append-only
    with duckdb.connect(str(network.warehouse), read_only=True) as con:
        audit = con.execute("SELECT subject FROM audit WHERE action = 'review_case'").fetchall()
    assert audit == [(case["case_id"],)]
    assert list_cases(network, status="acknowledged")["case_id"].to_list() == [case["case_id"]]
    with pytest.raises(AllianceError, match="already acknowledged"):
        review_case(network, case["case_id"], "acknowledged", "Dr Lee")
    # the network snapshot keeps the review, not the note
    with Warehouse.of(network).reader() as reader:
        assert reader.frame("SELECT note FROM case_reviews")["note"].to_list() == [None]


def test_a_rescore_keeps_every_case_as_it_was(network: Settings) -> None:
    before = warehouse_frame(network, "SELECT * EXCLUDE (updated_at) FROM cases ORDER BY case_id")
    rescore(network)
    assert warehouse_frame(network, "SELECT * EXCLUDE (updated_at) FROM cases ORDER BY case_id").equals(before)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cases_skip_only_dyads_that_can_hold_none(network: Settings, seed: int) -> None:
    """update_cases reads only the dyads in the queue or with a live case, and decides as the reader of every
    dyad (tests/reference/cases.py) does, when the queue moves: dyads join it, leave it, and courses end."""
    flags_ = warehouse_frame(network, "SELECT * EXCLUDE (evidence), evidence::VARCHAR AS evidence FROM flags")
    dyads_ = warehouse_frame(network, "SELECT * FROM dyads ORDER BY dyad_id")
    closed = (
        warehouse_frame(network, "SELECT * FROM cases")
        .with_columns(status=pl.lit("closed"))
        .cast(pl.Schema(CASE_SCHEMA))
    )
    previous = pl.concat([closed, update_cases(NONE, dyads_, flags_, T0).cases])  # a live case per queued dyad
    rng = random.Random(seed)
    queued = dyads_.filter("in_queue")["dyad_id"].to_list()
    others = dyads_.filter(~pl.col("in_queue"))["dyad_id"].to_list()
    assert len(queued) >= 2 and others
    leave = rng.sample(queued, len(queued) // 2)
    ended = leave[: len(leave) // 2]  # these leave because their course ended
    join = rng.sample(others, min(len(others), 5))
    moved = dyads_.with_columns(
        (pl.col("in_queue") & ~pl.col("dyad_id").is_in(leave)) | pl.col("dyad_id").is_in(join),
        pl.col("course_open") & ~pl.col("dyad_id").is_in(ended),
        (pl.col("last_session_date") + timedelta(days=7 * seed)).alias("last_session_date"),
    )
    later = T0 + timedelta(days=30)
    got, expected = (
        update_cases(previous, moved, flags_, later),
        reference_cases.update_cases(previous, moved, flags_, later),
    )
    assert {"new", "closed"} <= set(got.changes["change"].to_list())
    assert_frame_equal(got.cases, expected.cases)
    assert_frame_equal(got.changes, expected.changes)
