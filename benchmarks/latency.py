"""File landing to alert delivered, under `alliance serve`: its own Prefect server, the runner and the watcher.

A history of 10M ratings x scale is loaded untimed; `alliance serve` starts in its own process group; then one
night file per clinic lands in its inbox (written aside, renamed in), one at a time. Each landing is timed to the
first alert message the local webhook receives after it, and to the moment the file left the inbox (ingested and
archived). A landing whose export raised no new or worse flag sends no alert and is reported as such.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from time import perf_counter
from typing import IO

from alliance.samples import add_profiles
from alliance.settings import Settings
from benchmarks.report import BenchReport, Verdict
from benchmarks.workload import (
    LATENCY_RATINGS,
    RATINGS_PER_ROW,
    AlertHook,
    TimedFile,
    generate_night,
    new_home,
    night_clinics,
    seed_history,
    with_alerts,
)

TARGET_LATENCY_S = 15.0
STARTUP_S = 180.0  # the Prefect server and the runner come up in 20-60 s on a busy machine
INGEST_WAIT_S = 120.0
ALERT_WAIT_S = 60.0
LANDINGS = 4


def _pump(stream: IO[str], log: Path, ready: threading.Event) -> None:
    with log.open("w") as out:
        for line in stream:
            out.write(line)
            out.flush()
            if "polling for scheduled runs" in line or "being served" in line:
                ready.set()


@contextlib.contextmanager
def serving(settings: Settings, root: Path) -> Iterator[None]:
    """`alliance serve --home` running until the block ends, then stopped with Ctrl-C (SIGINT) as a user would."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(root / "prefect-client")
    process = subprocess.Popen(
        [sys.executable, "-m", "alliance", "serve", "--home", str(settings.home)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    ready = threading.Event()
    assert process.stdout is not None
    threading.Thread(target=_pump, args=(process.stdout, root / "serve.log", ready), daemon=True).start()
    try:
        if not ready.wait(STARTUP_S):
            raise RuntimeError(f"alliance serve did not come up within {STARTUP_S:.0f} s; see {root / 'serve.log'}")
        yield
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def land(settings: Settings, file: TimedFile) -> tuple[float, float | None, float | None]:
    """Land one file; (landed at, seconds until it left the inbox, seconds until the next alert) or None."""
    target = settings.inbox / file.clinic_id / file.name
    target.parent.mkdir(parents=True, exist_ok=True)
    aside = settings.home.parent / "landing" / file.name  # written outside the inbox, renamed in: one instant
    aside.parent.mkdir(exist_ok=True)
    aside.write_bytes(file.source.read_bytes())
    before = len(AlertHook.arrivals)
    os.replace(aside, target)
    landed = perf_counter()
    ingested = alerted = None
    deadline = landed + INGEST_WAIT_S
    while perf_counter() < deadline:
        if ingested is None and not target.exists():
            ingested = perf_counter() - landed
            deadline = perf_counter() + ALERT_WAIT_S
        if len(AlertHook.arrivals) > before:
            alerted = AlertHook.arrivals[before] - landed
            break
        time.sleep(0.05)
    return landed, ingested, alerted


def landing_to_alert(report: BenchReport, root: Path, alert_url: str) -> None:
    """Load the history, serve, land files one at a time; figures and the < 15 s verdict into the report."""
    clinics = night_clinics(report.scale)
    history_rows = LATENCY_RATINGS * report.scale / RATINGS_PER_ROW
    today = date.fromisoformat(report.today)
    history, night_files, profiles = generate_night(root / "src", clinics, history_rows, today)
    settings = new_home(root)
    add_profiles(settings.clinics_file, with_alerts(profiles, alert_url))
    started = perf_counter()
    seed_history(settings, history)
    setup_s = perf_counter() - started
    ratings = _ratings(settings)
    first_per_clinic = [f for f in night_files if "_1of" in f.name]  # each clinic's first file of the night
    landings = []
    with serving(settings, root):
        for file in first_per_clinic[:LANDINGS]:
            landings.append(land(settings, file))
    alerted = [a for _, _, a in landings if a is not None]
    ingested = [i for _, i, _ in landings if i is not None]
    report.figures |= {
        "history ratings": ratings,
        "history setup s": setup_s,
        "settle s (watcher)": settings.settle_s,
        "landings": len(landings),
        "landing → ingested s": ingested,
        "landing → alert s": alerted,
        "landings without an alert": len(landings) - len(alerted),
    }
    worst = max(alerted) if alerted else float("inf")
    if alerted:
        measured = f"worst {worst:.1f} s of {len(alerted)} alerted landing(s) at {ratings:,} history ratings"
    else:
        measured = f"no alert within {ALERT_WAIT_S:.0f} s of ingest in {len(landings)} landing(s)"
    target = "file landing → alert delivered < 15 s under `alliance serve`"
    ratio = worst / TARGET_LATENCY_S
    report.verdicts.append(Verdict(target, measured, ratio, "of the limit", worst < TARGET_LATENCY_S))


def _ratings(settings: Settings) -> int:
    import duckdb

    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        return int(con.execute("SELECT count(*) FROM ratings").fetchall()[0][0])
