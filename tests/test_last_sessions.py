"""Each dyad's last session, its clinic's latest day and its usual interval, as the dyads summary keeps them
(rebuilt only for the dyads whose ratings changed) against the window functions over every rating first written
(tests/reference/sessions.py), and that summary against the aggregation over every rating first written
(tests/reference/dyads.py): on a loaded network and on random ratings changed a few dyads at a time."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from alliance.samples import generate_sample
from alliance.settings import Settings
from alliance.storage import Warehouse, Writer
from flows.nightly import run_nightly
from tests.conftest import home_with_night
from tests.reference import dyads as reference_dyads
from tests.reference import sessions as reference


def assert_same(writer: Writer, clinic_ids: list[str] | None) -> pl.DataFrame:
    found = writer.last_sessions(clinic_ids)
    assert found.equals(found.sort("clinic_id", "dyad_id"))  # the queue breaks risk ties in this order
    found = found.sort("dyad_id")
    assert_frame_equal(found, reference.last_sessions(writer, clinic_ids).sort("dyad_id"))
    return found


def test_a_loaded_network_s_last_sessions_are_the_window_functions_own(tmp_path: Path) -> None:
    sample = generate_sample(tmp_path / "drop", clinics=3, weeks=20, seed=5, dyads_per_clinic=12)
    settings = home_with_night(tmp_path / "home", sample)
    run_nightly(settings)
    with Warehouse.of(settings).writer() as writer:
        everyone = assert_same(writer, None)
        assert_frame_equal(courses(writer), reference_dyads.courses(writer))
        clinics = sorted(set(everyone["clinic_id"]))
        assert len(clinics) == 3 and everyone["cadence_days"].null_count() < everyone.height
        assert set(assert_same(writer, clinics[1:])["clinic_id"]) == set(clinics[1:])
        assert assert_same(writer, []).is_empty()


DAY = date(2026, 3, 2)


def frame_of(keys: list[tuple[int, str, int, int]]) -> pl.DataFrame:
    """Ratings of (dyad, instrument, day, session number) keys: dyads of two clinics."""
    loaded = datetime(2026, 4, 1, tzinfo=UTC)
    return pl.DataFrame(
        [
            {
                "dyad_id": f"d{d}",
                "clinic_id": f"c{d % 2}",
                "client_id": f"p{d}",
                "therapist_id": f"t{d % 3}",
                "instrument": code,
                "session_date": DAY + timedelta(days=day),
                "session_number": number,
                "items": None,
                "total": 30.0,
                "export_id": "e1",
                "source_line": 2,
                "loaded_at": loaded,
                "updated_at": loaded,
            }
            for d, code, day, number in keys
        ]
    )


@st.composite
def ratings(draw: st.DrawFn) -> pl.DataFrame:
    """A few dyads of two clinics: sessions on shared days and numbers, alliance and outcome instruments at the
    same session, single sessions, gaps; one row per dyad, instrument, day and session number."""
    keys = draw(
        st.lists(
            st.tuples(
                st.integers(0, 4),  # dyad
                st.sampled_from(["WAI_SR", "ORS", "SRS"]),
                st.integers(0, 12),  # day: few, so that sessions share days and numbers
                st.integers(1, 4),  # session number
            ),
            min_size=1,
            max_size=40,
            unique=True,
        )
    )
    return frame_of(keys)


# the latest session rated on two alliance instruments and the outcome one: the name decides, ORS last
TIED = frame_of([(0, "WAI_SR", 3, 2), (0, "ORS", 3, 2), (0, "SRS", 3, 2), (0, "SRS", 1, 1), (1, "ORS", 2, 1)])


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    from alliance.home import init_home
    from alliance.settings import load_settings

    settings: Settings = load_settings(tmp_path_factory.mktemp("last") / "home")
    init_home(settings)
    return Warehouse.of(settings)


def _store(writer: Writer, rows: pl.DataFrame) -> None:
    writer.con.register("drawn", rows.to_arrow())
    writer.con.execute("INSERT INTO ratings BY NAME SELECT * FROM drawn")
    writer.con.unregister("drawn")


@hypothesis_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=ratings(), later=ratings(), scope=st.sampled_from([None, ["c0"], ["c1", "c9"]]))
@example(rows=TIED, later=TIED, scope=None)
def test_random_ratings_changed_a_few_dyads_at_a_time_give_the_window_functions_last_sessions(
    warehouse: Warehouse, rows: pl.DataFrame, later: pl.DataFrame, scope: list[str] | None
) -> None:
    """Ratings stored and every course built; then ``later``'s ratings replace their dyads' (new dyads among
    them) and only those dyads' courses are rebuilt, in ``scope``'s clinics: the summary is what the oracle
    aggregates from every rating, there and in every other clinic as before."""
    with warehouse.writer() as writer:
        with writer.transaction():
            writer.con.execute("DELETE FROM ratings")
            writer.con.execute("DELETE FROM dyads")
            _store(writer, rows)
            writer.refresh_courses(None, None)
        assert_same(writer, scope)
        assert_frame_equal(courses(writer), reference_dyads.courses(writer))
        before = courses(writer)
        changed = sorted(set(later["dyad_id"]))
        with writer.transaction():
            writer.con.execute("DELETE FROM ratings WHERE list_contains(?, dyad_id)", [changed])
            _store(writer, later)
            writer.refresh_courses(scope, changed)
        mine = pl.col("clinic_id").is_in(scope) if scope is not None else pl.lit(True)
        want = reference_dyads.courses(writer)
        assert_frame_equal(courses(writer).filter(mine), want.filter(mine))
        # another clinic's rows wait for their own clinic's settle: as they were
        assert_frame_equal(courses(writer).filter(~mine), before.filter(~mine))
        if scope is None:
            assert_same(writer, None)


def courses(writer: Writer) -> pl.DataFrame:
    """The dyads summary's course columns, in dyad order."""
    return writer.frame(f"SELECT {', '.join(reference_dyads.COURSE_COLUMNS)} FROM dyads ORDER BY dyad_id")
