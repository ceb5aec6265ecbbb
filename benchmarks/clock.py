"""The stage clock: exclusive wall and CPU time per pipeline stage, by wrapping the functions the pipeline calls."""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from time import perf_counter, process_time
from typing import Any

import alliance.storage
import expectations
import flows.batch
import flows.exports
import flows.nightly
import flows.pipeline
import flows.prevalidation
import flows.reviews
import flows.scoring

STAGES = ("read", "map", "validate", "load", "commit", "score", "flag", "publish", "alert", "other")


@dataclass
class _Frame:
    stage: str
    start: float
    cpu_start: float
    children: float = 0.0
    cpu_children: float = 0.0
    opaque: bool = False


class StageClock:
    """Exclusive wall and CPU time per stage: time spent in a nested timed call is charged to that call's stage.

    CPU time (all threads of the process) is kept beside wall time because other work on a shared machine
    stretches wall time but not CPU time.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        self.first: dict[str, float] = {}
        self.phases: dict[str, float] = defaultdict(float)
        self.file_seconds: list[float] = []
        self._local = threading.local()  # a stack per thread: the Prefect flow runs its tasks on a thread pool
        self._patched: list[tuple[Any, str, Any]] = []
        self.missing: list[str] = []  # wrappers skipped because the pipeline renamed or removed the function

    @property
    def _stack(self) -> list[_Frame]:
        stack: list[_Frame] | None = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    @contextlib.contextmanager
    def timing(self, stage: str, opaque: bool = False) -> Iterator[None]:
        if self._stack and self._stack[-1].opaque:
            yield  # inside an opaque stage every nested call stays that stage's time
            return
        frame = _Frame(stage, perf_counter(), process_time(), opaque=opaque)
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            elapsed = perf_counter() - frame.start
            cpu = process_time() - frame.cpu_start
            own = elapsed - frame.children
            self.seconds[stage] += own
            self.cpu[stage] += cpu - frame.cpu_children
            self.first.setdefault(stage, own)
            self.calls[stage] += 1
            if self._stack:
                self._stack[-1].children += elapsed
                self._stack[-1].cpu_children += cpu

    def _replace(self, owner: Any, name: str, wrapper: Any) -> None:
        self._patched.append((owner, name, getattr(owner, name)))
        setattr(owner, name, wrapper)

    def _find(self, owner: Any, name: str) -> Any:
        """The attribute to wrap, or None (recorded) when the code under test no longer has it."""
        found = getattr(owner, name, None)
        if found is None:
            self.missing.append(f"{getattr(owner, '__name__', owner)}.{name}")
        return found

    def call(self, owner: Any, name: str, stage: str, opaque: bool = False) -> None:
        """Time every call of owner.name as ``stage``."""
        original = self._find(owner, name)
        if original is None:
            return

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.timing(stage, opaque):
                return original(*args, **kwargs)

        self._replace(owner, name, timed)

    def context(self, owner: Any, name: str, stage: str) -> None:
        """Time the entry and the exit of a context manager (lock, BEGIN / COMMIT, CHECKPOINT), not its body."""
        original = self._find(owner, name)
        if original is None:
            return

        @functools.wraps(original)
        @contextlib.contextmanager
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            manager = original(*args, **kwargs)
            with self.timing(stage):
                value = manager.__enter__()
            try:
                yield value
            except BaseException:
                with self.timing(stage):
                    if not manager.__exit__(*sys.exc_info()):
                        raise
            else:
                with self.timing(stage):
                    manager.__exit__(None, None, None)

        self._replace(owner, name, timed)

    def phase(self, owner: Any, name: str, phase: str, per_file: bool = False) -> None:
        """Inclusive wall time of a step of the run (sweep, settle, alerts), beside the stage split."""
        original = self._find(owner, name)
        if original is None:
            return

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = perf_counter() - start
                self.phases[phase] += elapsed
                if per_file:
                    self.file_seconds.append(elapsed)

        self._replace(owner, name, timed)

    def restore(self) -> None:
        for owner, name, original in reversed(self._patched):
            setattr(owner, name, original)
        self._patched.clear()


def instrument(clock: StageClock, prefect: bool = False) -> None:
    """Wrap the functions the pipeline calls, at the names it looks them up by; the pipeline code is unchanged.

    With ``prefect``, also the names the Prefect flows look up (importing them imports Prefect).
    """
    if prefect:  # imported before any wrapping: they bind some names of flows.nightly at import
        ingest, serve = importlib.import_module("flows.ingest"), importlib.import_module("flows.serve")
    pipeline, exports, scoring, writer = flows.pipeline, flows.exports, flows.scoring, alliance.storage.Writer
    clock.call(exports, "read_export", "read")
    for name in ("resolve_columns", "to_canonical", "rating_candidates", "unrated_rows", "pseudonymise"):
        clock.call(exports, name, "map.columns")
    for name in ("accepted_ratings", "with_dyad_id"):
        clock.call(exports, name, "map.ratings")
    clock.call(flows.prevalidation, "rating_candidates", "map.columns")  # a batch's files of one kind together
    clock.call(pipeline, "prepare_export", "map.other")  # what prepare_export does between the calls above
    clock.call(flows.prevalidation, "prepare_export", "map.other")  # the same, for a batch's files read ahead
    clock.call(flows.prevalidation, "prepare_together", "map.other")  # and for all of them at once
    clock.call(exports, "validate_ratings", "validate.gx")
    clock.call(expectations.Prevalidated, "prime", "validate.gx")  # a batch's validations, done ahead
    for name in ("screen", "split_failing", "quarantine_rows"):
        clock.call(exports, name, "validate.screen")
    clock.call(pipeline, "load_clinics", "other.profiles")
    clock.call(flows.prevalidation, "load_clinics", "other.profiles")  # a batch's read ahead
    clock.call(exports, "export_candidates", "map.other")  # its own work between the calls above
    clock.call(flows.reviews, "load_clinics", "other.profiles")
    clock.call(pipeline, "_read_settled", "other.sha256")
    for owner in (pipeline, flows.batch):  # a lone file's archive move, and a batch's after its load
        clock.call(owner, "archive_bytes", "other.archive")
    for name in ("sightings", "check_key", "ledger_rows_of"):
        clock.call(writer, name, "load.ledger")
    clock.call(writer, "frame", "other.sql")  # ad-hoc queries: known therapists before a load, queue counts
    clock.call(writer, "load_exports", "load.upsert")  # a batch's load, and one file's (load_export calls it)
    clock.context(writer, "transaction", "commit.transaction")
    clock.context(alliance.storage.Warehouse, "writer", "commit.lock_checkpoint")
    # scoring: features and reliable-change calibration (Polars), then rules per dyad (Python) and flag writes
    clock.call(scoring, "_calibrations", "score.calibrate", opaque=True)  # incl. its full-table read when stale
    clock.call(scoring, "_features", "score.features")
    clock.call(writer, "ratings_of", "score.read", opaque=True)  # opaque: its query through frame() stays here
    clock.call(scoring, "score_shares", "flag.rules")
    clock.call(scoring, "stopped_appearing", "flag.silence_risk")
    clock.call(scoring, "reconcile", "flag.reconcile")
    for name in ("flags_of", "last_sessions"):
        clock.call(writer, name, "flag.read", opaque=True)
    for name in ("replace_flags", "replace_dyad_sessions", "refresh_courses", "set_standing", "record_scoring_run"):
        clock.call(writer, name, "flag.write")
    for owner in (pipeline, flows.reviews):
        clock.call(owner, "score_dyads", "flag.other")  # score_dyads' own queries (queue counts) between the calls
    clock.call(writer, "publish", "publish")
    clock.call(flows.nightly, "deliver_alerts", "alert.deliver", opaque=True)
    clock.call(flows.nightly, "clinic_summary", "alert.summary", opaque=True)
    # phases of the nightly run, inclusive
    clock.phase(flows.nightly, "ingest_file", "ingest", per_file=True)
    clock.phase(flows.pipeline, "ingest_file", "ingest", per_file=True)  # `alliance ingest` looks it up here
    clock.phase(flows.nightly, "sweep_clinics", "sweep")
    clock.phase(flows.batch.LoadBatch, "flush", "load")  # a batch's loads, in the sweep (or an ingest of many)
    clock.phase(flows.nightly, "settle_scores", "settle")
    clock.phase(flows.reviews, "settle_scores", "settle")  # `alliance ingest` of several files settles at its end
    clock.phase(flows.nightly, "deliver_alerts", "alerts")
    clock.phase(flows.nightly, "clinic_summary", "summary")
    if prefect:
        clock.call(ingest, "deliver_alerts", "alert.deliver", opaque=True)
        clock.call(serve, "clinic_summary", "alert.summary", opaque=True)
        clock.phase(serve, "settle_scores", "settle")
        clock.phase(ingest, "deliver_alerts", "alerts")
        clock.phase(serve, "sweep_clinics", "sweep")
