"""Scoring a large chunk of dyads on every core: the rules are Python, so each share of the dyads is scored in
its own process, and the shares are put back together in order, exactly as one process would score them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import polars as pl

from alliance.clinics import RuleConfig
from flows.workers import CORES, may_start_workers, stop_workers, worker_pool
from transforms.calibration import Calibration
from transforms.expected import ExpectedCurve
from transforms.flags import Scored, score

log = logging.getLogger("alliance.scoring")

SCORE_PROCESSES = CORES  # processes a chunk's dyads are scored in, this one included
# sessions below which one process scores alone: a worker takes 1–2 s to start
PARALLEL_SESSIONS = 50_000
SHARE_SESSIONS = 10_000  # sessions of one share: small enough that the processes finish close together
PARALLEL_DYADS = 4_000  # dyads to score from which the workers start at once, while the first chunk is read


def shares(features: pl.DataFrame, n: int) -> list[pl.DataFrame]:
    """``features`` cut into up to ``n`` shares of about equal sessions, whole dyads each, in the order the
    dyads first appear: concatenated, the shares' findings are the findings of the whole."""
    sizes = features.group_by("dyad_id", maintain_order=True).len()
    share = (sizes["len"].cum_sum() - sizes["len"]) * n // max(1, features.height)
    parts = features.join(sizes.select("dyad_id", share.alias("_share")), on="dyad_id", maintain_order="left")
    return [part.drop("_share") for part in parts.partition_by("_share", maintain_order=True)]


class ScoringPool:
    """Worker processes for scoring, started at the first chunk large enough to share (see ``score_shares``)."""

    def __init__(self, processes: int | None = None) -> None:
        self.processes = (SCORE_PROCESSES if processes is None else processes) if may_start_workers() else 1
        self._pool: ProcessPoolExecutor | None = None
        self.stopped = False  # a worker was killed: the rest is scored in this process

    def start(self, dyads: int) -> None:
        """Start the workers now when ``dyads`` are enough work to share: they start while the first chunk is read."""
        if self.processes > 1 and dyads >= PARALLEL_DYADS:
            self._executor().submit(_ready)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = worker_pool(self.processes - 1)
        return self._pool

    def submit(
        self,
        part: pl.DataFrame,
        configs: dict[str, RuleConfig],
        calibrations: dict[str, Calibration],
        curves: dict[str, ExpectedCurve],
    ) -> Future[Scored] | None:
        """Score ``part`` in a worker; None when the workers stopped (a worker killed, out of memory)."""
        if self.stopped:
            return None
        try:
            return self._executor().submit(score, part, configs, calibrations, curves)
        except BrokenProcessPool:
            self.stop()
            return None

    def stop(self) -> None:
        if not self.stopped:
            log.warning("a scoring process stopped; the rest of the dyads are scored in this one")
        self.stopped = True

    def close(self, finish: bool = True) -> None:
        if self._pool is not None:
            stop_workers(self._pool, finish)


def _ready() -> bool:
    """A worker's first task: importing this module imports the rules."""
    return True


@contextlib.contextmanager
def scoring_pool(processes: int | None = None) -> Iterator[ScoringPool]:
    """Worker processes for ``score_shares`` within this block, stopped on leaving it."""
    pool = ScoringPool(processes)
    try:
        yield pool
    except BaseException:
        pool.close(finish=False)  # an error or an interrupt: the shares under way are not waited for
        raise
    pool.close()


def score_shares(
    pool: ScoringPool,
    features: pl.DataFrame,
    configs: dict[str, RuleConfig],
    calibrations: dict[str, Calibration],
    curves: dict[str, ExpectedCurve],
) -> Scored:
    """``score``, with a chunk of at least ``PARALLEL_SESSIONS`` sessions cut into shares that this process takes
    from the front and the workers from the back, so that a worker still starting takes fewer: the same findings
    in the same order, and the same sessions."""
    if pool.processes < 2 or pool.stopped or features.height < PARALLEL_SESSIONS:
        return score(features, configs, calibrations, curves)
    parts = shares(features, max(pool.processes, features.height // SHARE_SESSIONS))
    results: dict[int, Scored] = {}
    sent: dict[int, Future[Scored] | None] = {}
    front, back = 0, len(parts)  # parts[front:back] are neither scored here nor sent
    while front < back:
        # each worker holds one share and the next, so that it never waits for this process
        while front < back and sum(not f.done() for f in sent.values() if f is not None) < 2 * (pool.processes - 1):
            back -= 1
            sent[back] = pool.submit(parts[back], configs, calibrations, curves)
        if front < back:
            results[front] = score(parts[front], configs, calibrations, curves)
            front += 1
    for i, future in sent.items():
        try:
            if future is None:
                raise BrokenProcessPool
            results[i] = future.result()
        except BrokenProcessPool:  # a worker killed (out of memory): its shares are scored here
            pool.stop()
            results[i] = score(parts[i], configs, calibrations, curves)
    ordered = [results[i] for i in range(len(parts))]
    return Scored(pl.concat([r.findings for r in ordered]), pl.concat([r.sessions for r in ordered]))
