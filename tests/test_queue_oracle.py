"""The queue decided over all dyads at once (transforms.queue.queue_frame) equals the dyad-by-dyad decisions
kept in tests/reference/queue.py: on random flags, silences, clinic settings and policies, and on a loaded network."""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from alliance.clinics import RuleConfig
from alliance.settings import Settings
from alliance.storage import Warehouse
from flows.nightly import run_nightly
from tests.conftest import put_courses
from tests.reference import queue as reference
from transforms.queue import QueuePolicy, queue_frame
from transforms.rules import RULES, SEVERITIES

DAY = date(2026, 6, 1)
DYADS = [f"d{i}" for i in range(12)]
CLINICS = ["north", "south", "east"]

flag_rows = st.lists(
    st.fixed_dictionaries(
        {
            "dyad_id": st.sampled_from(DYADS),
            # heavy rules often, so that dyads reach the queue and tie on risk
            "rule": st.one_of(st.sampled_from(sorted(RULES)), st.sampled_from(["sudden_loss", "rupture"])),
            "severity": st.sampled_from(SEVERITIES),
            "ongoing": st.sampled_from([True, True, True, False]),
            "provisional": st.sampled_from([False, False, False, True]),
            "last_session_date": st.integers(0, 90).map(lambda d: DAY - timedelta(days=d)),
            "evidence": st.sampled_from(["{}", '{"alliance_rules": ["rupture"]}']),
        }
    ),
    min_size=8,
    max_size=20,
)
dyad_rows = st.lists(
    st.fixed_dictionaries(
        {
            "clinic_id": st.sampled_from(CLINICS),
            "silent": st.one_of(st.integers(0, 14), st.integers(0, 120)),
            "cadence_days": st.one_of(st.none(), st.sampled_from([0.0, 3.5, 7.0, 14.0, 30.0])),
        }
    ),
    min_size=len(DYADS) - 2,
    max_size=len(DYADS),
)
policies = st.builds(
    QueuePolicy,
    st.sampled_from([0.0, 20.0, 30.0, 40.0, 55.0, 60.0]),
    st.one_of(st.none(), st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0])),
)
clinic_rules = st.dictionaries(
    st.sampled_from(CLINICS),
    st.builds(RuleConfig, inactive_days=st.integers(1, 30), course_end_days=st.integers(1, 30)),
)
FLAG_SCHEMA = {
    "dyad_id": pl.String,
    "rule": pl.String,
    "severity": pl.String,
    "ongoing": pl.Boolean,
    "provisional": pl.Boolean,
    "last_session_date": pl.Date,
    "evidence": pl.String,
}


@settings(max_examples=300, deadline=None)
@given(flag_rows, dyad_rows, clinic_rules, policies)
def test_the_queue_over_all_dyads_equals_the_dyad_by_dyad_decisions(
    flags: list[dict[str, object]], dyads: list[dict[str, object]], configs: dict[str, RuleConfig], policy: QueuePolicy
) -> None:
    last = pl.DataFrame(
        [
            {
                "dyad_id": DYADS[i],
                "clinic_id": d["clinic_id"],
                "last_session_date": DAY - timedelta(days=int(d["silent"])),  # type: ignore[call-overload]
                "clinic_latest": DAY,
                "cadence_days": d["cadence_days"],
            }
            for i, d in enumerate(dyads)
        ],
        schema={
            "dyad_id": pl.String,
            "clinic_id": pl.String,
            "last_session_date": pl.Date,
            "clinic_latest": pl.Date,
            "cadence_days": pl.Float64,
        },
    )
    found = pl.DataFrame(flags, schema=FLAG_SCHEMA)
    assert_frame_equal(queue_frame(found, last, configs, policy), reference.queue_frame(found, last, configs, policy))


def test_the_queue_of_a_loaded_network_equals_the_dyad_by_dyad_decisions(two_clinics: Settings) -> None:
    put_courses(two_clinics)
    run_nightly(two_clinics)
    with Warehouse.of(two_clinics).writer() as writer:
        flags, last = writer.flags_of(), writer.last_sessions(None)
    assert flags.filter("ongoing").height > 0
    for policy in (QueuePolicy(), QueuePolicy(20.0, 0.1), QueuePolicy(0.0, 0.5)):
        for configs in ({}, {"north": RuleConfig(inactive_days=1)}):
            expected = reference.queue_frame(flags, last, configs, policy)
            assert_frame_equal(queue_frame(flags, last, configs, policy), expected)
