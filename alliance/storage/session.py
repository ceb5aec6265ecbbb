"""The writer session's base: its connection, transactions, scoped id tables and the audit trail."""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from alliance.errors import StorageError
from alliance.redaction import plain_text

log = logging.getLogger("alliance.storage")


def _now() -> datetime:
    return datetime.now(UTC)


def _quote(name: str) -> str:
    """An identifier quoted for SQL."""
    return '"' + name.replace('"', '""') + '"'


def is_storage_failure(exc: BaseException) -> bool:
    """True when an error is the warehouse's own (disk full, I/O, a broken connection), not one file's content."""
    return _disk_full(exc) or isinstance(
        exc, StorageError | OSError | duckdb.IOException | duckdb.FatalException | duckdb.InternalException
    )


class Session:
    """The connection every part of the writer shares, with its transactions, id scopes and audit trail."""

    def __init__(self, con: duckdb.DuckDBPyConnection, snapshot_groups: dict[str, str] | None = None) -> None:
        self.con = con
        self.snapshot_groups = snapshot_groups or {}

    def _scope(self, name: str, values: list[str]) -> str:
        """Register ids as a one-column table and return its name, for joins instead of long IN lists."""
        self.con.register(name, pl.DataFrame({"id": values}, schema={"id": pl.String}).to_arrow())
        return name

    def frame(self, sql: str, params: list[Any] | dict[str, Any] | None = None) -> pl.DataFrame:
        return self.con.sql(sql, params=params or None).pl()

    def audit(self, actor: str, action: str, subject: str, detail: str | None, at: datetime | None = None) -> None:
        """Append one line to the audit trail: who did what to what."""
        row = [plain_text(actor), action, plain_text(subject), None if detail is None else plain_text(detail)]
        self.con.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?)", [at or _now(), *row])

    in_transaction = False  # inside ``transaction()``: what it writes is seen by this connection only

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together or not at all."""
        self.con.execute("BEGIN TRANSACTION")
        self.in_transaction = True
        try:
            yield
        except BaseException:
            self.in_transaction = False
            with contextlib.suppress(duckdb.Error):  # a failed commit (disk full) has already rolled back
                self.con.execute("ROLLBACK")
            self.forget()
            raise
        self.in_transaction = False
        try:
            self.con.execute("COMMIT")
        except BaseException:  # a commit that fails has rolled back: what the session keeps may hold it
            self.forget()
            raise

    def commit_so_far(self) -> None:
        """Inside ``transaction()``: commit what is written so far and go on in a new transaction. DuckDB holds an
        open transaction's writes in memory outside its limit (1.6 GB more for 10M rows): a long write that may
        stop halfway, because the warehouse then says its work is still due, commits as it goes."""
        if not self.in_transaction:
            raise StorageError("commit_so_far is for a write inside transaction()")
        self.con.execute("COMMIT")
        self.con.execute("BEGIN TRANSACTION")

    def forget(self) -> None:
        """Drop what the session keeps of its tables in memory: a rollback undid what it may hold."""


def free_mb(folder: Path) -> float:
    """Free space on the filesystem holding ``folder``, in MB."""
    return shutil.disk_usage(folder).free / 1e6


def _disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("no space left", "disk is full", "file too large", "quota exceeded"))
