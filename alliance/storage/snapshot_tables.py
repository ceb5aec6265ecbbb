"""How a copied snapshot's tables are brought up to date: compared row by row, or the changed dyads' rows
replaced."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from alliance.storage.schema import UNDATED_CHANGE
from alliance.storage.session import Session, _quote

# a table whose rows changed beyond this share is written whole: cheaper than deleting and inserting them
REWRITE_SHARE = 0.5
# smaller tables are written whole: DuckDB stores rows in groups of 122,880 and rewrites a group it changes,
# so comparing pays only for a table of several groups (the network's ratings, not a clinic's)
DIFF_ROWS = 250_000
# a table compared on a few clinics' rows pays for those rows alone, but below one row group a rewrite is cheaper
SCOPED_DIFF_ROWS = 122_880
# Tables whose rows each belong to one dyad: a snapshot brought up to date from its published copy replaces only
# the rows of dyads that changed since it was published. A change shows by a column dating it, or in the dyads
# summary, which is compared whole (a queue's risk moved, ids renamed by a key rotation); that comparison finds
# every summary row that differs, so the summary itself gets those dyads' rows too.
DYAD_TABLES = ("ratings", "rating_history", "dyad_sessions", "flags", "dyads")
# of those, the tables whose rows change only with the dyad's ratings (its scored sessions follow them): a dyad
# whose flags alone changed (silence, as its clinic's latest session moves; a review) keeps its rows there
RATED_TABLES = ("ratings", "rating_history", "dyad_sessions")
# below this many rows in every dyad table a snapshot's tables are written whole: finding the changed dyads costs
# more. A night's 100 clinic snapshots, history 0.1's homes in turns: clinics of about 1,400 ratings 4.2–4.3 s by
# dyad, 3.7–3.9 s whole; of about 10,000 (the full-scale night's clinics) 4.9–5.5 s by dyad, 5.6–6.1 s with
# 10,000 as the bound (those below it whole)
BY_DYAD_ROWS = 5_000
# even then a dyad table below this many rows is rewritten whole, one statement instead of a delete and an insert
# (history 0.1's 2M home, a clinic's tables summed over its 100 clinics: a 1,342-row dyads summary 0.6 s whole
# against 1.4 s by dyad, a 15-row rating history 0.3 against 1.0; 9,607 flags 3.1 whole against 2.3 by dyad)
BY_DYAD_TABLE_ROWS = 5_000
# the columns dating a change to a dyad's ratings, and to its flags
RATED_AT = (("ratings", "updated_at"), ("rating_history", "replaced_at"))
FLAGGED_AT = ("flags", "updated_at")
CHANGED = "snapshot_changed_dyads"  # the in-memory database holding the dyads changed since the oldest snapshot
DYADS_TO_REPLACE = "snapshot_dyads"  # a writer connection's temporary table: its snapshot's dyads to replace


class SnapshotTables(Session):
    """Filling the tables of the snapshot attached under ``alias`` from the warehouse."""

    alias = "snap"  # the name this connection attaches a snapshot file under

    def _baselines(self, targets: list[str]) -> dict[str, datetime]:
        """When each of these snapshots was published, where only dated changes can have happened since: none
        published before the last change no column dates."""
        undated = self.con.execute("SELECT max(value) FROM meta WHERE key = ?", [UNDATED_CHANGE]).fetchall()[0][0]
        rows = self.con.execute(
            "SELECT path, published_at FROM snapshots WHERE list_contains($targets, path) "
            "AND published_at > coalesce($undated::TIMESTAMPTZ, '-infinity')",
            {"targets": targets, "undated": undated},
        ).fetchall()
        return {str(path): at for path, at in rows}

    @contextlib.contextmanager
    def _changed_dyads(self, baselines: dict[str, datetime]) -> Iterator[None]:
        """The dyads whose ratings or flags a dated change touched since the oldest of these baselines, with when
        each last did, in an in-memory database every writer connection sees."""
        if not baselines:
            yield
            return
        since = {"since": min(baselines.values())}
        dated = " UNION ALL ".join(
            [
                *(f"SELECT dyad_id, clinic_id, {column} AS rated_at, NULL::TIMESTAMPTZ AS flagged_at FROM {table} "
                  f"WHERE {column} >= $since" for table, column in RATED_AT),
                f"SELECT dyad_id, clinic_id, NULL, {FLAGGED_AT[1]} FROM {FLAGGED_AT[0]} "
                f"WHERE {FLAGGED_AT[1]} >= $since",
            ]
        )  # fmt: skip
        try:
            self.con.execute(f"DETACH DATABASE IF EXISTS {CHANGED}")
            self.con.execute(f"ATTACH ':memory:' AS {CHANGED}")
            self.con.execute(
                f"CREATE TABLE {CHANGED}.dyads AS SELECT dyad_id, clinic_id, max(rated_at) AS rated_at, "
                f"max(flagged_at) AS flagged_at FROM ({dated}) GROUP BY dyad_id, clinic_id",
                since,
            )
            yield
        finally:
            with contextlib.suppress(duckdb.Error):
                self.con.execute(f"DETACH DATABASE IF EXISTS {CHANGED}")

    def _by_dyad(
        self, copy: Path, published_at: datetime | None, held: dict[str, int], dyads: str, clinic_id: str | None
    ) -> bool:
        """Whether the copied snapshot's dyad tables get only the changed dyads' rows (gathered then in
        ``DYADS_TO_REPLACE``): when it was published after the last undated change (``published_at`` given),
        the file is no newer than that (not a restored warehouse's, not edited), and its dyad tables are large."""
        return (
            published_at is not None
            and copy.stat().st_mtime <= published_at.timestamp()
            and max(held.get(table, 0) for table in DYAD_TABLES) >= BY_DYAD_ROWS
            and self._dyads_to_replace(dyads, clinic_id, held, published_at)
        )

    def _likely_by_dyad(self, clinic_ids: list[str], baselines: dict[str, datetime]) -> dict[str, datetime]:
        """Of these clinics, those whose snapshots will likely be brought up to date by dyad (published since
        the last undated change, with ``BY_DYAD_ROWS`` ratings or more), with when each was published. A wrong
        guess costs time alone: ``_write`` reads what the staging left out from the warehouse."""
        published = {
            cid: baselines[f"clinic-{cid}.duckdb"] for cid in clinic_ids if f"clinic-{cid}.duckdb" in baselines
        }
        if not published:
            return {}
        large = self.con.execute(
            "SELECT clinic_id FROM ratings WHERE list_contains($ids, clinic_id) GROUP BY 1 HAVING count(*) >= $rows",
            {"ids": sorted(published), "rows": BY_DYAD_ROWS},
        ).fetchall()
        return {cid: published[cid] for (cid,) in large}

    @staticmethod
    def _replaces_by_dyad(table: str, held: dict[str, int]) -> bool:
        """Whether this dyad table gets the changed dyads' rows, when the snapshot's do: not a small one."""
        return table in DYAD_TABLES and held.get(table, 0) >= BY_DYAD_TABLE_ROWS

    def _dyads_to_replace(self, select: str, clinic_id: str | None, held: dict[str, int], since: datetime) -> bool:
        """Gather in ``DYADS_TO_REPLACE`` the dyads of this snapshot whose rows may differ from the copy's: those
        a dated change touched ``since`` (``rated`` when it touched their ratings), and those whose summary row
        (``select``) differs, whole rows compared by dyad (one join: two EXCEPTs took 6.1 ms a 1,325-dyad clinic,
        the join 4.0). False when the copy's dyads summary has other columns (then the dyad tables are filled as
        any other)."""
        params = {"clinic": clinic_id} if "$clinic" in select else {}
        if "dyads" not in held or self._same_columns("dyads", select, params or None) is None:
            return False
        mine = "" if clinic_id is None else "AND clinic_id = $clinic"
        copy = f"{self.alias}.dyads"
        self.con.execute(
            f"""CREATE OR REPLACE TEMP TABLE {DYADS_TO_REPLACE} AS
            SELECT dyad_id, bool_or(rated) AS rated FROM (
                SELECT dyad_id, coalesce(rated_at >= $since, false) AS rated FROM {CHANGED}.dyads
                WHERE (rated_at >= $since OR flagged_at >= $since) {mine}
                UNION ALL SELECT coalesce(want.dyad_id, have.dyad_id), false
                FROM (SELECT dyad_id, _row AS row FROM ({select}) _row) want
                FULL JOIN (SELECT dyad_id, _row AS row FROM {copy} _row) have ON want.dyad_id = have.dyad_id
                WHERE want.row IS DISTINCT FROM have.row
            ) GROUP BY dyad_id""",
            {**params, "since": since},
        )
        return True

    def _held(self) -> dict[str, int]:
        """The copied snapshot's tables and about how many rows each holds."""
        rows = self.con.execute(
            "SELECT table_name, estimated_size FROM duckdb_tables() WHERE database_name = $snap", {"snap": self.alias}
        ).fetchall()
        return {str(name): int(size) for name, size in rows}

    def _fill(
        self,
        table: str,
        select: str,
        params: dict[str, Any] | None,
        held: int | None,
        within: list[str] | None = None,
        by_dyad: bool = False,
        whole: str | None = None,
    ) -> None:
        """Make ``<snapshot>.<table>`` hold exactly the rows of ``select``. A large table of a copied snapshot, with the
        same columns, gets only the rows that differ: rows are compared by a 64-bit hash of the whole row and its
        lists' lengths, counted, so a row that changed is deleted and its new version inserted, and duplicate
        rows keep their number. With ``within`` only those clinics' rows are compared; with ``by_dyad`` the
        rows of the dyads in ``DYADS_TO_REPLACE`` are replaced (in ``RATED_TABLES``, of those whose ratings
        changed), whatever the table's size. Either way the caller knows that no other row changed. ``whole``
        selects every row when ``select`` holds only the changed dyads' rows: read unless dyads are replaced."""
        copy = f"{self.alias}.{table}"
        compare = held is not None and (by_dyad or held >= (DIFF_ROWS if within is None else SCOPED_DIFF_ROWS))
        columns = self._same_columns(table, select, params) if compare else None
        if by_dyad and columns is not None:
            # the changed dyads' rows replaced: cheaper than hashing every row of theirs to find the few that differ
            rated = " WHERE rated" if table in RATED_TABLES else ""
            of_changed = f"_row.dyad_id IN (SELECT dyad_id FROM {DYADS_TO_REPLACE}{rated})"
            self.con.execute(f"DELETE FROM {copy} _row WHERE {of_changed}")
            self.con.execute(f"INSERT INTO {copy} SELECT * FROM ({select}) _row WHERE {of_changed}", params)
            return
        select = whole or select
        if held is not None and columns is not None:
            # DuckDB's hash gives NULL, [] and [NULL] the same value: each list's length goes into it too
            lengths = [f"coalesce(len(_row.{_quote(name)}), -1)" for name, kind in columns if kind.endswith("[]")]
            digest = f"hash({', '.join(['_row', *lengths])})"
            mine, bounds = "", {}
            if within is not None:
                if not within:
                    return  # no clinic's rows changed
                # the bounds let a scan skip other clinics' row groups; the list keeps out those between them
                mine = "AND _row.clinic_id BETWEEN $first AND $last AND list_contains($within, _row.clinic_id)"
                bounds = {"within": within, "first": min(within), "last": max(within)}
            rows = f"_row WHERE true {mine}"
            scoped = {**(params or {}), **bounds} or None
            changed = self.con.execute(
                f"""WITH want AS (SELECT {digest} AS h, count(*) AS n FROM ({select}) {rows} GROUP BY h),
                         have AS (SELECT {digest} AS h, count(*) AS n FROM {copy} {rows} GROUP BY h)
                    SELECT coalesce(want.h, have.h), coalesce(want.n, 0), coalesce(have.n, 0)
                    FROM want FULL JOIN have ON want.h = have.h WHERE want.n IS DISTINCT FROM have.n""",
                scoped,
            ).fetchall()
            if sum(added + gone for _, added, gone in changed) <= REWRITE_SHARE * held:
                if changed:
                    hashes = pl.DataFrame({"h": [h for h, _, _ in changed]}, schema={"h": pl.UInt64})
                    self.con.register("changed_rows", hashes.to_arrow())
                    try:
                        self.con.execute(
                            f"DELETE FROM {copy} WHERE rowid IN (SELECT rowid FROM {copy} _row "
                            f"WHERE {digest} IN (SELECT h FROM changed_rows) {mine})",
                            bounds or None,
                        )
                        self.con.execute(
                            f"INSERT INTO {copy} SELECT * FROM ({select}) _row "
                            f"WHERE {digest} IN (SELECT h FROM changed_rows) {mine}",
                            scoped,
                        )
                    finally:
                        self.con.unregister("changed_rows")
                return
        self.con.execute(f"CREATE OR REPLACE TABLE {copy} AS {select}", params)

    def _same_columns(self, table: str, select: str, params: dict[str, Any] | None) -> list[tuple[str, str]] | None:
        """The copied table's (name, type) columns when ``select`` gives the same ones, else None."""
        want = self.con.execute(f"SELECT * FROM ({select}) LIMIT 0", params).description
        have = self.con.execute(f"SELECT * FROM {self.alias}.{table} LIMIT 0").description
        columns = [(c[0], str(c[1])) for c in have]
        return columns if [(c[0], str(c[1])) for c in want] == columns else None
