"""The warehouse: the only module that imports duckdb, knows the file, the writer lock and the tables."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
from filelock import FileLock, Timeout

from alliance.errors import StorageError, WarehouseBusy

SCHEMA_VERSION = 1
RATING_KEY = ("clinic_id", "client_id", "therapist_id", "instrument", "session_date", "session_number")

# Stable, documented tables (README "Tables"); no PRIMARY KEY/UNIQUE: DuckDB's ART indexes have open
# corruption reports, and uniqueness is kept by the single writer instead.
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR, value VARCHAR);
CREATE TABLE IF NOT EXISTS exports (
    export_id VARCHAR NOT NULL,
    clinic_id VARCHAR NOT NULL,
    file_name VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    bytes BIGINT,
    received_at TIMESTAMPTZ NOT NULL,
    status VARCHAR NOT NULL,
    instruments VARCHAR[],
    rows_total INTEGER NOT NULL,
    rows_new INTEGER NOT NULL,
    rows_updated INTEGER NOT NULL,
    rows_unchanged INTEGER NOT NULL,
    rows_quarantined INTEGER NOT NULL,
    error VARCHAR,
    archived_as VARCHAR
);
CREATE TABLE IF NOT EXISTS ratings (
    clinic_id VARCHAR NOT NULL,
    client_id VARCHAR NOT NULL,
    therapist_id VARCHAR NOT NULL,
    instrument VARCHAR NOT NULL,
    session_date DATE NOT NULL,
    session_number INTEGER NOT NULL,
    items DOUBLE[],
    total DOUBLE NOT NULL,
    export_id VARCHAR NOT NULL,
    source_line INTEGER,
    loaded_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS rating_history (
    clinic_id VARCHAR NOT NULL,
    client_id VARCHAR NOT NULL,
    therapist_id VARCHAR NOT NULL,
    instrument VARCHAR NOT NULL,
    session_date DATE NOT NULL,
    session_number INTEGER NOT NULL,
    items DOUBLE[],
    total DOUBLE NOT NULL,
    export_id VARCHAR NOT NULL,
    source_line INTEGER,
    loaded_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    replaced_by_export VARCHAR NOT NULL,
    replaced_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    export_id VARCHAR NOT NULL,
    clinic_id VARCHAR NOT NULL,
    source_line INTEGER,
    instrument VARCHAR,
    rules VARCHAR[] NOT NULL,
    reasons VARCHAR[] NOT NULL,
    "values" JSON,
    quarantined_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS client_refs (
    clinic_id VARCHAR NOT NULL,
    client_id VARCHAR NOT NULL,
    client_ref VARCHAR NOT NULL,
    first_export_id VARCHAR NOT NULL
);
"""

LEDGER_COUNTS = ("rows_total", "rows_new", "rows_updated", "rows_unchanged", "rows_quarantined")


@dataclass(frozen=True)
class Ledger:
    """One row of the exports table, as the pipeline knows it before the load."""

    export_id: str
    clinic_id: str
    file_name: str
    sha256: str
    bytes: int
    received_at: datetime
    status: str
    instruments: list[str]
    rows_total: int = 0
    rows_quarantined: int = 0
    error: str | None = None
    archived_as: str | None = None


@dataclass(frozen=True)
class LoadCounts:
    new: int
    updated: int
    unchanged: int
    quarantined: int


def _now() -> datetime:
    return datetime.now(UTC)


