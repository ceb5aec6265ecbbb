"""The warehouse: the only module that imports duckdb, knows the file, the writer lock and the tables."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
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
from alliance.permissions import (
    OWNER_FILE,
    make_private,
    private_umask,
    settle_folders,
    settle_snapshot,
    snapshot_groups,
)
from alliance.readers import sha256_of
from alliance.redaction import plain_text
from alliance.settings import Settings

log = logging.getLogger("alliance.storage")
SCHEMA_VERSION = 1
RATING_KEY = ("clinic_id", "client_id", "therapist_id", "instrument", "session_date", "session_number")
DYAD_KEY = ("clinic_id", "client_id", "therapist_id")
REVIEW_STATUSES = ("open", "acknowledged", "resolved")

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
    dyad_id VARCHAR NOT NULL,
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
    dyad_id VARCHAR NOT NULL,
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
CREATE TABLE IF NOT EXISTS dyad_sessions (
    dyad_id VARCHAR NOT NULL,
    clinic_id VARCHAR NOT NULL,
    therapist_id VARCHAR NOT NULL,
    client_id VARCHAR NOT NULL,
    instrument VARCHAR NOT NULL,
    session_index INTEGER NOT NULL,
    session_date DATE NOT NULL,
    session_number INTEGER NOT NULL,
    score DOUBLE NOT NULL,
    items DOUBLE[],
    delta DOUBLE,
    baseline DOUBLE,
    slope DOUBLE,
    ewma DOUBLE,
    dyad_mean DOUBLE,
    dyad_sd DOUBLE,
    z_own DOUBLE,
    min_item DOUBLE,
    rules VARCHAR[],
    risk DOUBLE
);
CREATE TABLE IF NOT EXISTS flags (
    flag_id VARCHAR NOT NULL,
    clinic_id VARCHAR NOT NULL,
    therapist_id VARCHAR NOT NULL,
    dyad_id VARCHAR NOT NULL,
    client_id VARCHAR NOT NULL,
    instrument VARCHAR NOT NULL,
    rule VARCHAR NOT NULL,
    severity VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    ongoing BOOLEAN NOT NULL,
    outcome VARCHAR NOT NULL,
    provisional BOOLEAN NOT NULL,
    risk_score DOUBLE NOT NULL,
    magnitude DOUBLE,
    reason VARCHAR NOT NULL,
    evidence JSON,
    first_session INTEGER,
    first_session_date DATE,
    last_session INTEGER,
    last_session_date DATE,
    rc_used DOUBLE,
    calibration_id VARCHAR,
    first_flagged_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    worsened_at TIMESTAMPTZ,
    resolved_at TIMESTAMPTZ,
    resolution VARCHAR
);
CREATE TABLE IF NOT EXISTS reviews (
    flag_id VARCHAR NOT NULL,
    reviewed_by VARCHAR NOT NULL,
    reviewed_at TIMESTAMPTZ NOT NULL,
    from_status VARCHAR NOT NULL,
    to_status VARCHAR NOT NULL,
    note VARCHAR
);
CREATE TABLE IF NOT EXISTS flag_renames (
    old_flag_id VARCHAR NOT NULL,
    new_flag_id VARCHAR NOT NULL,
    renamed_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS dyads (
    dyad_id VARCHAR NOT NULL,
    clinic_id VARCHAR NOT NULL,
    therapist_id VARCHAR NOT NULL,
    client_id VARCHAR NOT NULL,
    instruments VARCHAR[],
    sessions INTEGER NOT NULL,
    first_session_date DATE,
    last_session_date DATE,
    risk_score DOUBLE NOT NULL,
    ongoing_rules VARCHAR[],
    in_queue BOOLEAN NOT NULL
);
ALTER TABLE dyads ADD COLUMN IF NOT EXISTS course_open BOOLEAN DEFAULT true;
CREATE TABLE IF NOT EXISTS cases (
    case_id VARCHAR NOT NULL,
    dyad_id VARCHAR NOT NULL,
    clinic_id VARCHAR NOT NULL,
    therapist_id VARCHAR NOT NULL,
    client_id VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    severity VARCHAR NOT NULL,
    risk_score DOUBLE NOT NULL,
    headline_rule VARCHAR,
    headline_reason VARCHAR,
    rules VARCHAR[],
    flag_ids VARCHAR[],
    opened_session_date DATE,
    last_session_date DATE,
    change VARCHAR NOT NULL,
    change_session_date DATE,
    previous_case_id VARCHAR,
    close_reason VARCHAR,
    opened_at TIMESTAMPTZ NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    closed_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS case_reviews (
    case_id VARCHAR NOT NULL,
    clinic_id VARCHAR NOT NULL,
    reviewed_by VARCHAR NOT NULL,
    reviewed_at TIMESTAMPTZ NOT NULL,
    from_status VARCHAR NOT NULL,
    to_status VARCHAR NOT NULL,
    flag_ids VARCHAR[],
    note VARCHAR
);
CREATE TABLE IF NOT EXISTS calibrations (
    calibration_id VARCHAR NOT NULL,
    instrument VARCHAR NOT NULL,
    sd DOUBLE NOT NULL,
    r DOUBLE NOT NULL,
    rc DOUBLE NOT NULL,
    n_scores BIGINT NOT NULL,
    n_pairs BIGINT NOT NULL,
    within_sd DOUBLE NOT NULL,
    estimated_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS expected_trajectories (
    curve_id VARCHAR NOT NULL,
    instrument VARCHAR NOT NULL,
    intake_band INTEGER NOT NULL,
    intake_lo DOUBLE NOT NULL,
    intake_hi DOUBLE NOT NULL,
    session_index INTEGER NOT NULL,
    expected DOUBLE NOT NULL,
    lower DOUBLE NOT NULL,
    upper DOUBLE NOT NULL,
    n INTEGER NOT NULL,
    estimated_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    alert_key VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    clinic_id VARCHAR NOT NULL,
    recipient VARCHAR NOT NULL,
    status VARCHAR NOT NULL,
    attempted_at TIMESTAMPTZ NOT NULL,
    error VARCHAR,
    channel VARCHAR,
    case_id VARCHAR
);
CREATE TABLE IF NOT EXISTS audit (
    happened_at TIMESTAMPTZ NOT NULL,
    actor VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    subject VARCHAR NOT NULL,
    detail VARCHAR
);
CREATE TABLE IF NOT EXISTS snapshots (
    path VARCHAR NOT NULL,
    clinic_id VARCHAR,
    sha256 VARCHAR NOT NULL,
    published_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS scoring_runs (
    run_id VARCHAR NOT NULL,
    kind VARCHAR NOT NULL,
    export_id VARCHAR,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL,
    dyads_scored INTEGER NOT NULL,
    recalibrated BOOLEAN NOT NULL,
    flags_new INTEGER NOT NULL,
    flags_worsened INTEGER NOT NULL,
    flags_reopened INTEGER NOT NULL,
    flags_auto_resolved INTEGER NOT NULL,
    queue_dyads INTEGER NOT NULL,
    active_dyads INTEGER NOT NULL
);
"""
VIEWS_FILE = Path(__file__).parents[1] / "dashboards" / "views.sql"
SNAPSHOT_VERSION = "v1.5.0"  # readable by DuckDB 1.5 tools (the PyPI duckdb-cli, BI drivers)
# Tables copied into snapshots; client_refs only into a clinic's own. Network snapshots drop review notes
# (free text a supervisor typed) and carry pseudonyms only.
SNAPSHOT_TABLES = (
    "exports", "ratings", "rating_history", "quarantine", "dyad_sessions", "flags", "dyads", "reviews",
    "cases", "case_reviews", "calibrations", "expected_trajectories", "alerts", "meta", "flag_renames",
)  # fmt: skip

