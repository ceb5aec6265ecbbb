"""Read-only snapshots for readers (network and per clinic), published atomically and checksummed."""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from alliance.clinics import clinic_batches
from alliance.errors import StorageError
from alliance.permissions import settle_snapshot
from alliance.readers import sha256_of
from alliance.storage.schema import CURRENT_FLAG, CURRENT_FLAG_ID, VIEWS_FILE, schema_digest
from alliance.storage.session import _disk_full, _now, _quote
from alliance.storage.snapshot_tables import CHANGED, RATED_TABLES, SnapshotTables

log = logging.getLogger("alliance.storage")

SNAPSHOT_VERSION = "v1.5.0"  # readable by DuckDB 1.5 tools (the PyPI duckdb-cli, BI drivers)
# Tables copied into snapshots; client_refs only into a clinic's own. Network snapshots drop review notes
# (free text a supervisor typed) and carry pseudonyms only.
SNAPSHOT_TABLES = (
    "exports", "ratings", "rating_history", "quarantine", "dyad_sessions", "flags", "dyads", "reviews",
    "cases", "case_reviews", "calibrations", "expected_trajectories", "alerts", "meta", "flag_renames",
)  # fmt: skip

# What the network snapshot leaves out of a table: review notes (free text a supervisor typed) and the raw
# values of quarantined rows (a name typed into a score cell); rules, reasons and lines stay.
NETWORK_REDACTED = {
    "reviews": "* EXCLUDE (note), NULL::VARCHAR AS note",
    "case_reviews": "* EXCLUDE (note), NULL::VARCHAR AS note",
    "quarantine": '* EXCLUDE ("values"), NULL::JSON AS "values"',
}
# when a run last changed a clinic's rows: a run killed between its commit and its publish is caught up by the next
CHANGED_AT = (
    ("exports", "received_at"), ("ratings", "updated_at"), ("quarantine", "quarantined_at"),
    ("flags", "updated_at"), ("cases", "updated_at"),
)  # fmt: skip
# alerts are recorded after the run that sent them published (the nightly's): only their own table waits on them
SENT_AT = ("alerts", "attempted_at")
CLINIC_BATCH = 100  # clinics whose rows are staged together: one scan of each table per batch, not per clinic
# and at most about this many sessions' rows staged at once (a larger clinic alone): a full-scale backfill's 100
# clinics of 68,619 sessions each published in 115 s staged together, 58 s in batches of 10 or 20, 76 s of 50
STAGED_SESSIONS = 1_000_000
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # this process's
# snapshot files written at once, one connection each: two a core, since a file's commit waits on the disk
# (the full-scale night's clinic snapshots, 2 cores: 54–55 ms a clinic with two writers, 50 with four)
SNAPSHOT_WRITERS = max(1, min(4, 2 * CORES))
STAGING = "snapshot_staging"  # the in-memory database holding a clinic batch's rows while its files are written