class Writer:
    """A read-write session on the warehouse, held under the writer lock."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def export_by_sha(self, sha256: str) -> dict[str, Any] | None:
        """The ledger row of the export with these bytes, if any."""
        rows = self.con.execute(
            "SELECT export_id, status, file_name, archived_as, received_at FROM exports WHERE sha256 = ?",
            [sha256],
        ).fetchall()
        if not rows:
            return None
        export_id, status, file_name, archived_as, received_at = rows[0]
        return {
            "export_id": export_id,
            "status": status,
            "file_name": file_name,
            "archived_as": archived_as,
            "received_at": received_at,
        }

    def _write_ledger(self, ledger: Ledger, counts: LoadCounts) -> None:
        # A rejected export retried after a profile fix replaces its earlier ledger row.
        self.con.execute("DELETE FROM exports WHERE sha256 = ?", [ledger.sha256])
        self.con.execute(
            """INSERT INTO exports VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [
                ledger.export_id,
                ledger.clinic_id,
                ledger.file_name,
                ledger.sha256,
                ledger.bytes,
                ledger.received_at,
                ledger.status,
                ledger.instruments,
                ledger.rows_total,
                counts.new,
                counts.updated,
                counts.unchanged,
                counts.quarantined,
                ledger.error,
                ledger.archived_as,
            ],
        )

    def record_rejection(self, ledger: Ledger) -> None:
        """Ledger row of an export that could not be read at all."""
        with self._transaction():
            self._write_ledger(ledger, LoadCounts(0, 0, 0, 0))

    def load_export(
        self, ledger: Ledger, ratings: pl.DataFrame, quarantine: pl.DataFrame, client_refs: pl.DataFrame
    ) -> LoadCounts:
        """Upsert ratings, add quarantine rows and client references, write the ledger: one transaction."""
        now = _now()
        key = " AND ".join(f"r.{k} = s.{k}" for k in RATING_KEY)
        with self._transaction():
            con = self.con
            con.register("incoming_ratings", ratings.to_arrow())
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE staged AS
                SELECT s.*,
                       CASE WHEN r.clinic_id IS NULL THEN 'new'
                            WHEN r.items IS NOT DISTINCT FROM s.items AND r.total = s.total THEN 'unchanged'
                            ELSE 'updated' END AS change
                FROM incoming_ratings s LEFT JOIN ratings r ON {key}"""
            )
            counted = dict(con.execute("SELECT change, count(*) FROM staged GROUP BY change").fetchall())
            con.execute(
                f"""INSERT INTO rating_history BY NAME
                SELECT r.*, ? AS replaced_by_export, ? AS replaced_at
                FROM ratings r JOIN staged s ON {key} WHERE s.change = 'updated'""",
                [ledger.export_id, now],
            )
            con.execute(
                f"""UPDATE ratings r SET items = s.items, total = s.total, export_id = s.export_id,
                       source_line = s.source_line, updated_at = ?
                FROM staged s WHERE {key} AND s.change = 'updated'""",
                [now],
            )
            con.execute(
                f"""INSERT INTO ratings BY NAME
                SELECT {", ".join(RATING_KEY)}, items, total, export_id, source_line,
                       ?::TIMESTAMPTZ AS loaded_at, ?::TIMESTAMPTZ AS updated_at
                FROM staged WHERE change = 'new'""",
                [now, now],
            )
            if quarantine.height:
                con.register("incoming_quarantine", quarantine.to_arrow())
                con.execute(
                    """INSERT INTO quarantine BY NAME
                    SELECT *, ?::TIMESTAMPTZ AS quarantined_at FROM incoming_quarantine""",
                    [now],
                )
            if client_refs.height:
                con.register("incoming_refs", client_refs.to_arrow())
                con.execute(
                    """INSERT INTO client_refs BY NAME
                    SELECT DISTINCT i.clinic_id, i.client_id, i.client_ref, i.first_export_id
                    FROM incoming_refs i ANTI JOIN client_refs c
                      ON c.clinic_id = i.clinic_id AND c.client_id = i.client_id"""
                )
            counts = LoadCounts(
                new=counted.get("new", 0),
                updated=counted.get("updated", 0),
                unchanged=counted.get("unchanged", 0),
                quarantined=quarantine.height,
            )
            self._write_ledger(ledger, counts)
            for name in ("incoming_ratings", "incoming_quarantine", "incoming_refs"):
                con.unregister(name)
        return counts

    def set_archived(self, export_id: str, archived_as: str) -> None:
        self.con.execute("UPDATE exports SET archived_as = ? WHERE export_id = ?", [archived_as, export_id])

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")


class Warehouse:
    """The DuckDB warehouse file of one Alliance Watch home."""

    def __init__(self, path: Path, lock_timeout_s: float = 600.0) -> None:
        self.path = path
        self.lock_timeout_s = lock_timeout_s

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def writer(self) -> Iterator[Writer]:
        """The one writer: a cross-process lock with a bounded wait, then a read-write connection."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.lock_path)
        try:
            lock.acquire(timeout=self.lock_timeout_s)
        except Timeout:
            raise WarehouseBusy(
                f"{self.path}: another run has held the writer lock for over {self.lock_timeout_s:.0f} s "
                f"(lock file {self.lock_path}); try again when it finishes"
            ) from None
        try:
            con = self._connect(read_only=False)
            try:
                _ensure_schema(con)
                yield Writer(con)
                con.execute("CHECKPOINT")
            finally:
                con.close()
        finally:
            lock.release()

    @contextmanager
    def reader(self) -> Iterator[Reader]:
        """A read-only connection; an empty reader when the warehouse does not exist yet."""
        if not self.path.exists():
            con = duckdb.connect(":memory:")
            _ensure_schema(con)
        else:
            con = self._connect(read_only=True)
        try:
            yield Reader(con)
        finally:
            con.close()

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        try:
            return duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as exc:
            raise StorageError(f"{self.path}: cannot open the warehouse: {str(exc).splitlines()[0]}") from None


class Reader:
    """Queries for people: status summaries and ad-hoc SQL results as frames."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def frame(self, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
        return self.con.sql(sql, params=params or None).pl()

    def clinic_status(self) -> pl.DataFrame:
        """Per clinic: exports by status, ratings, quarantined rows, last export received."""
        return self.frame(
            """
            WITH e AS (
                SELECT clinic_id,
                       count(*) AS exports,
                       count(*) FILTER (WHERE status = 'rejected') AS rejected,
                       count(*) FILTER (WHERE status = 'quarantined') AS quarantined_whole,
                       sum(rows_quarantined) AS rows_quarantined,
                       max(received_at) AS last_export
                FROM exports GROUP BY clinic_id),
            r AS (SELECT clinic_id, count(*) AS ratings, count(DISTINCT client_id || therapist_id) AS dyads
                  FROM ratings GROUP BY clinic_id)
            SELECT e.clinic_id, e.exports, e.rejected, e.quarantined_whole,
                   coalesce(r.ratings, 0) AS ratings, coalesce(r.dyads, 0) AS dyads,
                   e.rows_quarantined, e.last_export
            FROM e LEFT JOIN r USING (clinic_id) ORDER BY e.clinic_id
            """
        )


def _ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(SCHEMA)
    found = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    if not found:
        con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
    elif int(found[0][0]) > SCHEMA_VERSION:
        raise StorageError(f"warehouse schema {found[0][0]} is newer than this version of Alliance Watch")