# After a table aliased r with a flag_id column: joins flags f on the id that flag has now (after key rotations).
CURRENT_FLAG = """LEFT JOIN (
        SELECT old_flag_id, arg_max(new_flag_id, renamed_at) AS renamed FROM flag_renames GROUP BY 1
    ) n ON n.old_flag_id = r.flag_id"""
CURRENT_FLAG_ID = "coalesce(n.renamed, r.flag_id)"
# What the network snapshot leaves out of a table: review notes (free text a supervisor typed) and the raw
# values of quarantined rows (a name typed into a score cell); rules, reasons and lines stay.
NETWORK_REDACTED = {
    "reviews": "* EXCLUDE (note), NULL::VARCHAR AS note",
    "case_reviews": "* EXCLUDE (note), NULL::VARCHAR AS note",
    "quarantine": '* EXCLUDE ("values"), NULL::JSON AS "values"',
}

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
    touched_dyads: tuple[str, ...] = ()


def _now() -> datetime:
    return datetime.now(UTC)


def _ledger_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    keys = ("export_id", "status", "file_name", "archived_as", "received_at", "clinic_id")
    return dict(zip(keys, row[:6], strict=True))


def is_storage_failure(exc: BaseException) -> bool:
    """True when an error is the warehouse's own (disk full, I/O, a broken connection), not one file's content."""
    return _disk_full(exc) or isinstance(
        exc, StorageError | OSError | duckdb.IOException | duckdb.FatalException | duckdb.InternalException
    )