class SnapshotPublisher(SnapshotTables):
    """Publishing the snapshots, checksummed and swapped in atomically."""

    def publish(
        self, folder: Path, clinic_ids: list[str] | None, fresh: bool = False, whole_network: bool = False
    ) -> list[Path]:
        """Write read-only snapshots (network, and these clinics' or all) and swap them in atomically.

        Each is brought up to date from a copy of the published file, or with ``fresh`` written anew, so that no
        byte of the old file survives in free blocks (after a pseudonym key rotation or a restore). Up to
        ``SNAPSHOT_WRITERS`` files are written at once, each on its own connection.

        With named clinics, the network snapshot's clinic tables are compared only on those clinics' rows and
        those of clinics a run changed after it was last recorded (a run killed before its publish; alerts sent
        after it): a file's publish then costs its clinic, not the network's history. ``whole_network`` compares
        every clinic's rows, which also catches a change no such column dates (the nightly asks for it).

        With named clinics too, a snapshot whose dyad tables are large (``BY_DYAD_ROWS``) gets in them only the
        rows of the dyads changed since it was published (``DYAD_TABLES``), unless a change no column dates
        came after (``UNDATED_CHANGE``) or the file is newer than its record (a restored warehouse)."""
        if self.in_transaction:
            # the files are written on other connections, which see only what is committed
            raise StorageError("snapshots are published after a commit, never inside a transaction")
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(".*.partial*"):  # a run killed mid-publish (or out of space) left these
            leftover.unlink(missing_ok=True)
        columns = self._columns()
        # each clinic once (one named twice would be written twice at once, into one partial file), in order: a
        # batch of neighbouring ids is staged from few row groups
        clinics = sorted(set(clinic_ids)) if clinic_ids is not None else [
            row[0] for row in self.con.execute("SELECT DISTINCT clinic_id FROM exports ORDER BY 1").fetchall()
        ]  # fmt: skip
        published: list[Path] = []
        # a publish of named clinics replaces the dyad tables' rows of the dyads changed since each one's publish
        targets = ["network.duckdb", *(f"clinic-{cid}.duckdb" for cid in clinics)]
        baselines = self._baselines(targets) if clinic_ids is not None and not fresh else {}
        with self._writers() as write, self._changed_dyads(baselines):
            scope = None if clinic_ids is None or whole_network else self._network_scope(clinics, columns)
            network = baselines.get("network.duckdb")
            pending = [write(folder / "network.duckdb", None, columns, {}, fresh, scope, network)]
            likely = self._likely_by_dyad(clinics, baselines)
            for batch in self._batches(clinics, likely):
                rated_only = {cid: likely[cid] for cid in batch if cid in likely}
                with self._staged(batch, columns, rated_only) as source:
                    pending += [
                        write(folder / f"clinic-{cid}.duckdb", cid, columns, source, fresh, None,
                              baselines.get(f"clinic-{cid}.duckdb"), cid in rated_only)
                        for cid in batch
                    ]  # fmt: skip
                    published += _finished(pending)  # the staged rows stay until every writer is done with them
                    pending = []
            published += _finished(pending)
        return published

    @contextlib.contextmanager
    def _writers(self) -> Iterator[Callable[..., Future[Path]]]:
        """A function that writes one snapshot on a pool of connections to this warehouse, and returns its future.

        DuckDB runs each statement without Python's lock, so files written side by side use every core. Each
        connection attaches its file under its own name (attached names are shared by the connections)."""
        previous = self.con.execute("SELECT current_setting('checkpoint_threshold')").fetchall()[0][0]
        idle: queue.SimpleQueue[SnapshotPublisher] = queue.SimpleQueue()
        writers = [SnapshotPublisher(self.con.cursor(), self.snapshot_groups) for _ in range(SNAPSHOT_WRITERS)]
        for n, writer in enumerate(writers):
            writer.alias = f"snap_{n}"
            idle.put(writer)

        def write(*args: Any) -> Path:
            writer = idle.get()
            try:
                return writer._snapshot(*args)
            finally:
                idle.put(writer)

        # each snapshot's transaction committed straight into its file: no WAL to write first and replay at DETACH
        # (the setting is the process's: each file's recording checkpoints the warehouse too, about 3 ms)
        self.con.execute("SET checkpoint_threshold = '0b'")
        pool = ThreadPoolExecutor(SNAPSHOT_WRITERS, thread_name_prefix="alliance-snapshot")
        try:
            yield lambda *args: pool.submit(write, *args)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # the writes not yet started are dropped
            raise
        finally:
            pool.shutdown(wait=True)
            for writer in writers:
                writer.con.close()
            with contextlib.suppress(duckdb.Error):  # never in place of the error that brought us here
                self.con.execute(f"SET checkpoint_threshold = '{previous}'")

    def _network_scope(self, clinics: list[str], columns: dict[str, list[str]]) -> dict[str, list[str]]:
        """Each clinic table's clinics to compare: the named ones, and those a run changed after the network
        snapshot was last recorded (by ``CHANGED_AT``; the alerts table also by ``SENT_AT``)."""
        since = "(SELECT coalesce(max(published_at), '-infinity') FROM snapshots WHERE path = 'network.duckdb')"

        def changed(table: str, column: str) -> set[str]:
            query = f"SELECT DISTINCT clinic_id FROM {table} WHERE {column} >= {since}"
            return {row[0] for row in self.con.execute(query).fetchall()}

        loaded = set(clinics).union(*(changed(table, column) for table, column in CHANGED_AT))
        scope = {table: sorted(loaded) for table, names in columns.items() if "clinic_id" in names}
        scope[SENT_AT[0]] = sorted(loaded | changed(*SENT_AT))
        return scope

    def _columns(self) -> dict[str, list[str]]:
        rows = self.con.execute(
            "SELECT table_name, column_name FROM duckdb_columns() "
            "WHERE database_name = current_database() AND schema_name = 'main' ORDER BY column_index"
        ).fetchall()
        columns: dict[str, list[str]] = {}
        for table, column in rows:
            columns.setdefault(table, []).append(column)
        return columns

    def _batches(self, clinic_ids: list[str], rated_only: dict[str, datetime]) -> list[list[str]]:
        """The clinics in order, in batches of at most ``CLINIC_BATCH`` whose staged rows come to at most about
        ``STAGED_SESSIONS`` sessions (a larger clinic alone), as the dyads summary counts them: a clinic in
        ``rated_only`` stages its recently rated dyads' sessions alone."""
        params: dict[str, Any] = {"ids": clinic_ids}
        staged = "true"
        if rated_only:
            recent = f"SELECT dyad_id FROM {CHANGED}.dyads WHERE rated_at >= $since"
            staged = f"NOT list_contains($partial, clinic_id) OR dyad_id IN ({recent})"
            params |= {"partial": sorted(rated_only), "since": min(rated_only.values())}
        sizes = self.con.execute(
            f"SELECT clinic_id, coalesce(sum(sessions) FILTER (WHERE {staged}), 0)::BIGINT FROM dyads "
            "WHERE list_contains($ids, clinic_id) GROUP BY clinic_id",
            params,
        ).fetchall()
        return clinic_batches(clinic_ids, dict(sizes), CLINIC_BATCH, STAGED_SESSIONS)

    @contextlib.contextmanager
    def _staged(
        self, clinic_ids: list[str], columns: dict[str, list[str]], rated_only: dict[str, datetime]
    ) -> Iterator[dict[str, str]]:
        """These clinics' rows of each clinic table, sorted by clinic into an in-memory database every writer
        connection sees, so that each clinic's snapshot reads its own few row groups instead of scanning the
        network's tables again. Of the clinics in ``rated_only`` (each with its snapshot's baseline), the rated
        tables hold only the rows of dyads rated since the earliest baseline: all that a publish by dyad reads."""
        if len(clinic_ids) < 2:
            yield {}
            return
        scope = self._scope("staged_clinics", clinic_ids)
        staged = {t: f"{STAGING}.{t}" for t in (*SNAPSHOT_TABLES, "client_refs") if "clinic_id" in columns[t]}
        # the bounds let a scan skip the row groups of other clinics, which the join with the scope does not:
        # a batch of 100 clinics of the full-scale night staged in 1.0 s instead of 1.4 s
        bounds = {"first": min(clinic_ids), "last": max(clinic_ids)}
        rated = {"partial": sorted(rated_only), "since": min(rated_only.values(), default=None)}
        try:
            self.con.execute(f"DETACH DATABASE IF EXISTS {STAGING}")  # left by a publish whose DETACH failed
            self.con.execute(f"ATTACH ':memory:' AS {STAGING}")
            for table, copy in staged.items():
                # history 0.1's 2M home: its 2.9M ratings and scored sessions were 2.1 s of a 4.0 s staging
                recent = (
                    f"AND (NOT list_contains($partial, clinic_id) OR dyad_id IN "
                    f"(SELECT dyad_id FROM {CHANGED}.dyads WHERE rated_at >= $since))"
                    if rated_only and table in RATED_TABLES else ""
                )  # fmt: skip
                self.con.execute(
                    f"CREATE TABLE {copy} AS SELECT * FROM {table} WHERE clinic_id BETWEEN $first AND $last "
                    f"AND clinic_id IN (SELECT id FROM {scope}) {recent} ORDER BY clinic_id",
                    {**bounds, **rated} if recent else bounds,
                )
            yield staged
        finally:
            with contextlib.suppress(duckdb.Error):
                self.con.execute(f"DETACH DATABASE IF EXISTS {STAGING}")
            self.con.unregister(scope)

    def _contents(self, table: str, clinic_id: str | None, columns: list[str], source: dict[str, str]) -> str:
        """The SELECT that fills a snapshot's table: the network's redacted, a clinic's its own rows."""
        if clinic_id is None:
            return f"SELECT {NETWORK_REDACTED.get(table, '*')} FROM {table}"
        flags, mine = source.get("flags", "flags"), "clinic_id = $clinic"
        if "clinic_id" in columns:
            return f"SELECT * FROM {source.get(table, table)} WHERE {mine}"
        if table == "reviews":
            return f"""SELECT * FROM reviews WHERE flag_id IN (SELECT r.flag_id FROM reviews r {CURRENT_FLAG}
                JOIN {flags} f ON f.flag_id = {CURRENT_FLAG_ID} WHERE f.{mine})"""
        if table == "flag_renames":
            return f"SELECT * FROM flag_renames WHERE new_flag_id IN (SELECT flag_id FROM {flags} WHERE {mine})"
        return f"SELECT * FROM {table}"

    def _snapshot(
        self,
        target: Path,
        clinic_id: str | None,
        columns: dict[str, list[str]],
        source: dict[str, str] | None = None,
        fresh: bool = False,
        scope: dict[str, list[str]] | None = None,
        baseline: datetime | None = None,
        rated_only: bool = False,
    ) -> Path:
        partial = target.with_name(f".{target.name}.partial")
        copy = target.exists() and not fresh
        source = source or {}
        try:
            self._write(partial, target if copy else None, clinic_id, columns, source, scope, baseline, rated_only)
        except Exception as exc:
            if not copy or isinstance(exc, OSError) or _disk_full(exc):
                raise
            # a copy that attaches but cannot be brought up to date (a damaged block, an object of another
            # version in the way) is written anew
            log.warning("%s: the published snapshot could not be updated (%s); writing it anew", target.name,
                        type(exc).__name__)  # fmt: skip
            self._write(partial, None, clinic_id, columns, source, rated_only=rated_only)
        try:
            settle_snapshot(partial, self.snapshot_groups.get(clinic_id) if clinic_id else None)
            digest = sha256_of(partial)
            os.replace(partial, target)  # readers holding the old file keep it; new readers get this one
        except BaseException:
            _remove(partial)
            raise
        now = _now()
        with self.transaction():  # recorded as soon as it is in place, by the connection that wrote it
            self.con.execute("DELETE FROM snapshots WHERE path = ?", [target.name])
            self.con.execute("INSERT INTO snapshots VALUES (?, ?, ?, ?)", [target.name, clinic_id, digest, now])
            self.audit("alliance", "publish_snapshot", target.name, digest[:16], now)
        return target

    def _write(
        self, partial: Path, copy_of: Path | None, clinic_id: str | None, columns: dict[str, list[str]],
        source: dict[str, str], scope: dict[str, list[str]] | None = None,
        baseline: datetime | None = None, rated_only: bool = False,
    ) -> None:  # fmt: skip
        """Write the snapshot file at ``partial``: from a copy of the published one when given (only what
        changed is written, on a clinic table only in its ``scope`` clinics' rows when given), else a new file
        in the snapshot storage version. With a ``baseline`` (when the copy was published) the dyad tables get
        only the rows of the dyads changed since, if the file is no newer. ``rated_only``: the rated tables of
        ``source`` hold only recently rated dyads' rows, read only to replace dyads. On failure nothing is left."""
        _remove(partial)
        snap = self.alias
        tables = [*SNAPSHOT_TABLES, *(["client_refs"] if clinic_id is not None else [])]
        home = str(self.con.execute("SELECT current_database()").fetchall()[0][0])
        quoted = str(partial).replace("'", "''")
        try:
            if copy_of is not None:
                shutil.copyfile(copy_of, partial)
                partial.chmod(0o600)
                self.con.execute(f"ATTACH '{quoted}' AS {snap}")
            else:
                self.con.execute(f"ATTACH '{quoted}' AS {snap} (STORAGE_VERSION '{SNAPSHOT_VERSION}')")
            held = self._held() if copy_of is not None else {}
            current = bool(held) and self._views_current()  # read outside the transaction: a miss aborts none
            dyads = self._contents("dyads", clinic_id, columns["dyads"], source)
            by_dyad = copy_of is not None and self._by_dyad(copy_of, baseline, held, dyads, clinic_id)
            with self.transaction():
                for stale in set(held) - set(tables):
                    self.con.execute(f"DROP TABLE {snap}.{stale}")
                for table in tables:
                    select = self._contents(table, clinic_id, columns[table], source)
                    # a rated table staged with recently rated dyads alone: all its rows are in the warehouse's
                    partly = rated_only and table in RATED_TABLES
                    whole = self._contents(table, clinic_id, columns[table], {}) if partly else None
                    params = {"clinic": clinic_id} if "$clinic" in select else None
                    within = None if scope is None else scope.get(table)
                    replace = by_dyad and self._replaces_by_dyad(table, held)
                    self._fill(table, select, params, held.get(table), within, by_dyad=replace, whole=whole)
                if not current:
                    self._views(home)
            self.con.execute(f"DETACH {snap}")
        except BaseException:
            with contextlib.suppress(duckdb.Error):  # a failed statement may have left the connection on snap
                self.con.execute(f"USE {_quote(home)}")
            with contextlib.suppress(duckdb.Error):
                self.con.execute(f"DETACH DATABASE IF EXISTS {snap}")
            _remove(partial)  # a half-written snapshot must not eat the space a re-run needs
            raise

    def _views(self, home: str) -> None:
        """The supervisor views, bound to the snapshot's own tables; views of another version dropped first."""
        retired = self.con.execute(
            "SELECT view_name FROM duckdb_views() WHERE database_name = $snap AND NOT internal", {"snap": self.alias}
        ).fetchall()
        for (name,) in retired:
            self.con.execute(f"DROP VIEW {self.alias}.{_quote(name)}")
        self.con.execute(f"USE {self.alias}")
        try:
            self.con.execute(VIEWS_FILE.read_text(encoding="utf-8"))
        finally:
            self.con.execute(f"USE {_quote(home)}")

    def _views_current(self) -> bool:
        """True when the copied snapshot was published by this version: its views are this version's views."""
        try:
            found = self.con.execute(f"SELECT value FROM {self.alias}.meta WHERE key = 'schema_digest'").fetchall()
        except duckdb.Error:  # no meta table, or one of another shape
            return False
        return found == [(schema_digest(),)]


def _finished(futures: list[Future[Path]]) -> list[Path]:
    """The written snapshots, in order. After a failure (or an interrupt) the writes not yet started are dropped
    and those under way finish (each records itself) before the first failure is raised: the staged rows they
    read stay until then."""
    try:
        wait(futures, return_when=FIRST_EXCEPTION)
    except BaseException:
        _settle(futures)
        raise
    failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
    if failed:
        _settle(futures)
        raise failed[0].exception()  # type: ignore[misc]
    return [f.result() for f in futures]


def _settle(futures: list[Future[Path]]) -> None:
    for future in futures:
        future.cancel()
    wait(futures)


def _remove(partial: Path) -> None:
    for leftover in (partial, partial.with_name(partial.name + ".wal")):
        leftover.unlink(missing_ok=True)
