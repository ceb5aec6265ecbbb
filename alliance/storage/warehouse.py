"""The warehouse file of a home: the one writer (under its lock) and the readers of its snapshots."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
from filelock import FileLock, Timeout

from alliance.errors import StorageError, WarehouseBusy
from alliance.permissions import OWNER_FILE, make_private, private_umask, settle_folders, snapshot_groups
from alliance.settings import Settings
from alliance.storage.checksums import table_checksums
from alliance.storage.lease import current
from alliance.storage.ledger import LedgerTables
from alliance.storage.maintenance import Maintenance
from alliance.storage.reviews import ReviewTables
from alliance.storage.schema import _ensure_schema
from alliance.storage.scoring import ScoringTables
from alliance.storage.session import Session, _disk_full, free_mb, log
from alliance.storage.snapshots import SnapshotPublisher


class Writer(LedgerTables, ScoringTables, ReviewTables, Maintenance, SnapshotPublisher, Session):
    """A read-write session on the warehouse, held under the writer lock."""


class Warehouse:
    """The DuckDB warehouse file of one Alliance Watch home."""

    def __init__(
        self,
        path: Path,
        lock_timeout_s: float = 600.0,
        min_free_mb: float = 500.0,
        snapshot_groups: dict[str, str] | None = None,
        memory: str = "2GB",
    ) -> None:
        self.path = path
        self.lock_timeout_s = lock_timeout_s
        self.min_free_mb = min_free_mb
        self.memory = memory
        self.snapshot_groups = snapshot_groups or {}

    @classmethod
    def of(cls, settings: Settings) -> Warehouse:
        """The warehouse of a home, with its lock wait and free-space warning from settings."""
        groups = snapshot_groups(settings.clinics_file)
        return cls(
            settings.warehouse, settings.lock_timeout_s, settings.min_free_mb, groups, memory=settings.duckdb_memory
        )

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def writer(self) -> Iterator[Writer]:
        """The one writer: a cross-process lock with a bounded wait, then a read-write connection.

        Files it creates (the warehouse, its WAL, snapshots) are owner-only whatever the umask. Within a batch's
        ``writer_lease`` (alliance.storage.lease), consecutive sessions share one connection for a few seconds.
        """
        lease = current(self.path)
        if lease is None:
            with self._session() as writer:
                yield writer
        else:
            yield from lease.use(self._session)

    @contextmanager
    def _session(self) -> Iterator[Writer]:
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

    def prior_export(self, clinic_id: str, sha256: str) -> dict[str, Any] | None:
        """The ledger row ingest would answer 'duplicate' with, read without the writer lock (for dry runs).

        StorageError when a writer holds the working file open.
        """
        if not self.path.exists():
            return None
        con = self._connect(read_only=True)
        try:
            return LedgerTables(con).export_by_sha(clinic_id, sha256)
        finally:
            con.close()

    def _connect_for_writing(self, deadline: float) -> duckdb.DuckDBPyConnection:
        """Open read-write, waiting (until the writer lock's deadline) for a process that holds DuckDB's own lock."""
        while True:
            try:
                # DuckDB's default is 80% of RAM: a night's cache and comparisons alone then reached several GB;
                # set at connect, so that replaying a log after a crash is held to it too
                return duckdb.connect(str(self.path), config={"memory_limit": self.memory})
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
