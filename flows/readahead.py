"""A sweep's groups of files read, mapped and validated ahead on another core while this process loads them.

``prevalidate`` is advisory: each file's ingest stays its judge and reads again what changed. So a group a worker
process found ahead is used exactly as one found here would be, and a worker that fails or stops costs only the
time: the group is found here instead.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from alliance.settings import Settings
from alliance.storage.snapshots import CORES
from expectations import Prevalidated
from flows.exports import prevalidate

log = logging.getLogger("alliance.pipeline")

READ_AHEAD = CORES > 1  # groups found ahead on a worker process; off with one core
# worker processes reading ahead at once in this process: the Prefect nightly sweeps batches in parallel
# threads, which share the spare cores rather than each starting a worker
_WORKERS = threading.BoundedSemaphore(max(1, CORES - 1))


class ReadAhead:
    """Each group's validation (``for_group``), asked for in order. One worker process finds the earliest group
    nobody has started; while it works on the group this process needs, this process finds the next one."""

    def __init__(self, groups: list[list[Path]], settings: Settings) -> None:
        self.groups, self.settings = groups, settings
        self._sent: dict[int, Future[Prevalidated]] = {}
        self._found: dict[int, Prevalidated] = {}
        self._taken = 0  # groups below this were sent or found
        self.from_worker = 0  # groups the worker found
        # a daemon process (a Dask worker) may not start processes; one group needs no read-ahead
        ahead = READ_AHEAD and len(groups) > 1 and not multiprocessing.current_process().daemon
        self._slot = ahead and _WORKERS.acquire(blocking=False)
        spawn = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(1, mp_context=spawn) if self._slot else None
        self._stopped = False  # the worker stopped: the groups not yet sent are found here

    def for_group(self, k: int) -> Prevalidated:
        """Group ``k``'s validation: found here when nobody has started it, else the worker's; while the worker
        is still on it, this process finds the next group nobody has started."""
        if k == self._taken:  # the worker takes the next groups while this one is found here
            self._taken += 1
            self._send()
            self._found[k] = prevalidate(self.groups[k], self.settings)
        while k not in self._found:
            future = self._sent.pop(k, None)
            if future is None:  # asked for again: found again
                self._found[k] = prevalidate(self.groups[k], self.settings)
            elif future.done() or self._taken >= len(self.groups):
                self._found[k] = self._result(k, future)
            else:
                self._sent[k], ahead = future, self._taken
                self._taken += 1
                self._found[ahead] = prevalidate(self.groups[ahead], self.settings)
        self._send()
        return self._found.pop(k)

    def _send(self) -> None:
        """Keep the worker on one group and the next, so that it never waits for this process."""
        pool = self._pool
        while pool is not None and not self._stopped and self._taken < len(self.groups) and self._waiting() < 2:
            try:
                self._sent[self._taken] = pool.submit(prevalidate, self.groups[self._taken], self.settings)
            except RuntimeError:  # BrokenProcessPool: a worker killed
                self._stopped = True
                return
            self._taken += 1

    def _waiting(self) -> int:
        return sum(not future.done() for future in self._sent.values())

    def _result(self, k: int, future: Future[Prevalidated]) -> Prevalidated:
        try:
            found = future.result()
        except Exception as exc:  # the group is found here: the same reads, and the same errors if real
            log.warning("read-ahead of a group of files failed (%s); it is read here", type(exc).__name__)
            return prevalidate(self.groups[k], self.settings)
        self.from_worker += 1
        return found

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._slot:
            _WORKERS.release()


@contextmanager
def read_ahead(groups: list[list[Path]], settings: Settings) -> Iterator[ReadAhead]:
    """``ReadAhead`` over these groups, its worker stopped on leaving."""
    ahead = ReadAhead(groups, settings)
    try:
        yield ahead
    finally:
        ahead.close()
