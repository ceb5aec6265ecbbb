"""The warehouse's schema: made once, brought up to date when this version's DDL differs from what it records."""

from __future__ import annotations

import duckdb
import pytest

from alliance.errors import StorageError
from alliance.settings import Settings
from alliance.storage import Warehouse
from alliance.storage.schema import schema_digest


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
