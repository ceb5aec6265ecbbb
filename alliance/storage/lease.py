"""A batch's writer lease: consecutive writer sessions on one thread share one connection and lock, for a while.

Opening the writer costs a lock, a connection and a CHECKPOINT (~30 ms); a night of 5,000 files paid it 5,000
times. Under a lease, each file still commits its own transaction; the session is closed (CHECKPOINT, lock
released) once it has been held ``lease_s``, so a review or a file-arrival run waits seconds, not a night.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

LEASE_S = 5.0  # how long a batch keeps the writer between files before letting others in

_local = threading.local()


class Lease:
    """The open session of one warehouse on one thread, while a batch holds the lease."""

    def __init__(self, lease_s: float) -> None:
        self.lease_s = lease_s
        self._session: AbstractContextManager[Any] | None = None
        self._writer: Any = None
        self._opened = 0.0
        self._depth = 0

    def use(self, open_session: Callable[[], AbstractContextManager[Any]]) -> Iterator[Any]:
        """One writer session of the batch: the open one, or a new one."""
        if self._session is None:
            session = open_session()
            self._writer = session.__enter__()
            self._session, self._opened = session, time.monotonic()
        self._depth += 1
        try:
            yield self._writer
        except BaseException as exc:
            self._depth -= 1
            self.close(exc)  # a session that failed is not reused: its connection may be in any state
            raise
        self._depth -= 1
        if self._depth == 0 and time.monotonic() - self._opened >= self.lease_s:
            self.close()

    def close(self, failed: BaseException | None = None) -> None:
        session, self._session, self._writer = self._session, None, None
        if session is None:
            return
        if failed is None:
            session.__exit__(None, None, None)
        else:
            session.__exit__(type(failed), failed, failed.__traceback__)


def current(path: Path) -> Lease | None:
    """The lease this thread holds on the warehouse at ``path``, if any."""
    leases: dict[Path, Lease] = getattr(_local, "leases", {})
    return leases.get(path.resolve())


@contextlib.contextmanager
def writer_lease(path: Path, lease_s: float = LEASE_S) -> Iterator[None]:
    """Within this block, this thread's writer sessions on ``path`` share one connection for up to ``lease_s``.

    Example: ``with writer_lease(settings.warehouse): for f in files: ingest_file(f, settings)``.
    """
    key = path.resolve()
    leases: dict[Path, Lease] = _local.__dict__.setdefault("leases", {})
    if key in leases:  # already within a batch's lease
        yield
        return
    lease = leases[key] = Lease(lease_s)
    try:
        yield
    finally:
        del leases[key]
        lease.close()
