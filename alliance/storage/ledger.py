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
class ExportLoad:
    """What one export brings to a load: its ledger row, accepted ratings, quarantine rows, client references."""

    ledger: Ledger
    ratings: pl.DataFrame
    quarantine: pl.DataFrame
    client_refs: pl.DataFrame


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
        """(clinic_id, therapist_id) of every rating, read once a session; a load adds the pairs it brings."""
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
        return self.sightings(clinic_id, sha256)[0]

    def sightings(self, clinic_id: str, sha256: str) -> tuple[dict[str, Any] | None, int]:
        """``export_by_sha``, and how many ledger rows the clinic has for these bytes (rejections retried after a
        fix): one query for what a file's admission asks of the ledger."""
        rows = self.con.execute(
            """SELECT export_id, status, file_name, archived_as, received_at, clinic_id FROM exports
            WHERE clinic_id = ? AND sha256 = ? ORDER BY status = 'rejected', received_at DESC""",
            [clinic_id, sha256],
        ).fetchall()
        return (_ledger_dict(rows[0]) if rows else None), len(rows)

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

    def ledger_rows_of(self, shas: list[str]) -> dict[tuple[str, str], tuple[int, int]]:
        """Per (clinic_id, sha256) among these bytes: ledger rows, and how many of them are not rejections."""
        scope = self._scope("scope_shas", shas)
        rows = self.con.execute(
            f"""SELECT clinic_id, sha256, count(*), count(*) FILTER (WHERE status <> 'rejected') FROM exports
            WHERE sha256 IN (SELECT id FROM {scope}) GROUP BY ALL"""
        ).fetchall()
        self.con.unregister(scope)
        return {(clinic, sha): (int(n), int(live)) for clinic, sha, n, live in rows}

    def drop_quarantine(self, export_id: str) -> int:
        """Remove an export's quarantine rows (a released file's rows are re-screened), inside ``transaction()``."""
        found = self.con.execute("SELECT count(*) FROM quarantine WHERE export_id = ?", [export_id]).fetchall()
        self.con.execute("DELETE FROM quarantine WHERE export_id = ?", [export_id])
        return int(found[0][0])

    def _write_ledger(self, rows: list[tuple[Ledger, LoadCounts]]) -> None:
        """The ledger rows of a load in two statements, not two a file (a batch of 200 paid 2 ms a file)."""
        # Only a released export rewrites its own row; a retried rejection has a new export id, so both rows stay.
        latest = {ledger.export_id: (ledger, counts) for ledger, counts in rows}  # an id written twice: its last
        self.con.execute(f"DELETE FROM exports WHERE export_id IN ({', '.join('?' * len(latest))})", list(latest))
        values = [
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
            ]
            for ledger, counts in latest.values()
        ]
        row = f"({', '.join('?' * len(values[0]))})"
        self.con.execute(f"INSERT INTO exports VALUES {', '.join([row] * len(values))}", [v for r in values for v in r])

    def record_rejection(self, ledger: Ledger) -> None:
        """Ledger row of an export that could not be read at all."""
        with self.transaction():
            self._write_ledger([(ledger, LoadCounts(0, 0, 0, 0))])

    def load_export(
        self, ledger: Ledger, ratings: pl.DataFrame, quarantine: pl.DataFrame, client_refs: pl.DataFrame
    ) -> LoadCounts:
        """Upsert ratings, add quarantine rows and client references, write the ledger (inside ``transaction()``)."""
        return self.load_exports([ExportLoad(ledger, ratings, quarantine, client_refs)])[0]

    def load_exports(self, loads: list[ExportLoad]) -> list[LoadCounts]:
        """Load several exports as if one after another in this order, in a few statements (inside
        ``transaction()``): each keeps its own ledger row and counts, a later file's value of a rating replaces
        an earlier one's, and every replaced version goes to rating_history, as file-by-file loads leave them."""
        if not loads:
            return []
        now, con = _now(), self.con
        ratings = pl.concat(
            [load.ratings.with_columns(pl.lit(i, pl.Int32).alias("_file")) for i, load in enumerate(loads)],
            how="diagonal_relaxed",
        )
        if self._therapists is not None:  # new pairs kept too (a rollback forgets them): no scan of every rating
            pairs = ratings.select("clinic_id", "therapist_id").unique()
            new = pairs.join(self._therapists, on=["clinic_id", "therapist_id"], how="anti", nulls_equal=True)
            if new.height:
                self._therapists = pl.concat([self._therapists, new], how="vertical_relaxed")
        key, on_stored = ", ".join(RATING_KEY), " AND ".join(f"r.{k} = c.{k}" for k in RATING_KEY)
        con.register("incoming_ratings", ratings.to_arrow())
        # a rating's first appearance in the batch is compared with the warehouse, a later one with the file
        # before it; ``before`` is the last file before this one that changed the rating (its replaced version)
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE staged AS
            WITH chained AS (
                SELECT s.*, lag(s.items) OVER w AS prev_items, lag(s.total) OVER w AS prev_total,
                       row_number() OVER w AS nth
                FROM incoming_ratings s WINDOW w AS (PARTITION BY {key} ORDER BY _file)
            ), judged AS (
                SELECT c.* EXCLUDE (prev_items, prev_total, nth), r.loaded_at AS stored_at,
                       CASE WHEN c.nth = 1 AND r.clinic_id IS NULL THEN 'new'
                            WHEN c.nth = 1 AND r.items IS NOT DISTINCT FROM c.items AND r.total = c.total
                                THEN 'unchanged'
                            WHEN c.nth > 1 AND c.prev_items IS NOT DISTINCT FROM c.items AND c.prev_total = c.total
                                THEN 'unchanged'
                            ELSE 'updated' END AS change
                FROM chained c LEFT JOIN ratings r ON {on_stored}
            )
            SELECT *, max(CASE WHEN change <> 'unchanged' THEN _file END) OVER (
                       PARTITION BY {key} ORDER BY _file ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
            FROM judged"""
        )
        counted: dict[tuple[str, str], int] = {
            (export_id, change): n
            for export_id, change, n in con.execute(
                "SELECT export_id, change, count(*) FROM staged GROUP BY ALL"
            ).fetchall()
        }
        if self._counts is not None:
            added = con.execute("SELECT instrument, count(*) FROM staged WHERE change = 'new' GROUP BY 1").fetchall()
            for code, n in added:
                self._counts[code] = self._counts.get(code, 0) + n
        if any(change == "updated" for _, change in counted):  # most batches of a night update few ratings
            self._replace_updated(now)
        con.execute(
            f"""INSERT INTO ratings BY NAME
            SELECT dyad_id, {key}, items, total, export_id, source_line,
                   ?::TIMESTAMPTZ AS loaded_at, ?::TIMESTAMPTZ AS updated_at
            FROM staged WHERE change <> 'unchanged' AND stored_at IS NULL
            QUALIFY _file = max(_file) OVER (PARTITION BY {key})""",
            [now, now],
        )
        quarantine = [load.quarantine for load in loads if load.quarantine.height]
        if quarantine:
            con.register("incoming_quarantine", pl.concat(quarantine, how="diagonal_relaxed").to_arrow())
            con.execute(
                """INSERT INTO quarantine BY NAME
                SELECT *, ?::TIMESTAMPTZ AS quarantined_at FROM incoming_quarantine""",
                [now],
            )
        refs = [
            load.client_refs.with_columns(pl.lit(i, pl.Int32).alias("_file"))
            for i, load in enumerate(loads)
            if load.client_refs.height
        ]
        if refs:
            con.register("incoming_refs", pl.concat(refs, how="diagonal_relaxed").to_arrow())
            # a client's reference is kept from the first file that brought it
            con.execute(
                """INSERT INTO client_refs BY NAME
                SELECT DISTINCT clinic_id, client_id, client_ref, first_export_id FROM (
                    SELECT * FROM incoming_refs i ANTI JOIN client_refs c
                      ON c.clinic_id = i.clinic_id AND c.client_id = i.client_id
                    QUALIFY _file = min(_file) OVER (PARTITION BY clinic_id, client_id))"""
            )
        touched: dict[str, list[str]] = {}
        for export_id, dyad_id in con.execute(
            "SELECT DISTINCT export_id, dyad_id FROM staged WHERE change <> 'unchanged' ORDER BY 2"
        ).fetchall():
            touched.setdefault(export_id, []).append(dyad_id)
        results = [
            LoadCounts(
                new=counted.get((load.ledger.export_id, "new"), 0),
                updated=counted.get((load.ledger.export_id, "updated"), 0),
                unchanged=counted.get((load.ledger.export_id, "unchanged"), 0),
                quarantined=load.quarantine.height,
                touched_dyads=tuple(touched.get(load.ledger.export_id, ())),
            )
            for load in loads
        ]
        self._write_ledger([(load.ledger, counts) for load, counts in zip(loads, results, strict=True)])
        for name in ("incoming_ratings", "incoming_quarantine", "incoming_refs"):
            con.unregister(name)
        return results

    def _replace_updated(self, now: datetime) -> None:
        """History rows for the staged updates (the version each replaced), then the ratings set to each key's
        last version in the batch."""
        key = ", ".join(RATING_KEY)
        on, stored = (" AND ".join(f"{t}.{k} = s.{k}" for k in RATING_KEY) for t in ("b", "r"))
        self.con.execute(
            f"""INSERT INTO rating_history BY NAME
            SELECT r.*, s.export_id AS replaced_by_export, ?::TIMESTAMPTZ AS replaced_at
            FROM staged s JOIN ratings r ON {stored} WHERE s.change = 'updated' AND s.before IS NULL
            UNION ALL BY NAME
            SELECT b.dyad_id, {", ".join(f"b.{k}" for k in RATING_KEY)}, b.items, b.total, b.export_id,
                   b.source_line, coalesce(b.stored_at, ?::TIMESTAMPTZ) AS loaded_at, ?::TIMESTAMPTZ AS updated_at,
                   s.export_id AS replaced_by_export, ?::TIMESTAMPTZ AS replaced_at
            FROM staged s JOIN staged b ON {on} AND b._file = s.before WHERE s.change = 'updated'""",
            [now, now, now, now],
        )
        self.con.execute(
            f"""UPDATE ratings r SET items = s.items, total = s.total, export_id = s.export_id,
                   source_line = s.source_line, updated_at = ?
            FROM (SELECT * FROM staged WHERE change <> 'unchanged' AND stored_at IS NOT NULL
                  QUALIFY _file = max(_file) OVER (PARTITION BY {key})) s
            WHERE {stored}""",
            [now],
        )
