"""Findings merged into flags as one join (transforms.reconcile) equal the flag-by-flag merge kept in
tests/reference/flags.py: on random findings and flags that share ids, and on a loaded network's own flags."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from alliance.settings import Settings
from alliance.storage import Warehouse
from flows.nightly import run_nightly
from tests.conftest import put_courses
from tests.reference import flags as reference
from transforms.flags import FINDING_SCHEMA, FLAG_SCHEMA
from transforms.reconcile import reconcile
from transforms.rules import RULES, SEVERITIES

NOW = datetime(2026, 6, 1, 2, 0, tzinfo=UTC)
EARLIER = [NOW - timedelta(days=d) for d in (1, 9, 40)]
IDS = [f"f{i}" for i in range(10)]

# few values per field, so that a finding often equals its flag in all but one field
finding_fields = {
    "flag_id": st.sampled_from(IDS),
    "dyad_id": st.sampled_from(["d1", "d2"]),
    "rule": st.sampled_from([*sorted(RULES)[:3], "stopped_appearing"]),
    "severity": st.sampled_from([*SEVERITIES, "unknown"]),
    "ongoing": st.booleans(),
    "outcome": st.sampled_from(["ongoing", "repaired", "withdrawn", "inactive"]),
    "provisional": st.booleans(),
    "magnitude": st.sampled_from([0.0, 1.0, 1.0 + 5e-7, 2.5, 4.0]),
    "reason": st.sampled_from(["fell", "fell further"]),
    "last_session": st.sampled_from([3, 4]),
    "rc_used": st.sampled_from([None, 4.2]),
}
flag_fields = {
    **finding_fields,
    "magnitude": st.sampled_from([None, 0.0, 1.0, 2.5, 4.0]),
    "status": st.sampled_from(["open", "acknowledged", "resolved", "auto_resolved", "dismissed"]),
    "risk_score": st.sampled_from([0.0, 30.0]),
    "first_flagged_at": st.sampled_from(EARLIER),
    "updated_at": st.sampled_from(EARLIER),
    "worsened_at": st.sampled_from([None, *EARLIER]),
    "resolved_at": st.sampled_from([None, *EARLIER]),
    "resolution": st.sampled_from([None, "repaired", "no longer supported"]),
}
FIXED = {
    "clinic_id": "north",
    "therapist_id": "t1",
    "client_id": "c1",
    "instrument": "SRS",
    "evidence": "{}",
    "first_session": 2,
    "first_session_date": date(2026, 5, 1),
    "last_session_date": date(2026, 5, 20),
    "calibration_id": "cal1",
}


def frame(rows: list[dict[str, Any]], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame([{**FIXED, **row} for row in rows], schema=schema)


def assert_same(findings: pl.DataFrame, existing: pl.DataFrame) -> None:
    got, expected = reconcile(findings, existing, NOW), reference.reconcile(findings, existing, NOW)
    assert_frame_equal(got.flags, expected.flags)
    assert_frame_equal(got.changes, expected.changes)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.fixed_dictionaries(finding_fields), max_size=12),
    st.lists(st.fixed_dictionaries(flag_fields), max_size=12),
)
def test_one_join_equals_the_flag_by_flag_merge(findings: list[dict[str, Any]], flags: list[dict[str, Any]]) -> None:
    # ids found twice, or held twice, included: the merge's rules for them are the reference's too
    assert_same(frame(findings, FINDING_SCHEMA), frame(flags, FLAG_SCHEMA))


def test_findings_that_equal_their_flags_change_nothing_and_keep_when_they_were_updated() -> None:
    flag: dict[str, Any] = {"flag_id": "f1", "dyad_id": "d1", "rule": "drop", "severity": "low"}
    flag |= {"ongoing": True, "outcome": "ongoing", "provisional": False, "magnitude": 2.0, "reason": "fell"}
    flag |= {"last_session": 3, "rc_used": None, "status": "acknowledged", "risk_score": 30.0}
    flag |= {"first_flagged_at": EARLIER[2], "updated_at": EARLIER[0], "worsened_at": None, "resolved_at": None}
    existing = frame([flag | {"resolution": None}], FLAG_SCHEMA)
    findings = existing.select(list(FINDING_SCHEMA))
    merged = reconcile(findings, existing, NOW)
    assert_frame_equal(merged.flags, existing)
    assert merged.changes.is_empty()
    grown = reconcile(findings.with_columns(pl.lit(3.5).alias("magnitude")), existing, NOW)
    assert grown.changes.rows() == [("f1", "worsened")]
    assert grown.flags.row(0, named=True)["updated_at"] == NOW
    assert_same(findings.with_columns(pl.lit(3.5).alias("magnitude")), existing)


def test_a_loaded_networks_flags_merge_as_the_reference_merges_them(two_clinics: Settings) -> None:
    put_courses(two_clinics)
    run_nightly(two_clinics)
    with Warehouse.of(two_clinics).writer() as writer:
        flags = writer.flags_of()
    assert flags.height > 20 and flags["status"].n_unique() > 1
    findings = flags.select(list(FINDING_SCHEMA))
    # the same findings; a third gone; every other one grown, settled or reopened
    flip = pl.int_range(pl.len()) % 4 == 1
    changed = findings.with_columns(
        pl.when(flip).then(~pl.col("ongoing")).otherwise(pl.col("ongoing")).alias("ongoing"),
        pl.when(pl.int_range(pl.len()) % 2 == 0).then(pl.col("magnitude") + 1).otherwise(pl.col("magnitude")),
    ).filter(pl.int_range(pl.len()) % 3 != 2)
    for fresh in (findings, changed, findings.head(0)):
        assert_same(fresh, flags)
    assert reconcile(changed, flags, NOW).changes.height > 5
