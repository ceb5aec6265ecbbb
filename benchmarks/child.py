"""The timed workload in a fresh child process: the real pipeline functions under the stage clock."""

from __future__ import annotations

import contextlib
import cProfile
import io
import json
import os
import pstats
import resource
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import Any

import duckdb
import psutil

import flows.nightly
from alliance.settings import Settings, load_settings
from benchmarks.clock import StageClock, instrument
from flows.pipeline import ExportResult

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    """Peak RSS of this process image (VmHWM).

    Not ru_maxrss: Linux carries the parent's high-water mark into a forked and exec'd child, so a child of a
    parent holding a loaded history would report the parent's memory.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; not Linux: best effort


class TreeMemory:
    """The peak of this process's RSS plus its worker processes' (read-ahead, scoring), sampled every 0.2 s:
    what the machine must hold, which the process's own high-water mark leaves out."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="tree-memory", daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._done.wait(0.2):
            total = 0
            for process in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a worker that exited between the listing and the read
                    total += process.memory_info().rss
            self.peak_mb = max(self.peak_mb, total / 2**20)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Exported:
    """What one export did, from an ExportResult or from its ledger row (the Prefect flow returns counts only)."""

    status: str
    rows_total: int
    rows_new: int
    rows_updated: int
    rows_unchanged: int
    rows_quarantined: int
    recalibrated: bool = False

    @classmethod
    def of(cls, result: ExportResult) -> Exported:
        return cls(result.status, result.rows_total, result.rows_new, result.rows_updated, result.rows_unchanged,
                   result.rows_quarantined, bool(result.scoring and result.scoring.recalibrated))  # fmt: skip


def ledger_since(settings: Settings, started: datetime) -> list[Exported]:
    """The exports the warehouse received since ``started``, as its ledger records them."""
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        rows = con.execute(
            """SELECT status, rows_total, rows_new, rows_updated, rows_unchanged, rows_quarantined
               FROM exports WHERE received_at >= $1""",
            [started],
        ).fetchall()
    return [Exported(*row) for row in rows]


def _workload(spec: dict[str, Any], settings: Settings, clock: StageClock) -> tuple[list[Exported], int]:
    """Run the spec's workload; (what each export did, dyads scored by the last scoring run)."""
    workload = spec["workload"]
    if workload == "ingest":  # exactly what `alliance ingest FILE...` runs
        from alliance.cli import _ingest_all

        results, settled = _ingest_all([Path(p) for p in spec["files"]], settings, None)
        scored = next((r.scoring.dyads_scored for r in reversed(results) if r.scoring), 0)
        exported = [Exported.of(r) for r in results]
        if settled is not None and settled.recalibrated:  # the batch's one re-estimation, at its end
            exported.append(Exported("rescore", 0, 0, 0, 0, 0, recalibrated=True))
        return exported, settled.dyads_scored if settled else scored
    if workload == "nightly":
        report = flows.nightly.run_nightly(settings)
        if report.errors:
            raise RuntimeError(f"nightly run reported errors: {report.errors[:3]}")
        exported = [Exported.of(r) for r in report.exports]
        if report.scoring is not None and report.scoring.recalibrated:
            exported.append(Exported("rescore", 0, 0, 0, 0, 0, recalibrated=True))
        return exported, report.scoring.dyads_scored if report.scoring else 0
    if workload == "prefect-nightly":
        from flows.serve import nightly

        started = datetime.now(UTC)
        outcome = nightly(home=str(settings.home))
        if outcome["errors"]:
            raise RuntimeError(f"nightly flow reported errors: {outcome['errors']}")
        return ledger_since(settings, started), 0
    raise ValueError(f"unknown workload {workload!r}")


def child_main(spec_path: Path) -> None:
    """The timed run, in its own process: patch the timers, run the real workload, write the numbers."""
    spec = json.loads(spec_path.read_text())
    baseline = rss_mb()
    settings = load_settings(Path(spec["home"]))
    with contextlib.ExitStack() as stack:
        if spec["workload"] == "prefect-nightly":
            from flows.prefect_server import prefect_api

            stack.enter_context(prefect_api(settings))  # started before the clock: serve keeps one running
        if spec["workload"] == "peer":
            from benchmarks.peer import peer_main

            peer_main(spec, baseline)
            return
        out = _timed(spec, settings, baseline)
    Path(spec["out"]).write_text(json.dumps(out))


def _timed(spec: dict[str, Any], settings: Settings, baseline: float) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    clock = StageClock()
    instrument(clock, prefect=spec["workload"] == "prefect-nightly")
    profiler = cProfile.Profile() if spec["profile"] else None
    start = perf_counter()
    with clock.timing("other.run"), TreeMemory() as tree:
        if profiler:
            profiler.enable()
        results, dyads_scored = _workload(spec, settings, clock)
        if profiler:
            profiler.disable()
    wall = perf_counter() - start
    clock.restore()
    files = sorted(clock.file_seconds)
    out = {
        "wall_s": wall,
        "seconds": dict(clock.seconds),
        "first": clock.first,
        "calls": dict(clock.calls),
        "phases": dict(clock.phases),
        "file_s_median": files[len(files) // 2] if files else 0.0,
        "file_s_max": files[-1] if files else 0.0,
        "statuses": dict(Counter(r.status for r in results if r.status != "rescore")),
        "ratings": sum(r.rows_total for r in results),
        "ratings_new": sum(r.rows_new for r in results),
        "ratings_updated": sum(r.rows_updated for r in results),
        "ratings_unchanged": sum(r.rows_unchanged for r in results),
        "ratings_quarantined": sum(r.rows_quarantined for r in results),
        "recalibrations": sum(r.recalibrated for r in results),
        "dyads_scored_last": dyads_scored,
        "peak_rss_mb": rss_mb(),
        "peak_tree_mb": tree.peak_mb,
        "baseline_rss_mb": baseline,
        "cpu": dict(clock.cpu),
        "cpu_s": cpu_s(),
        "load_avg": [load_before, os.getloadavg()[0]],
        "missing": clock.missing,
    }
    if profiler:
        for key, title in (("tottime", "by own time"), ("cumulative", "by cumulative time")):
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats(key).print_stats(45)
            out[f"profile_{key}"] = f"# {title}\n{text.getvalue()}"
    return out


def run_child(workdir: Path, home: Path, workload: str, files: list[Path], profile: bool) -> dict[str, Any]:
    """Run the timed workload in a fresh interpreter; its log goes to workdir/child.log."""
    spec = workdir / "child-spec.json"
    out = workdir / "child-result.json"
    spec.write_text(
        json.dumps(
            {
                "home": str(home),
                "workload": workload,
                "files": [str(p) for p in files],
                "profile": profile,
                "out": str(out),
            }
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    log = workdir / "child.log"
    with log.open("w") as handle:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench", "--child", str(spec)],
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RuntimeError(f"benchmark child failed ({done.returncode}); {log}:\n{tail}")
    result: dict[str, Any] = json.loads(out.read_text())
    for key in ("profile_tottime", "profile_cumulative"):
        if key in result:
            (workdir / f"{key}.txt").write_text(result.pop(key))
    return result
