"""Workload generation: the seeded sample shaped as a backfill or a night, a home to load it into, a history
loaded untimed, the inbox staged in arrival order, and a local webhook that receives every alert."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from time import perf_counter, sleep
from typing import Any

from alliance.clinics import load_clinics
from alliance.home import init_home
from alliance.pseudonyms import load_key
from alliance.readers import sha256_of
from alliance.samples import generate_sample
from alliance.settings import Settings, load_settings
from alliance.storage import Ledger, Warehouse
from flows.alerting import deliver_alerts
from flows.exports import clinic_for, prepare_export
from flows.scoring import score_dyads

SEED = 2026
KEY = "bench-key-0123456789abcdef"
MIN_CLINICS = 4  # one of each vendor layout (US CSV, German CSV, XLSX, nested JSON)
MIN_DYADS = 5  # from 5 dyads on the generator plants every trajectory shape
HISTORY_WEEKS = 260  # 5 years
SESSIONS_PER_DYAD = 15.1  # generator's mean over 260 weeks (stable dyads 5-24 sessions, planted 8-24)
RATINGS_PER_ROW = 1.45  # US-CSV and JSON clinics rate SRS and ORS in one session row (10.2M ratings in 7M rows)
BACKFILL_ROWS = 7_000_000
BACKFILL_CLINICS = 100
NETWORK_CLINICS = 1_000
NIGHT_FILES = 5
NIGHT_WEEKS = 8  # the generator's minimum window: a night file carries sessions of the last 8 weeks
NIGHT_DYADS = 5  # ~33 sessions + 9 planted invalid rows per file: 5,000 files ~ 200k rows
RE_EXPORT_SHARE = 0.05  # clinics whose 5th file is a full cumulative re-export of their history
NIGHT_HISTORY = 7_000_000
HISTORY_ROWS = (1_000_000, 7_000_000, 20_000_000)
LATENCY_RATINGS = 10_000_000


@dataclass(frozen=True)
class TimedFile:
    """One export of the timed workload: its clinic, the pristine copy the floor reads, its inbox name."""

    clinic_id: str
    source: Path
    name: str


def new_home(root: Path) -> Settings:
    """A fresh home like tests/test_flags.py sets one up, with a fixed pseudonym key."""
    settings = load_settings(root / "home")
    init_home(settings)
    settings.key_file.write_text(KEY + "\n")
    return settings


def with_alerts(profiles: dict[str, dict], url: str) -> dict[str, dict]:
    """Every clinic alerts one duty supervisor and its leads through a local webhook, so delivery is real."""
    alerts = {"min_severity": "medium", "leads": [url], "supervisors": [{"name": "Duty supervisor", "urls": [url]}]}
    return {cid: {**spec, "alerts": alerts} for cid, spec in profiles.items()}


def clinic_of(path: Path) -> str:
    return path.parent.name  # the generator writes out/<clinic_id>/<file>


def _body(data: bytes) -> bytes:
    """A CSV export without its header line (the generator writes CRLF and never a newline in a header)."""
    return data.split(b"\r\n", 1)[1]


def backfill_shape(scale: float) -> tuple[int, int]:
    """(clinics, dyads per clinic): the first scale x 100 clinics at full size, fewer dyads below 4 clinics."""
    clinics = max(MIN_CLINICS, round(BACKFILL_CLINICS * scale))
    dyads = max(MIN_DYADS, round(BACKFILL_ROWS * scale / clinics / SESSIONS_PER_DYAD))
    return clinics, dyads


def night_clinics(scale: float) -> int:
    return max(MIN_CLINICS, round(NETWORK_CLINICS * scale))


def history_dyads(history_rows: float, clinics: int) -> int:
    """Dyads per clinic so that the clinics hold history_rows between them."""
    return max(MIN_DYADS, round(history_rows / clinics / SESSIONS_PER_DYAD))


def generate_backfill(src: Path, scale: float, today: date) -> tuple[list[TimedFile], dict[str, dict]]:
    clinics, dyads = backfill_shape(scale)
    sample = generate_sample(
        src, clinics=clinics, weeks=HISTORY_WEEKS, seed=SEED, today=today, dyads_per_clinic=dyads, profile="clean"
    )
    # the generator's corrected copy of clinic 0 is a re-send, not history: a backfill loads each clinic once
    files = [TimedFile(f.clinic_id, f.path, f.path.name) for f in sample.files if "_corrected" not in f.path.name]
    return files, sample.profiles


def generate_night(
    src: Path, clinics: int, history_rows: float, today: date
) -> tuple[list[Path], list[TimedFile], dict[str, dict]]:
    """History files (5 years up to a week ago) and the night's files: 5 per clinic, some full re-exports."""
    history = generate_sample(
        src / "history",
        clinics=clinics,
        weeks=HISTORY_WEEKS,
        seed=SEED,
        today=today - timedelta(days=7),
        dyads_per_clinic=history_dyads(history_rows, clinics),
        profile="clean",
    )
    nights = [
        generate_sample(
            src / f"night{k + 1}",
            clinics=clinics,
            weeks=NIGHT_WEEKS,
            seed=SEED + 1 + k,
            today=today,
            dyads_per_clinic=NIGHT_DYADS,
            profile="clean",
        )
        for k in range(NIGHT_FILES)
    ]
    csv_clinics = [
        f.clinic_id for f in history.files if f.layout in ("us_csv", "eu_csv") and "_corrected" not in f.path.name
    ]
    count = max(1, round(RE_EXPORT_SHARE * clinics))
    re_exporters = set(csv_clinics[:: max(1, len(csv_clinics) // count)][:count])
    first_history = {f.clinic_id: f.path for f in history.files if "_corrected" not in f.path.name}
    timed: list[TimedFile] = []
    for k, night in enumerate(nights, start=1):
        for f in night.files:
            if "_corrected" in f.path.name:
                continue  # the generator's corrected copy of clinic 0: not part of a night's 5 files
            name = f"{f.path.stem}_{k}of{NIGHT_FILES}{f.path.suffix}"
            if k == NIGHT_FILES and f.clinic_id in re_exporters:
                # a cumulative re-export: everything the clinic ever sent, plus tonight's sessions
                cumulative = src / "reexport" / f.clinic_id / f"{f.path.stem}_full{f.path.suffix}"
                cumulative.parent.mkdir(parents=True, exist_ok=True)
                cumulative.write_bytes(first_history[f.clinic_id].read_bytes() + _body(f.path.read_bytes()))
                timed.append(TimedFile(f.clinic_id, cumulative, cumulative.name))
            else:
                timed.append(TimedFile(f.clinic_id, f.path, name))
    # the generator's corrected copy of clinic 0 repeats its history: left out, so history rows are distinct sessions
    return [f.path for f in history.files if "_corrected" not in f.path.name], timed, history.profiles


def seed_history(settings: Settings, paths: list[Path]) -> None:
    """Load the history in one writer session: per file read/map/validate/load, then one full score and publish.

    The same library calls ingest_file makes, batched (scoring once instead of per file, one snapshot round),
    so setting up a large history takes minutes, not hours; it is not part of any timed number.
    """
    clinics = load_clinics(settings.clinics_file)
    key = load_key(settings)
    warehouse = Warehouse.of(settings)
    now = datetime.now(UTC)
    with warehouse.writer() as writer:
        for path in paths:
            clinic = clinic_for(path, clinics, settings, clinic_id=clinic_of(path))
            sha = sha256_of(path)
            prepared = prepare_export(path, clinic, key, sha[:16], settings.quarantine_file_share)
            ledger = Ledger(
                export_id=sha[:16],
                clinic_id=clinic.id,
                file_name=path.name,
                sha256=sha,
                bytes=path.stat().st_size,
                received_at=now,
                status="quarantined" if prepared.whole_file_quarantined else "loaded",
                instruments=list(clinic.export.instruments),
                rows_total=prepared.rows_total,
                rows_quarantined=prepared.quarantine.height,
            )
            with writer.transaction():
                writer.load_export(ledger, prepared.ratings, prepared.quarantine, prepared.client_refs)
        with writer.transaction():
            score_dyads(writer, clinics, settings, None, kind="rescore", recalibrate=True)
        writer.publish(warehouse.snapshots, None)
    # the history's flags were alerted when they arose: record them as told, so the night alerts only its own
    deliver_alerts(settings, clinics, trends=True, backoff_s=0.05)


def stage_inbox(settings: Settings, files: list[TimedFile]) -> None:
    """Copy the files into inbox/<clinic>/ in arrival order (the sweep takes them oldest first)."""
    for i, f in enumerate(files):
        target = settings.inbox / f.clinic_id / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f.source, target)
        stamp = 1_700_000_000 + i
        os.utime(target, (stamp, stamp))


class AlertHook(BaseHTTPRequestHandler):
    """Counts every alert message and keeps its arrival time (perf_counter), for the landing-to-alert latency."""

    received = 0
    delay_s = 0.0  # each message held this long before the answer, as a remote channel would (``--alert-delay-ms``)
    arrivals: list[float] = []  # noqa: RUF012 - one receiver per benchmark process
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with AlertHook.lock:
            AlertHook.received += 1
            AlertHook.arrivals.append(perf_counter())
        sleep(AlertHook.delay_s)
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the benchmark counts messages, it does not log them


@contextlib.contextmanager
def alert_receiver(delay_s: float = 0.0) -> Iterator[str]:
    """A local JSON webhook (apprise json://) that accepts every alert, each after ``delay_s``; yields its URL."""
    AlertHook.delay_s = delay_s
    server = ThreadingHTTPServer(("127.0.0.1", 0), AlertHook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"json://127.0.0.1:{server.server_address[1]}/alerts"
    finally:
        server.shutdown()
        server.server_close()
