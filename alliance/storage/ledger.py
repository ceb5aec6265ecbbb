"""The exports ledger: one row per file received, the ratings it loaded and the rows it quarantined."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from alliance.storage.schema import RATING_KEY
from alliance.storage.session import Session, _now

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


def _ledger_dict(row: tuple[Any, ...]) -> dict[str, Any]:
    keys = ("export_id", "status", "file_name", "archived_as", "received_at", "clinic_id")
    return dict(zip(keys, row[:6], strict=True))


class LedgerTables(Session):
    """Reads and writes of the exports, ratings, rating_history, quarantine and client_refs tables."""

    # What the session keeps of the ratings table, read once per writer session (which a batch's files share)
    # instead of scanned for every file: kept up to date by load_export, dropped by a rollback (Session.forget).
    _therapists: pl.DataFrame | None = None
    _counts: dict[str, int] | None = None

    def known_therapists(self) -> pl.DataFrame:
        """(clinic_id, therapist_id) of every rating; a load that brings a pair not in it drops it."""
        if self._therapists is None:
            self._therapists = self.frame("SELECT DISTINCT clinic_id, therapist_id FROM ratings")
        return self._therapists

    def rating_counts(self) -> dict[str, int]:
        """Ratings per instrument, to decide when reliable change needs re-estimating."""
        if self._counts is None:
            self._counts = dict(self.con.execute("SELECT instrument, count(*) FROM ratings GROUP BY 1").fetchall())
        return dict(self._counts)

    def forget(self) -> None:
        self._therapists, self._counts = None, None
        super().forget()

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
        if self._therapists is not None:  # read again after a new pair
            pairs = ratings.select("clinic_id", "therapist_id").unique()
            if pairs.join(self._therapists, on=["clinic_id", "therapist_id"], how="anti").height:
                self._therapists = None
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
        if self._counts is not None:
            added = con.execute("SELECT instrument, count(*) FROM staged WHERE change = 'new' GROUP BY 1").fetchall()
            for code, n in added:
                self._counts[code] = self._counts.get(code, 0) + n
        if counted.get("updated"):  # each is a join against every rating: most files update none
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
