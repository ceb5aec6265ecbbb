"""Scoring a large chunk of dyads on every core: the per-series rules are Python, so each share of the dyads' series
runs them in its own process while this one runs rules 2 and 3 over every series at once; put back together, the
findings are exactly what one process finds."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import polars as pl

from alliance.clinics import RuleConfig
from flows.workers import CORES, may_start_workers, stop_workers, worker_pool
from transforms.advisory import advisories
from transforms.calibration import Calibration
from transforms.expected import ExpectedCurve
from transforms.findings import Found, Scored, courses, per_dyad, scored
from transforms.rules import Thresholds

log = logging.getLogger("alliance.scoring")

SCORE_PROCESSES = CORES  # processes a chunk's dyads are scored in, this one included
# sessions below which one process scores alone: a worker takes 1–2 s to start
PARALLEL_SESSIONS = 50_000
SHARE_SESSIONS = 10_000  # sessions of one share: small enough that the processes finish close together
PARALLEL_DYADS = 4_000  # dyads to score from which the workers start at once, while the first chunk is read


def shares(grouped: pl.DataFrame, n: int) -> list[pl.DataFrame]:
    """A scoring's series (``Courses.screened``) cut into up to ``n`` shares of about equal sessions, whole dyads
    each, in the order the dyads first appear."""
    sizes = grouped.group_by("dyad_id", maintain_order=True).agg(pl.col("score").list.len().sum().alias("len"))
    share = (sizes["len"].cum_sum() - sizes["len"]) * n // max(1, sizes["len"].sum())
    parts = grouped.join(sizes.select("dyad_id", share.alias("_share")), on="dyad_id", maintain_order="left")
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
        self, part: pl.DataFrame, thresholds: dict[tuple[str, str], Thresholds], calibrations: dict[str, Calibration]
    ) -> Future[Found] | None:
        """Run the per-series rules on ``part`` in a worker; None when the workers stopped (a worker killed, out
        of memory)."""
        if self.stopped:
            return None
        try:
            return self._executor().submit(per_dyad, part, thresholds, calibrations)
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
    """``score``, with a chunk whose series the per-series rules run on (``Courses.screened``) hold at least
    ``PARALLEL_SESSIONS`` sessions cut into shares of those series that this
    process takes from the front and the workers from the back, so that a worker still starting takes fewer. This
    process first runs rules 2 and 3 over every series, while the workers start on their shares."""
    c = courses(features, configs, calibrations, curves)
    work = int(c.screened["score"].list.len().sum())  # sessions of the series the per-series rules run on
    if pool.processes < 2 or pool.stopped or work < PARALLEL_SESSIONS:
        return scored(c, [per_dyad(c.screened, c.thresholds, calibrations)])
    parts = shares(c.screened, max(pool.processes, work // SHARE_SESSIONS))
    results: dict[int, Found] = {}
    sent: dict[int, Future[Found] | None] = {}
    advisory: pl.DataFrame | None = None
    front, back = 0, len(parts)  # parts[front:back] are neither scored here nor sent
    while front < back:
        # each worker holds one share and the next, so that it never waits for this process
        while front < back and sum(not f.done() for f in sent.values() if f is not None) < 2 * (pool.processes - 1):
            back -= 1
            sent[back] = pool.submit(parts[back], c.thresholds, calibrations)
        if advisory is None:
            advisory = advisories(c.sessions, c.thresholds)
        elif front < back:
            results[front] = per_dyad(parts[front], c.thresholds, calibrations)
            front += 1
    for i, future in sent.items():
        try:
            if future is None:
                raise BrokenProcessPool
            results[i] = future.result()
        except BrokenProcessPool:  # a worker killed (out of memory): its shares are scored here
            pool.stop()
            results[i] = per_dyad(parts[i], c.thresholds, calibrations)
    return scored(c, [results[i] for i in range(len(parts))], advisory)
