"""Worker processes for work that holds Python's lock (the rules, reading and validating files), at most one
per spare core this process may use."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from alliance.storage.snapshots import CORES

__all__ = ["CORES", "may_start_workers", "worker_pool"]


def may_start_workers() -> bool:
    """False with one core, and inside a daemon process (a Dask worker), which may not start processes."""
    return CORES > 1 and not multiprocessing.current_process().daemon


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Processes started by spawn: a fork would copy Polars' and DuckDB's threads' locks, not their threads."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