class Writer:
    """A read-write session on the warehouse, held under the writer lock."""

    def __init__(self, con: duckdb.DuckDBPyConnection, snapshot_groups: dict[str, str] | None = None) -> None:
        self.con = con
        self.snapshot_groups = snapshot_groups or {}

    def export_by_sha(self, clinic_id: str, sha256: str) -> dict[str, Any] | None:
        """The clinic's ledger row for these bytes, if any: a load or quarantine before the latest rejection."""
        rows = self.con.execute(
            """SELECT export_id, status, file_name, archived_as, received_at, clinic_id FROM exports
            WHERE clinic_id = ? AND sha256 = ? ORDER BY status = 'rejected', received_at DESC""",
            [clinic_id, sha256],
        ).fetchall()
        return _ledger_dict(rows[0]) if rows else None

    def export_by_id(self, export_id: str) -> dict[str, Any] | None:
        """The ledger row of one export id, with its sha256, if any."""
        rows = self.con.execute(
            """SELECT export_id, status, file_name, archived_as, received_at, clinic_id, sha256, bytes, instruments
            FROM exports WHERE export_id = ?""",
            [export_id],
        ).fetchall()
        if not rows:
            return None
        found = _ledger_dict(rows[0])
        found.update(sha256=rows[0][6], bytes=rows[0][7], instruments=rows[0][8])
        return found

    def attempts(self, clinic_id: str, sha256: str) -> int:
        """How many ledger rows the clinic already has for these bytes (rejections retried after a fix)."""
        return int(
            self.con.execute(
                "SELECT count(*) FROM exports WHERE clinic_id = ? AND sha256 = ?", [clinic_id, sha256]
            ).fetchall()[0][0]
        )

    def drop_quarantine(self, export_id: str) -> int:
        """Remove an export's quarantine rows (a released file's rows are re-screened), inside ``transaction()``."""
        found = self.con.execute("SELECT count(*) FROM quarantine WHERE export_id = ?", [export_id]).fetchall()
        self.con.execute("DELETE FROM quarantine WHERE export_id = ?", [export_id])
        return int(found[0][0])

    def _write_ledger(self, ledger: Ledger, counts: LoadCounts) -> None:
        # Only a released export rewrites its own row; a retried rejection has a new export id, so both rows stay.
        self.con.execute("DELETE FROM exports WHERE export_id = ?", [ledger.export_id])
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
        with self.transaction():
            self._write_ledger(ledger, LoadCounts(0, 0, 0, 0))

    def load_export(
        self, ledger: Ledger, ratings: pl.DataFrame, quarantine: pl.DataFrame, client_refs: pl.DataFrame
    ) -> LoadCounts:
        """Upsert ratings, add quarantine rows and client references, write the ledger (inside ``transaction()``)."""
        now = _now()
        key = " AND ".join(f"r.{k} = s.{k}" for k in RATING_KEY)
        # runs inside the caller's transaction, together with the scoring of the dyads it touched
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
            SELECT dyad_id, {", ".join(RATING_KEY)}, items, total, export_id, source_line,
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
        touched = con.execute("SELECT DISTINCT dyad_id FROM staged WHERE change <> 'unchanged' ORDER BY 1").fetchall()
        counts = LoadCounts(
            new=counted.get("new", 0),
            updated=counted.get("updated", 0),
            unchanged=counted.get("unchanged", 0),
            quarantined=quarantine.height,
            touched_dyads=tuple(row[0] for row in touched),
        )
        self._write_ledger(ledger, counts)
        for name in ("incoming_ratings", "incoming_quarantine", "incoming_refs"):
            con.unregister(name)
        return counts

    def _scope(self, name: str, values: list[str]) -> str:
        """Register ids as a one-column table and return its name, for joins instead of long IN lists."""
        self.con.register(name, pl.DataFrame({"id": values}, schema={"id": pl.String}).to_arrow())
        return name

    def frame(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> pl.DataFrame:
        return self.con.sql(sql, params=params or None).pl()

    def ratings_of(self, dyad_ids: list[str] | None) -> pl.DataFrame:
        """Every rating of the given dyads (all dyads when None), for scoring."""
        columns = "dyad_id, clinic_id, client_id, therapist_id, instrument, session_date, session_number, items, total"
        if dyad_ids is None:
            return self.frame(f"SELECT {columns} FROM ratings")
        scope = self._scope("scope_dyads", dyad_ids)
        return self.frame(f"SELECT {columns} FROM ratings SEMI JOIN {scope} s ON ratings.dyad_id = s.id")

    def rating_counts(self) -> dict[str, int]:
        """Ratings per instrument, to decide when reliable change needs re-estimating."""
        return dict(self.con.execute("SELECT instrument, count(*) FROM ratings GROUP BY 1").fetchall())

    def current_calibrations(self) -> pl.DataFrame:
        """The latest calibration of each instrument."""
        return self.frame(
            """SELECT * FROM calibrations
            QUALIFY row_number() OVER (PARTITION BY instrument ORDER BY estimated_at DESC) = 1"""
        )

    def current_expected(self) -> pl.DataFrame:
        """The latest expected trajectory of each instrument (one row per intake band and session)."""
        return self.frame(
            """SELECT * EXCLUDE (estimated_at) FROM expected_trajectories
            QUALIFY estimated_at = max(estimated_at) OVER (PARTITION BY instrument)"""
        )

    def save_expected(self, curves: pl.DataFrame) -> None:
        self.con.register("incoming_expected", curves.to_arrow())
        self.con.execute("INSERT INTO expected_trajectories BY NAME SELECT * FROM incoming_expected")

    def save_calibrations(self, calibrations: pl.DataFrame) -> None:
        self.con.register("incoming_calibrations", calibrations.to_arrow())
        self.con.execute("INSERT INTO calibrations BY NAME SELECT * FROM incoming_calibrations")

    def flags_of(
        self,
        dyad_ids: list[str] | None = None,
        clinic_ids: list[str] | None = None,
        rule: str | None = None,
        except_rule: str | None = None,
    ) -> pl.DataFrame:
        """Flags in a scoring scope: of some dyads or clinics, optionally of one rule or all but one."""
        where, params = ["TRUE"], []
        if dyad_ids is not None:
            where.append(f"dyad_id IN (SELECT id FROM {self._scope('scope_flag_dyads', dyad_ids)})")
        if clinic_ids is not None:
            where.append(f"clinic_id IN (SELECT id FROM {self._scope('scope_flag_clinics', clinic_ids)})")
        if rule is not None:
            where.append("rule = ?")
            params.append(rule)
        if except_rule is not None:
            where.append("rule <> ?")
            params.append(except_rule)
        return self.frame(
            f"SELECT * EXCLUDE (evidence), evidence::VARCHAR AS evidence FROM flags WHERE {' AND '.join(where)}", params
        )

    def replace_flags(self, flags: pl.DataFrame) -> None:
        """Write the new state of these flags (by flag_id)."""
        if flags.is_empty():
            return
        self.con.register("incoming_flags", flags.to_arrow())
        self.con.execute("DELETE FROM flags WHERE flag_id IN (SELECT flag_id FROM incoming_flags)")
        self.con.execute("INSERT INTO flags BY NAME SELECT * FROM incoming_flags")

    def replace_dyad_sessions(self, dyad_ids: list[str] | None, sessions: pl.DataFrame) -> None:
        """Replace the scored sessions of these dyads (of every dyad when None)."""
        if dyad_ids is None:
            self.con.execute("DELETE FROM dyad_sessions")
        else:
            scope = self._scope("scope_session_dyads", dyad_ids)
            self.con.execute(f"DELETE FROM dyad_sessions WHERE dyad_id IN (SELECT id FROM {scope})")
        if sessions.height:
            self.con.register("incoming_sessions", sessions.to_arrow())
            self.con.execute("INSERT INTO dyad_sessions BY NAME SELECT * FROM incoming_sessions")

    def last_sessions(self, clinic_ids: list[str] | None) -> pl.DataFrame:
        """Per dyad: its latest rated session (alliance instruments first), its clinic's latest session date and
        its usual interval (median days between sessions; NULL with one session)."""
        where = (
            "TRUE" if clinic_ids is None else f"clinic_id IN (SELECT id FROM {self._scope('scope_last', clinic_ids)})"
        )
        return self.frame(
            f"""
            WITH r AS (SELECT * FROM ratings WHERE {where}),
            gaps AS (
                SELECT dyad_id,
                       session_date - lag(session_date) OVER (PARTITION BY dyad_id ORDER BY session_date) AS gap
                FROM (SELECT DISTINCT dyad_id, session_date FROM r)
            ),
            cadence AS (SELECT dyad_id, median(gap)::DOUBLE AS cadence_days FROM gaps WHERE gap IS NOT NULL GROUP BY 1)
            SELECT clinic_id, therapist_id, dyad_id, client_id, instrument,
                   session_number AS last_session, session_date AS last_session_date,
                   max(session_date) OVER (PARTITION BY clinic_id) AS clinic_latest, c.cadence_days
            FROM r LEFT JOIN cadence c USING (dyad_id)
            QUALIFY row_number() OVER (PARTITION BY dyad_id ORDER BY session_date DESC, session_number DESC,
                                       instrument IN ('ORS') ASC, instrument) = 1
            """
        )

    def refresh_dyads(
        self, clinic_ids: list[str] | None, standing: pl.DataFrame, queue_min_risk: float, queue_setting: str
    ) -> None:
        """Rebuild the dyads summary (sessions, dates, risk, queue membership, open course) for these clinics.

        ``standing`` holds one row per dyad (dyad_id, risk_score, rules, in_queue, course_open), as
        ``transforms.queue.queue_frame`` decides it; the threshold and the setting's wording are kept for readers.
        """
        where = (
            "TRUE"
            if clinic_ids is None
            else f"clinic_id IN (SELECT id FROM {self._scope('scope_dyads_cl', clinic_ids)})"
        )
        self.con.register("incoming_standing", standing.to_arrow())
        self.con.execute(f"DELETE FROM dyads WHERE {where}")
        self.con.execute(
            f"""
            INSERT INTO dyads BY NAME
            SELECT r.dyad_id, any_value(r.clinic_id) AS clinic_id, any_value(r.therapist_id) AS therapist_id,
                   any_value(r.client_id) AS client_id, list_sort(list_distinct(list(r.instrument))) AS instruments,
                   count(DISTINCT (r.session_date, r.session_number)) AS sessions,
                   min(r.session_date) AS first_session_date, max(r.session_date) AS last_session_date,
                   coalesce(any_value(k.risk_score), 0) AS risk_score,
                   coalesce(any_value(k.rules), []::VARCHAR[]) AS ongoing_rules,
                   coalesce(any_value(k.in_queue), false) AS in_queue,
                   coalesce(any_value(k.course_open), true) AS course_open
            FROM ratings r
            LEFT JOIN incoming_standing k USING (dyad_id)
            WHERE {where.replace("clinic_id", "r.clinic_id")}
            GROUP BY r.dyad_id
            """
        )
        self.con.execute(
            f"""UPDATE flags SET risk_score = d.risk_score FROM dyads d
            WHERE flags.dyad_id = d.dyad_id AND {where.replace("clinic_id", "d.clinic_id")}"""
        )
        self.con.execute("DELETE FROM meta WHERE key IN ('queue_min_risk', 'queue_setting')")
        self.con.execute("INSERT INTO meta VALUES ('queue_min_risk', ?)", [str(queue_min_risk)])
        self.con.execute("INSERT INTO meta VALUES ('queue_setting', ?)", [queue_setting])

    def dyads_of(self, clinic_ids: list[str] | None) -> pl.DataFrame:
        """The dyads summary of these clinics (all when None)."""
        if clinic_ids is None:
            return self.frame("SELECT * FROM dyads")
        return self.frame(
            f"SELECT * FROM dyads WHERE clinic_id IN (SELECT id FROM {self._scope('scope_dy', clinic_ids)})"
        )

    def cases_of(self, clinic_ids: list[str] | None) -> pl.DataFrame:
        """Every case (any status) of these clinics (all when None)."""
        if clinic_ids is None:
            return self.frame("SELECT * FROM cases")
        return self.frame(
            f"SELECT * FROM cases WHERE clinic_id IN (SELECT id FROM {self._scope('scope_cs', clinic_ids)})"
        )

    def replace_cases(self, cases: pl.DataFrame) -> None:
        """Write the new state of these cases (by case_id)."""
        if cases.is_empty():
            return
        self.con.register("incoming_cases", cases.to_arrow())
        self.con.execute("DELETE FROM cases WHERE case_id IN (SELECT case_id FROM incoming_cases)")
        self.con.execute("INSERT INTO cases BY NAME SELECT * FROM incoming_cases")

    def review_case(self, case_id: str, to_status: str, reviewed_by: str, note: str | None, now: datetime) -> str:
        """Set a case's review status and apply it to the flags behind it (each reviewed, append-only, as if one
        by one); the case review records which flags it covered. Returns the case's previous status."""
        found = self.con.execute(
            "SELECT status, clinic_id, flag_ids FROM cases WHERE case_id = ?", [case_id]
        ).fetchall()
        if not found:
            raise StorageError(f"no case {case_id!r}; list cases with `alliance queue`")
        from_status, clinic_id, flag_ids = found[0]
        if from_status == "closed":
            raise StorageError(f"case {case_id} is closed (its dyad left the queue); a new case opens if it returns")
        if from_status == to_status:
            raise StorageError(f"case {case_id} is already {to_status}")
        covered = []
        for flag_id in flag_ids or []:
            current = self.con.execute("SELECT status FROM flags WHERE flag_id = ?", [flag_id]).fetchall()
            if current and current[0][0] in REVIEW_STATUSES and current[0][0] != to_status:
                self.review(flag_id, to_status, reviewed_by, note, now)
                covered.append(flag_id)
        self.con.execute(
            "INSERT INTO case_reviews VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [case_id, clinic_id, reviewed_by, now, from_status, to_status, covered, note],
        )
        self.audit(reviewed_by, "review_case", case_id, f"{from_status} -> {to_status} ({len(covered)} flag(s))", now)
        self.con.execute("UPDATE cases SET status = ?, updated_at = ? WHERE case_id = ?", [to_status, now, case_id])
        return str(from_status)

    def record_scoring_run(self, run: dict[str, Any]) -> None:
        columns = ", ".join(run)
        self.con.execute(
            f"INSERT INTO scoring_runs ({columns}) VALUES ({', '.join('?' for _ in run)})", list(run.values())
        )

    def review(self, flag_id: str, to_status: str, reviewed_by: str, note: str | None, now: datetime) -> str:
        """Record a review action (append-only) and set the flag's status; returns the previous status."""
        found = self.con.execute("SELECT status FROM flags WHERE flag_id = ?", [flag_id]).fetchall()
        if not found:
            raise StorageError(f"no flag {flag_id!r}; list flags with `alliance flags`")
        from_status = found[0][0]
        if from_status == to_status:
            raise StorageError(f"flag {flag_id} is already {to_status}")
        reviewed_by = plain_text(reviewed_by)  # shown in terminals, dashboards and exports of the audit
        self.con.execute(
            "INSERT INTO reviews VALUES (?, ?, ?, ?, ?, ?)", [flag_id, reviewed_by, now, from_status, to_status, note]
        )
        self.audit(reviewed_by, "review", flag_id, f"{from_status} -> {to_status}", now)
        resolved = to_status == "resolved"
        self.con.execute(
            """UPDATE flags SET status = ?, updated_at = ?,
                   resolved_at = CASE WHEN ? THEN ? ELSE NULL END,
                   resolution = CASE WHEN ? THEN 'reviewed' ELSE NULL END
               WHERE flag_id = ?""",
            [to_status, now, resolved, now, resolved, flag_id],
        )
        return str(from_status)

    def sent_alert_keys(self, keys: list[str], recipient: str) -> set[tuple[str, str | None]]:
        """Which of these alert keys were already delivered to this recipient, as (key, channel) pairs.

        A channel of None is a delivery recorded before channels were: it counts for every channel.
        """
        if not keys:
            return set()
        scope = self._scope("scope_alert_keys", keys)
        rows = self.con.execute(
            f"""SELECT DISTINCT alert_key, channel FROM alerts
            WHERE status = 'sent' AND recipient = ? AND alert_key IN (SELECT id FROM {scope})""",
            [recipient],
        ).fetchall()
        return {(row[0], row[1]) for row in rows}

    def case_alert_dates(self, case_ids: list[str]) -> dict[tuple[str, str], str]:
        """(recipient, case_id) → the day (ISO) an alert about the case last reached that recipient."""
        scope = self._scope("scope_alert_cases", case_ids)
        rows = self.con.execute(
            f"""SELECT recipient, case_id, max(attempted_at)::DATE::VARCHAR FROM alerts
            WHERE status = 'sent' AND case_id IN (SELECT id FROM {scope}) GROUP BY ALL"""
        ).fetchall()
        return {(recipient, case_id): day for recipient, case_id, day in rows}

    def record_alerts(self, rows: pl.DataFrame) -> None:
        """Append delivery outcomes (sent or failed); a failed key is tried again on the next run."""
        if rows.height:
            self.con.register("incoming_alerts", rows.to_arrow())
            self.con.execute("INSERT INTO alerts BY NAME SELECT * FROM incoming_alerts")
            self.con.execute(
                """INSERT INTO audit
                SELECT max(attempted_at), 'alliance', 'alert_' || status, clinic_id || '/' || recipient,
                       kind || ': ' || count(*) || ' key(s)'
                FROM incoming_alerts GROUP BY status, clinic_id, recipient, kind"""
            )

    def check_key(self, fingerprint: str) -> None:
        """Record the pseudonym key's fingerprint on first use; refuse a different key afterwards."""
        found = self.con.execute("SELECT value FROM meta WHERE key = 'key_fingerprint'").fetchall()
        if not found:
            self.con.execute("INSERT INTO meta VALUES ('key_fingerprint', ?)", [fingerprint])
        elif found[0][0] != fingerprint:
            raise StorageError(
                f"the pseudonym key (fingerprint {fingerprint}) is not the one this warehouse was built with "
                f"({found[0][0]}); the same client would get a second pseudonym. Use the warehouse's key, or "
                "finish an interrupted `alliance rekey` (it leaves pseudonym.key.new beside the key file)"
            )

    def key_fingerprint(self) -> str | None:
        found = self.con.execute("SELECT value FROM meta WHERE key = 'key_fingerprint'").fetchall()
        return str(found[0][0]) if found else None

    def remap_ids(
        self,
        clients: pl.DataFrame,
        dyads: pl.DataFrame,
        flags: pl.DataFrame,
        fingerprint: str,
    ) -> None:
        """Replace client pseudonyms, dyad ids and flag ids (key rotation), in the caller's transaction.

        ``clients``: clinic_id, old, new; ``dyads`` and ``flags``: old, new. The append-only ``reviews``,
        ``case_reviews``, ``audit`` and ``alerts`` keep their rows: old flag ids resolve through ``flag_renames``;
        cases keep their ids, so the alert keys of what was told stay valid.
        """
        con = self.con
        now = _now()
        con.register("client_map", clients.to_arrow())
        con.register("dyad_map", dyads.to_arrow())
        con.register("flag_map", flags.to_arrow())
        for table in ("ratings", "rating_history", "client_refs", "dyad_sessions", "flags", "dyads", "cases"):
            con.execute(
                f"""UPDATE {table} t SET client_id = m.new FROM client_map m
                WHERE t.clinic_id = m.clinic_id AND t.client_id = m.old"""
            )
        for table in ("ratings", "rating_history", "dyad_sessions", "flags", "dyads", "cases"):
            con.execute(f"UPDATE {table} t SET dyad_id = m.new FROM dyad_map m WHERE t.dyad_id = m.old")
        con.execute("UPDATE flags t SET flag_id = m.new FROM flag_map m WHERE t.flag_id = m.old")
        # ids renamed by an earlier rotation follow along, so every old id resolves in one step
        con.execute(
            """INSERT INTO flag_renames
            SELECT r.old_flag_id, m.new, ?::TIMESTAMPTZ FROM flag_renames r JOIN flag_map m ON r.new_flag_id = m.old""",
            [now],
        )
        con.execute("INSERT INTO flag_renames SELECT old, new, ?::TIMESTAMPTZ FROM flag_map", [now])
        # a case keeps its id (so its alert keys, and what was told, stay as they are); its flags are named anew
        con.execute(
            """UPDATE cases c SET flag_ids = m.ids FROM (
                SELECT u.case_id, list_sort(list(coalesce(f.new, u.flag_id))) AS ids
                FROM (SELECT case_id, unnest(flag_ids) AS flag_id FROM cases) u
                LEFT JOIN flag_map f ON f.old = u.flag_id GROUP BY u.case_id
            ) m WHERE c.case_id = m.case_id"""
        )
        con.execute(
            """UPDATE quarantine q SET "values" = replace(q."values"::VARCHAR, m.old, m.new)::JSON
            FROM client_map m WHERE q.clinic_id = m.clinic_id AND contains(q."values"::VARCHAR, m.old)"""
        )
        con.execute("DELETE FROM meta WHERE key = 'key_fingerprint'")
        con.execute("INSERT INTO meta VALUES ('key_fingerprint', ?)", [fingerprint])
        self.audit(
            "alliance", "rekey", "pseudonym key",
            f"{clients.height} clients re-pseudonymised; {flags.height} flag ids renamed (flag_renames)",
            now,
        )  # fmt: skip
        for name in ("client_map", "dyad_map", "flag_map"):
            con.unregister(name)

    def verify(self, snapshots: Path) -> list[str]:
        """Every inconsistency found, one line each: ledger sums, orphans, duplicate keys, snapshot checksums."""
        checks = {
            "exports whose rows_total differs from new + updated + unchanged + quarantined": """
                SELECT file_name FROM exports
                WHERE rows_total <> rows_new + rows_updated + rows_unchanged + rows_quarantined""",
            "exports whose quarantine rows differ from rows_quarantined": """
                SELECT e.file_name FROM exports e LEFT JOIN
                    (SELECT export_id, count(*) AS n FROM quarantine GROUP BY 1) q USING (export_id)
                WHERE coalesce(q.n, 0) <> e.rows_quarantined""",
            "ratings whose export is not in the ledger": """
                SELECT DISTINCT r.export_id FROM ratings r ANTI JOIN exports e USING (export_id)""",
            "ratings stored twice under one natural key": f"""
                SELECT {", ".join(RATING_KEY)} FROM ratings GROUP BY ALL HAVING count(*) > 1""",
            "ratings without a client reference for their clinic": """
                SELECT DISTINCT r.clinic_id, r.client_id FROM ratings r
                ANTI JOIN client_refs c USING (clinic_id, client_id)""",
            "ratings of dyads missing from the dyads table": """
                SELECT DISTINCT dyad_id FROM ratings ANTI JOIN dyads USING (dyad_id)""",
            "flags of unknown dyads": "SELECT flag_id FROM flags ANTI JOIN dyads USING (dyad_id)",
            "flags stored twice": "SELECT flag_id FROM flags GROUP BY 1 HAVING count(*) > 1",
            "reviews of unknown flags": f"""
                SELECT DISTINCT r.flag_id FROM reviews r {CURRENT_FLAG}
                ANTI JOIN flags f ON f.flag_id = {CURRENT_FLAG_ID}""",
            "review audit rows naming unknown flags": f"""
                SELECT DISTINCT r.flag_id FROM (SELECT subject AS flag_id FROM audit WHERE action = 'review') r
                {CURRENT_FLAG} ANTI JOIN flags f ON f.flag_id = {CURRENT_FLAG_ID}""",
            "more ratings than the ledger ever added": """
                SELECT 1 WHERE (SELECT count(*) FROM ratings) <> (SELECT coalesce(sum(rows_new), 0) FROM exports)""",
        }
        problems = []
        for what, sql in checks.items():
            found = self.con.execute(f"SELECT count(*) FROM ({sql})").fetchall()[0][0]
            if found:
                problems.append(f"{found} {what}")
        for name, digest in self.con.execute("SELECT path, sha256 FROM snapshots ORDER BY path").fetchall():
            path = snapshots / name
            if not path.exists():
                problems.append(f"snapshot {name} is missing")
            elif sha256_of(path) != digest:
                problems.append(f"snapshot {name} does not match the checksum recorded when it was published")
        archived = self.con.execute(
            "SELECT file_name, archived_as, sha256 FROM exports WHERE archived_as IS NOT NULL ORDER BY received_at"
        ).fetchall()
        for name, archived_as, digest in archived:
            path = Path(archived_as)
            # a file moved on (a retried rejection) or removed by retention is not checked; a changed one is
            if path.is_file() and sha256_of(path) != digest:
                problems.append(f"archived file {path.name} is not the bytes loaded from {name} (sha256 differs)")
        return problems

    def audit(self, actor: str, action: str, subject: str, detail: str | None, at: datetime | None = None) -> None:
        """Append one line to the audit trail: who did what to what."""
        row = [plain_text(actor), action, plain_text(subject), None if detail is None else plain_text(detail)]
        self.con.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?)", [at or _now(), *row])

    def publish(self, folder: Path, clinic_ids: list[str] | None) -> list[Path]:
        """Write read-only snapshots (network, and these clinics' or all) and swap them in atomically."""
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(".*.partial*"):  # a run killed mid-publish (or out of space) left these
            leftover.unlink(missing_ok=True)
        published = [self._snapshot(folder / "network.duckdb", None)]
        clinics = clinic_ids if clinic_ids is not None else [
            row[0] for row in self.con.execute("SELECT DISTINCT clinic_id FROM exports ORDER BY 1").fetchall()
        ]  # fmt: skip
        published += [self._snapshot(folder / f"clinic-{cid}.duckdb", cid) for cid in clinics]
        return published

    def _snapshot(self, target: Path, clinic_id: str | None) -> Path:
        partial = target.with_name(f".{target.name}.partial")
        partial.unlink(missing_ok=True)
        quoted = str(partial).replace("'", "''")
        self.con.execute(f"ATTACH '{quoted}' AS snap (STORAGE_VERSION '{SNAPSHOT_VERSION}')")
        attached = True
        try:
            for table in SNAPSHOT_TABLES:
                columns = [r[0] for r in self.con.execute(f"DESCRIBE {table}").fetchall()]
                select = NETWORK_REDACTED.get(table, "*") if clinic_id is None else "*"
                where = "TRUE"
                if clinic_id is not None and "clinic_id" in columns:
                    where = "clinic_id = $clinic"
                elif clinic_id is not None and table == "reviews":
                    where = f"""flag_id IN (SELECT r.flag_id FROM reviews r {CURRENT_FLAG}
                        JOIN flags f ON f.flag_id = {CURRENT_FLAG_ID} WHERE f.clinic_id = $clinic)"""
                elif clinic_id is not None and table == "flag_renames":
                    where = "new_flag_id IN (SELECT flag_id FROM flags WHERE clinic_id = $clinic)"
                params = {"clinic": clinic_id} if "$clinic" in where else {}
                self.con.execute(f"CREATE TABLE snap.{table} AS SELECT {select} FROM {table} WHERE {where}", params)
            if clinic_id is not None:
                self.con.execute(
                    "CREATE TABLE snap.client_refs AS SELECT * FROM client_refs WHERE clinic_id = $clinic",
                    {"clinic": clinic_id},
                )
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                self.con.execute("DETACH snap")
            attached = False
            for leftover in (partial, partial.with_name(partial.name + ".wal")):
                leftover.unlink(missing_ok=True)  # a half-written snapshot must not eat the space a re-run needs
            raise
        finally:
            if attached:
                self.con.execute("DETACH snap")
        try:
            _add_views(partial)
            settle_snapshot(partial, self.snapshot_groups.get(clinic_id) if clinic_id else None)
            digest = sha256_of(partial)
            os.replace(partial, target)  # readers holding the old file keep it; new readers get this one
        except BaseException:
            for leftover in (partial, partial.with_name(partial.name + ".wal")):
                leftover.unlink(missing_ok=True)
            raise
        now = _now()
        self.con.execute("DELETE FROM snapshots WHERE path = ?", [target.name])
        self.con.execute("INSERT INTO snapshots VALUES (?, ?, ?, ?)", [target.name, clinic_id, digest, now])
        self.audit("alliance", "publish_snapshot", target.name, digest[:16], now)
        return target

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together or not at all."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            with contextlib.suppress(duckdb.Error):  # a failed commit (disk full) has already rolled back
                self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")


