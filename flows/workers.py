"""Worker processes for work that holds Python's lock (the rules, reading and validating files), at most one
per spare core this process may use."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor

from alliance.storage.snapshots import CORES

__all__ = ["CORES", "may_start_workers", "stop_workers", "worker_pool"]

PARENT_CHECK_S = 1.0  # how often a worker checks that the process it works for is still there


def may_start_workers() -> bool:
    """False with one core, and inside a daemon process (a Dask worker), which may not start processes."""
    return CORES > 1 and not multiprocessing.current_process().daemon


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Processes started by spawn: a fork would copy Polars' and DuckDB's threads' locks, not their threads.
    Ctrl-C reaches this process only, which stops the workers (``stop_workers``)."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(os.getpid(),))


def _start_worker(parent: int) -> None:
    """In each worker: Ctrl-C is left to the parent, and the worker ends as soon as its parent is gone (killed
    with SIGKILL, it had no chance to stop it), instead of finishing work nobody will collect."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)

    threading.Thread(target=watch, name="alliance-parent-watch", daemon=True).start()


def stop_workers(pool: ProcessPoolExecutor, finish: bool) -> None:
    """Stop ``pool``: after the work under way when ``finish``, else at once (on an error or an interrupt)."""
    if not finish:
        for process in list(getattr(pool, "_processes", {}).values()):  # work started is not waited for
            process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)
