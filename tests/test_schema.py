"""The warehouse's schema: made once, brought up to date when this version's DDL differs from what it records."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from polars.testing import assert_frame_equal

from alliance.errors import StorageError
from alliance.samples import generate_sample
from alliance.settings import Settings
from alliance.storage import Warehouse
from alliance.storage.schema import schema_digest
from flows.nightly import run_nightly
from tests.conftest import home_with_night
from tests.reference.dyads import COURSE_COLUMNS, courses


def _sql(settings: Settings, *statements: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(settings.warehouse)) as con:
        for statement in statements[:-1]:
            con.execute(statement)
        return con.execute(statements[-1]).fetchall()


def _digest(settings: Settings) -> list[tuple[object, ...]]:
    return _sql(settings, "SELECT value FROM meta WHERE key = 'schema_digest'")


def test_a_new_warehouse_records_the_schema_it_was_made_with(settings: Settings) -> None:
    with Warehouse.of(settings).writer():
        pass
    assert _digest(settings) == [(schema_digest(),)]


@pytest.mark.parametrize("recorded", [None, "0123456789abcdef"], ids=["earlier version", "other version"])
def test_a_warehouse_from_another_version_gains_its_columns_and_views(settings: Settings, recorded: str | None) -> None:
    with Warehouse.of(settings).writer():
        pass
    _sql(
        settings,
        "ALTER TABLE alerts DROP COLUMN case_id",
        "DROP VIEW review_queue",
        "DELETE FROM meta WHERE key = 'schema_digest'",
        *([f"INSERT INTO meta VALUES ('schema_digest', '{recorded}')"] if recorded else []),
        "SELECT 1",
    )
    with Warehouse.of(settings).writer() as writer:
        assert "case_id" in writer.frame("SELECT * FROM alerts").columns
        writer.frame("SELECT * FROM review_queue")
    assert _digest(settings) == [(schema_digest(),)]


def test_a_warehouse_of_a_newer_version_is_refused(settings: Settings) -> None:
    with Warehouse.of(settings).writer():
        pass
    _sql(settings, "UPDATE meta SET value = '999' WHERE key = 'schema_version'",
         "UPDATE meta SET value = 'newer' WHERE key = 'schema_digest'", "SELECT 1")  # fmt: skip
    with pytest.raises(StorageError, match="newer than this version"), Warehouse.of(settings).writer():
        pass


def test_a_dyads_summary_from_before_its_course_columns_gains_them_filled_from_the_ratings(tmp_path: Path) -> None:
    """The last session, its instrument and the usual interval are read from the summary each night: a warehouse
    that predates them gets them from its ratings when its schema is brought up to date, as the oracle has them."""
    sample = generate_sample(tmp_path / "drop", clinics=2, weeks=12, seed=3, dyads_per_clinic=8)
    settings = home_with_night(tmp_path / "home", sample)
    run_nightly(settings)
    _sql(
        settings,
        *(f"ALTER TABLE dyads DROP COLUMN {column}" for column in ("last_session", "last_instrument", "cadence_days")),
        "DELETE FROM meta WHERE key = 'schema_digest'",
        "SELECT 1",
    )
    with Warehouse.of(settings).writer() as writer:
        found = writer.frame(f"SELECT {', '.join(COURSE_COLUMNS)} FROM dyads ORDER BY dyad_id")
        assert found.height > 0 and found["last_instrument"].null_count() == 0
        assert_frame_equal(found, courses(writer))
    # a fill cut short after the columns were added (out of memory, a full disk) is done on the next open
    _sql(settings, "UPDATE dyads SET last_instrument = NULL, cadence_days = NULL",
         "DELETE FROM meta WHERE key = 'schema_digest'", "SELECT 1")  # fmt: skip
    with Warehouse.of(settings).writer() as writer:
        assert_frame_equal(writer.frame(f"SELECT {', '.join(COURSE_COLUMNS)} FROM dyads ORDER BY dyad_id"), found)