class Warehouse:
    """The DuckDB warehouse file of one Alliance Watch home."""

    def __init__(
        self,
        path: Path,
        lock_timeout_s: float = 600.0,
        min_free_mb: float = 500.0,
        snapshot_groups: dict[str, str] | None = None,
    ) -> None:
        self.path = path
        self.lock_timeout_s = lock_timeout_s
        self.min_free_mb = min_free_mb
        self.snapshot_groups = snapshot_groups or {}

    @classmethod
    def of(cls, settings: Settings) -> Warehouse:
        """The warehouse of a home, with its lock wait and free-space warning from settings."""
        groups = snapshot_groups(settings.clinics_file)
        return cls(settings.warehouse, settings.lock_timeout_s, settings.min_free_mb, groups)

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def writer(self) -> Iterator[Writer]:
        """The one writer: a cross-process lock with a bounded wait, then a read-write connection.

        Files it creates (the warehouse, its WAL, snapshots) are owner-only whatever the umask.
        """
        private_umask()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        settle_folders(self.path.parent, bool(self.snapshot_groups))
        free = free_mb(self.path.parent)
        if free < self.min_free_mb:
            log.warning("%s: only %.0f MB free (warning below %.0f MB); a full disk stops runs", self.path, free,
                        self.min_free_mb)  # fmt: skip
        lock = FileLock(self.lock_path, mode=OWNER_FILE)
        deadline = time.monotonic() + self.lock_timeout_s
        try:
            lock.acquire(timeout=self.lock_timeout_s)
        except Timeout:
            raise WarehouseBusy(
                f"{self.path}: another run has held the writer lock for over {self.lock_timeout_s:.0f} s "
                f"(lock file {self.lock_path}); try again when it finishes"
            ) from None
        try:
            con = self._connect_for_writing(deadline)
            try:
                make_private(self.path)  # a warehouse from before owner-only homes, or copied in
                _ensure_schema(con)
                yield Writer(con, self.snapshot_groups)
                con.execute("CHECKPOINT")
            except (duckdb.Error, OSError) as exc:
                if _disk_full(exc):
                    raise StorageError(
                        f"{self.path}: the disk is full ({free_mb(self.path.parent):.0f} MB free); what was "
                        "committed before is kept, the rest of this run was not; free space and run it again"
                    ) from None
                raise
            finally:
                with contextlib.suppress(duckdb.Error):
                    con.close()
        finally:
            lock.release()

    def copy_to(self, target: Path) -> dict[str, tuple[int, str]]:
        """A consistent copy of the warehouse file (checkpointed, under the writer lock); returns its checksums."""
        with self.writer() as writer:
            writer.con.execute("CHECKPOINT")
            checksums = table_checksums(writer.con)
            shutil.copy2(self.path, target)
        return checksums

    def replace_with(self, source: Path) -> dict[str, tuple[int, str]]:
        """Swap in a warehouse file (e.g. from a backup) under the writer lock; returns the checksums it reads."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.lock_path, mode=OWNER_FILE)
        try:
            lock.acquire(timeout=self.lock_timeout_s)
        except Timeout:
            raise WarehouseBusy(f"{self.path}: a run holds the writer lock; restore when it has finished") from None
        try:
            partial = self.path.with_name(f".{self.path.name}.restoring")
            shutil.copy2(source, partial)
            make_private(partial)
            os.replace(partial, self.path)
            self.path.with_name(self.path.name + ".wal").unlink(missing_ok=True)
            con = self._connect(read_only=True)
            try:
                return table_checksums(con)
            finally:
                con.close()
        finally:
            lock.release()

    @property
    def snapshots(self) -> Path:
        return self.path.with_name("snapshots")

    def snapshot_path(self, clinic_id: str | None = None) -> Path:
        return self.snapshots / ("network.duckdb" if clinic_id is None else f"clinic-{clinic_id}.duckdb")

    @contextmanager
    def reader(self, clinic_id: str | None = None) -> Iterator[Reader]:
        """A read-only connection to the published snapshot (network, or one clinic's), never the working file.

        Before any snapshot exists it falls back to the working file (read-only), or an empty schema.
        """
        snapshot = self.snapshot_path(clinic_id)
        if snapshot.exists():
            con = duckdb.connect(str(snapshot), read_only=True)
        elif not self.path.exists():
            con = duckdb.connect(":memory:")
            _ensure_schema(con)
        else:
            con = self._connect(read_only=True)
        try:
            yield Reader(con)
        finally:
            con.close()

    def _connect_for_writing(self, deadline: float) -> duckdb.DuckDBPyConnection:
        """Open read-write, waiting (until the writer lock's deadline) for a process that holds DuckDB's own lock."""
        while True:
            try:
                return duckdb.connect(str(self.path))
            except duckdb.IOException as exc:
                if "conflicting lock" not in str(exc).lower():
                    raise self._unopenable(exc) from None
                if time.monotonic() >= deadline:
                    raise WarehouseBusy(
                        f"{self.path}: another process has the warehouse file open (a reader holding it, "
                        f"e.g. a duckdb shell or BI tool), and it was not closed within {self.lock_timeout_s:.0f} s; "
                        f"close it: readers belong on the snapshots in {self.snapshots}/"
                    ) from None
                time.sleep(0.2)
            except duckdb.Error as exc:
                raise self._unopenable(exc) from None

    def _connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        try:
            return duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.Error as exc:
            raise self._unopenable(exc) from None

    def _unopenable(self, exc: duckdb.Error) -> StorageError:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        if isinstance(exc, duckdb.IOException) and "lock" in first.lower():
            return StorageError(f"{self.path}: cannot open the warehouse: {first}")
        return StorageError(
            f"{self.path}: cannot open the warehouse (damaged file or write-ahead log?): {first}; "
            "restore the last backup with `alliance restore <backup folder> --force`"
        )


class Reader:
    """Queries for people: status summaries and ad-hoc SQL results as frames."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con

    def frame(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> pl.DataFrame:
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


def free_mb(folder: Path) -> float:
    """Free space on the filesystem holding ``folder``, in MB."""
    return shutil.disk_usage(folder).free / 1e6


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("no space left", "disk is full", "file too large", "quota exceeded"))


# Columns that record when or in which run something happened (or which channel URL, which names a host and
# port): they differ between two runs that loaded the same data, so checksums that prove "same warehouse" leave
# them out.
VOLATILE_COLUMNS = {
    "received_at", "loaded_at", "updated_at", "replaced_at", "quarantined_at", "first_flagged_at",
    "worsened_at", "resolved_at", "estimated_at", "attempted_at", "reviewed_at", "published_at", "happened_at",
    "run_id", "started_at", "finished_at", "archived_as", "sha256", "alert_key", "renamed_at", "opened_at",
    "changed_at", "closed_at", "channel",
}  # fmt: skip
CHECKSUM_TABLES = (
    "exports", "ratings", "rating_history", "quarantine", "client_refs", "dyad_sessions", "flags", "dyads",
    "reviews", "cases", "case_reviews", "calibrations", "expected_trajectories", "alerts", "flag_renames",
)  # fmt: skip


def table_checksums(con: duckdb.DuckDBPyConnection, stable_only: bool = False) -> dict[str, tuple[int, str]]:
    """Row count and an order-independent md5 of every table's rows (without volatile columns when asked)."""
    out: dict[str, tuple[int, str]] = {}
    present = {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    for table in [t for t in CHECKSUM_TABLES if t in present]:  # a backup from before a table was added lacks it
        columns = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
        kept = [c for c in columns if not (stable_only and c in VOLATILE_COLUMNS)]
        row = " || '|' || ".join(f"coalesce(CAST({_quote(c)} AS VARCHAR), '∅')" for c in kept)
        count, digest = con.execute(
            "SELECT count(*), coalesce(md5(string_agg(r, chr(10) ORDER BY r)), '') "
            f"FROM (SELECT {row} AS r FROM {table})"
        ).fetchall()[0]
        out[table] = (int(count), str(digest))
    return out


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _add_views(path: Path) -> None:
    """The supervisor views inside a snapshot, bound to its own tables."""
    con = duckdb.connect(str(path))
    try:
        con.execute(VIEWS_FILE.read_text(encoding="utf-8"))
        con.execute("CHECKPOINT")
    finally:
        con.close()


# Columns added after a table first shipped; a warehouse made by an earlier version gains them here.
MIGRATIONS = """
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS channel VARCHAR;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS case_id VARCHAR;
"""


def _ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(SCHEMA)
    con.execute(MIGRATIONS)
    con.execute(VIEWS_FILE.read_text(encoding="utf-8"))
    found = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    if not found:
        con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
    elif int(found[0][0]) > SCHEMA_VERSION:
        raise StorageError(f"warehouse schema {found[0][0]} is newer than this version of Alliance Watch")
