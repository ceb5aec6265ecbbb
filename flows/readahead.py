"""A sweep's groups of files read, mapped and validated ahead on another core while this process loads them.

``prevalidate`` is advisory: each file's ingest stays its judge and reads again what changed. So a group a worker
process found ahead is used exactly as one found here would be, and a worker that fails or stops costs only the
time: the group is found here instead.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from alliance.settings import Settings
from expectations import Prevalidated, warm_up
from flows.prevalidation import prevalidate
from flows.workers import CORES, may_start_workers, stop_workers, worker_pool

log = logging.getLogger("alliance.pipeline")

READ_AHEAD = True  # later groups found ahead on worker processes, given a spare core
AHEAD = 3  # groups a sweep holds besides the one it loads (sent to a worker or found, not yet loaded): memory;
# with 2 the worker idled while this process loaded and waited (night 1.0: the sweep 102 s, with 3 71 s)


def groups_of(paths: list[Path], size: int, max_bytes: int | None = None) -> list[list[Path]]:
    """``paths`` in order, in the fewest groups of at most ``size`` files and ``max_bytes`` bytes (a larger file
    alone), of about equal shares: 250 small files make two groups of 125, so that this process and a worker
    each have one; a backfill's 100 exports of 13 MB make groups of a few files, so memory stays bounded."""
    if not paths:
        return []
    sizes = [_bytes(path) for path in paths] if max_bytes else [0] * len(paths)
    weights = [max(1 / size, n / max_bytes if max_bytes else 0.0) for n in sizes]
    total = sum(weights)
    count = max(-(-len(paths) // size), math.ceil(total - 1e-9))
    while count < len(paths):
        split: list[list[int]] = [[] for _ in range(count)]
        before = 0.0
        for i, weight in enumerate(weights):
            # each file goes to the share its middle falls in: equal weights give shares one file apart at most
            split[min(count - 1, int((before + weight / 2) / total * count))].append(i)
            before += weight
        groups = [group for group in split if group]
        if all(
            len(g) <= size and (not max_bytes or len(g) == 1 or sum(sizes[i] for i in g) <= max_bytes) for g in groups
        ):
            return [[paths[i] for i in group] for group in groups]
        count += 1
    return [[path] for path in paths]


def _bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # gone or unreadable: its own ingest says so
        return 0


class _Workers:
    """The process's read-ahead workers, one per spare core, shared by the sweeps running at once (the Prefect
    nightly sweeps its batches in parallel threads): started by the first, stopped when the last leaves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._pool: ProcessPoolExecutor | None = None

    def join(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = worker_pool(max(1, CORES - 1))
            self._users += 1
            return self._pool

    def leave(self, finish: bool) -> None:
        """One sweep done; the last one stops the workers (at once when it ends on an error or an interrupt)."""
        with self._lock:
            self._users -= 1
            pool, last = self._pool, self._users == 0
            if last:
                self._pool = None
        if last and pool is not None:
            stop_workers(pool, finish)


_WORKERS = _Workers()


class ReadAhead:
    """Each group's validation (``for_group``), asked for in order. Worker processes find the groups sent to them
    in order; a group no worker has started yet is found here instead, and while a worker is on the group this
    process needs, this process finds the next group nobody has started."""

    def __init__(self, groups: list[list[Path]], settings: Settings, clinic_id: str | None = None) -> None:
        self.groups, self.settings, self.clinic_id = groups, settings, clinic_id
        self._sent: dict[int, Future[Prevalidated]] = {}
        self._found: dict[int, Prevalidated] = {}
        self._taken = 0  # groups below this were sent or found
        self.from_worker = 0  # groups a worker found
        ahead = READ_AHEAD and len(groups) > 1 and may_start_workers()  # one group needs no read-ahead
        self._pool = _WORKERS.join() if ahead else None
        self._stopped = False  # the workers stopped: the groups not yet sent are found here

    def for_group(self, k: int) -> Prevalidated:
        """Group ``k``'s validation: found here when nobody has started it, else the worker's; while the worker
        is still on it, this process finds the next group nobody has started."""
        if k == self._taken:  # the worker takes the next groups while this one is found here
            self._taken += 1
            self._send()
            self._found[k] = prevalidate(self.groups[k], self.settings, self.clinic_id)
        while k not in self._found:
            future = self._sent.pop(k, None)
            if future is None or future.cancel():  # asked for again, or queued behind other sweeps' groups
                self._found[k] = prevalidate(self.groups[k], self.settings, self.clinic_id)
            elif future.done() or self._taken >= len(self.groups):
                self._found[k] = self._result(k, future)
            elif len(self._sent) + len(self._found) < AHEAD:  # k is under way: the next group is found here
                self._sent[k], ahead = future, self._taken
                self._taken += 1
                self._found[ahead] = prevalidate(self.groups[ahead], self.settings, self.clinic_id)
            else:
                self._found[k] = self._result(k, future)
        self._send()
        return self._found.pop(k)

    def _send(self) -> None:
        """Keep the workers on the next groups, as many as a sweep may hold (``AHEAD``)."""
        pool = self._pool
        while pool is not None and not self._stopped and self._taken < len(self.groups) and self._held() < AHEAD:
            try:
                group = self.groups[self._taken]
                self._sent[self._taken] = pool.submit(prevalidate, group, self.settings, self.clinic_id)
            except RuntimeError:  # BrokenProcessPool: a worker killed
                self._stopped = True
                return
            self._taken += 1

    def _held(self) -> int:
        return len(self._sent) + len(self._found)

    def _result(self, k: int, future: Future[Prevalidated]) -> Prevalidated:
        try:
            found = future.result()
        except Exception as exc:  # the group is found here: the same reads, and the same errors if real
            log.warning("read-ahead of a group of files failed (%s); it is read here", type(exc).__name__)
            return prevalidate(self.groups[k], self.settings, self.clinic_id)
        self.from_worker += 1
        return found

    def close(self, finish: bool = True) -> None:
        for future in self._sent.values():  # groups a worker has not started are dropped
            future.cancel()
        if self._pool is not None:
            _WORKERS.leave(finish)


@contextmanager
def read_ahead(groups: list[list[Path]], settings: Settings, clinic_id: str | None = None) -> Iterator[ReadAhead]:
    """``ReadAhead`` over these groups (of one clinic's files, when named), its worker stopped on leaving.
    GX is imported meanwhile on a thread, while the first group is read and mapped here."""
    warming = warm_up() if groups else None
    try:
        ahead = ReadAhead(groups, settings, clinic_id)
        try:
            yield ahead
        except BaseException:
            ahead.close(finish=False)
            raise
        ahead.close()
    finally:
        if warming is not None:
            warming.join()  # never left importing as the process exits
