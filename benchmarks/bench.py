"""Benchmark of the real pipeline, stage by stage, against a plain Polars read + DuckDB append floor.

Scenarios (scale 1.0 is the issue's full size; rows are session rows, i.e. file lines or JSON records):
  backfill  100 clinics x 5 years (260 weeks), ~7M rows, into an empty warehouse: `alliance ingest`, file by file
  night     1,000 clinics x 5 files (~200k rows; 5% of clinics send one full cumulative re-export) on top of a
            7M-row history: `alliance nightly` (sweep the inboxes, full rescore, alerts, per-clinic summary)
  scaling   the same night over histories of 1M, 7M and 20M rows
Scale K multiplies the rows (backfill: clinics x dyads; night: clinics, so each clinic keeps its real shape).

The timed workload runs in a fresh child process that calls the real functions (flows.pipeline.ingest_file,
flows.nightly.run_nightly). Stage timers are wrappers patched onto the module attributes those functions look up
(flows.pipeline.read_export, Writer.load_export, ...), each charging its exclusive time (a nested timed call goes to
its own stage). Peak memory is the child's own high-water RSS (VmHWM). The floor reads the same files with plain
Polars and appends them into a fresh DuckDB file, with no validation or scoring.

Example: ``python -m benchmarks.bench --scenario night --scale 0.01``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import json
import os
import platform
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from time import perf_counter, process_time
from typing import Any

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import duckdb
import polars as pl

import alliance.storage
import flows.nightly
import flows.pipeline
import flows.reviews
import flows.scoring
from alliance.clinics import Clinic, load_clinics
from alliance.exports import json_records, sha256_of
from alliance.home import init_home
from alliance.pseudonyms import load_key
from alliance.samples import add_profiles, generate_sample
from alliance.settings import Settings, load_settings
from alliance.storage import Ledger, Warehouse
from flows.alerting import deliver_alerts
from flows.pipeline import ExportResult, clinic_for, prepare_export
from flows.scoring import score_dyads

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ("backfill", "night", "scaling")
SEED = 2026
KEY = "bench-key-0123456789abcdef"
MIN_CLINICS = 4  # one of each vendor layout (US CSV, German CSV, XLSX, nested JSON)
MIN_DYADS = 5  # from 5 dyads on the generator plants every trajectory shape
HISTORY_WEEKS = 260  # 5 years
SESSIONS_PER_DYAD = 15.1  # generator's mean over 260 weeks (stable dyads 5-24 sessions, planted 8-24)
BACKFILL_ROWS = 7_000_000
BACKFILL_CLINICS = 100
NETWORK_CLINICS = 1_000
NIGHT_FILES = 5
NIGHT_WEEKS = 8  # the generator's minimum window: a night file carries sessions of the last 8 weeks
NIGHT_DYADS = 5  # ~33 sessions + 9 planted invalid rows per file: 5,000 files ~ 200k rows
RE_EXPORT_SHARE = 0.05  # clinics whose 5th file is a full cumulative re-export of their history
NIGHT_HISTORY = 7_000_000
SCALING_HISTORIES = (1_000_000, 7_000_000, 20_000_000)
STAGES = ("read", "map", "validate", "load", "commit", "score", "flag", "publish", "alert", "other")
TARGET_BACKFILL_RATIO = 1 / 3
TARGET_NIGHT_S = 180.0
TARGET_NIGHT_RSS_MB = 4096.0
TARGET_FLATNESS = 0.20


# ------------------------------------------------------------------------------------------------ stage clock


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
        self._stack: list[_Frame] = []
        self._patched: list[tuple[Any, str, Any]] = []
        self.missing: list[str] = []  # wrappers skipped because the pipeline renamed or removed the function

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
        """Inclusive wall time of a step of the run (sweep, rescore, alerts), beside the stage split."""
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


def instrument(clock: StageClock) -> None:
    """Wrap the functions the pipeline calls, at the names it looks them up by; the pipeline code is unchanged."""
    pipeline, scoring, writer = flows.pipeline, flows.scoring, alliance.storage.Writer
    clock.call(pipeline, "read_export", "read")
    for name in ("resolve_columns", "to_canonical", "rating_candidates", "unrated_rows", "pseudonymise"):
        clock.call(pipeline, name, "map.columns")
    for name in ("accepted_ratings", "with_dyad_id"):
        clock.call(pipeline, name, "map.ratings")
    clock.call(pipeline, "prepare_export", "map.other")  # what prepare_export does between the calls above
    clock.call(pipeline, "validate_ratings", "validate.gx")
    for name in ("screen", "quarantine_rows"):
        clock.call(pipeline, name, "validate.screen")
    clock.call(pipeline, "load_clinics", "other.profiles")
    clock.call(flows.reviews, "load_clinics", "other.profiles")
    clock.call(pipeline, "_read_settled", "other.sha256")
    clock.call(pipeline, "_archive", "other.archive")
    for name in ("export_by_sha", "check_key"):
        clock.call(writer, name, "load.ledger")
    clock.call(writer, "frame", "other.sql")  # ad-hoc queries: known therapists before a load, queue counts
    clock.call(writer, "load_export", "load.upsert")
    clock.context(writer, "transaction", "commit.transaction")
    clock.context(alliance.storage.Warehouse, "writer", "commit.lock_checkpoint")
    # scoring: features and reliable-change calibration (Polars), then rules per dyad (Python) and flag writes
    clock.call(scoring, "_calibrations", "score.calibrate", opaque=True)  # incl. its full-table read when stale
    clock.call(scoring, "_features", "score.features")
    clock.call(writer, "ratings_of", "score.read", opaque=True)  # opaque: its query through frame() stays here
    clock.call(scoring, "score", "flag.rules")
    for name in ("stopped_appearing", "dyad_risk"):
        clock.call(scoring, name, "flag.silence_risk")
    clock.call(scoring, "reconcile", "flag.reconcile")
    for name in ("flags_of", "last_sessions"):
        clock.call(writer, name, "flag.read", opaque=True)
    for name in ("replace_flags", "replace_dyad_sessions", "refresh_dyads", "record_scoring_run"):
        clock.call(writer, name, "flag.write")
    for owner in (pipeline, flows.reviews):
        clock.call(owner, "score_dyads", "flag.other")  # score_dyads' own queries (queue counts) between the calls
    clock.call(writer, "publish", "publish")
    clock.call(flows.nightly, "deliver_alerts", "alert.deliver", opaque=True)
    clock.call(flows.nightly, "clinic_summary", "alert.summary", opaque=True)
    # phases of the nightly run, inclusive
    clock.phase(flows.nightly, "ingest_file", "ingest", per_file=True)
    clock.phase(flows.nightly, "sweep_clinic", "sweep")
    clock.phase(flows.nightly, "rescore", "rescore")
    clock.phase(flows.nightly, "deliver_alerts", "alerts")
    clock.phase(flows.nightly, "clinic_summary", "summary")


# ------------------------------------------------------------------------------------------------ reports


@dataclass
class RunReport:
    """One timed run: what was ingested, where the time went, and the floor on the same files."""

    label: str
    clinics: int
    history_rows: int  # session rows in the warehouse before the timed run
    files: int
    rows: int  # session rows of the timed files (lines / records), as the floor reads them
    ratings: int  # ratings in those files (ledger rows_total: a session with SRS and ORS counts twice)
    ratings_new: int
    ratings_updated: int
    ratings_unchanged: int
    ratings_quarantined: int
    statuses: dict[str, int]
    generate_s: float  # writing the sample files (not timed)
    setup_s: float  # loading the history before a night (not timed)
    wall_s: float
    stages: dict[str, float]
    stages_cpu: dict[str, float]
    details: dict[str, float]
    first_call_s: dict[str, float]
    calls: dict[str, int]
    phases: dict[str, float]
    file_s_median: float
    file_s_max: float
    recalibrations: int
    dyads_scored_last: int
    peak_rss_mb: float
    baseline_rss_mb: float
    cpu_s: float  # user + system CPU of the timed child (all threads)
    load_avg: tuple[float, float]  # 1-minute load average when the timed run started and ended
    floor_s: float
    alert_messages: int
    warehouse_mb: float
    missing_wrappers: list[str]

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s else 0.0

    @property
    def floor_rows_per_s(self) -> float:
        return self.rows / self.floor_s if self.floor_s else 0.0

    @property
    def ratio(self) -> float:
        return self.rows_per_s / self.floor_rows_per_s if self.floor_rows_per_s else 0.0


@dataclass
class BenchReport:
    """Every run of one scenario at one scale, with the machine it ran on."""

    scenario: str
    scale: float
    started_at: str
    today: str
    machine: dict[str, str]
    runs: list[RunReport] = field(default_factory=list)

    def to_json(self) -> str:
        data = asdict(self)
        for run, out in zip(self.runs, data["runs"], strict=True):
            out |= {"rows_per_s": run.rows_per_s, "floor_rows_per_s": run.floor_rows_per_s, "ratio": run.ratio}
        return json.dumps(data, indent=2)


def machine_info() -> dict[str, str]:
    """nproc, memory, CPU model and the versions that decide the numbers."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in line)
    info = {"nproc": str(os.cpu_count()), "memory": f"{mem_kb / 2**20:.1f} GiB", "cpu": cpu}
    info["python"] = platform.python_version()
    for dist in ("polars", "duckdb", "great-expectations", "pandas", "prefect", "fastexcel", "apprise"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[dist] = metadata.version(dist)
    return info


# ------------------------------------------------------------------------------------------------ data


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


def _clinic_of(path: Path) -> str:
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
            clinic = clinic_for(path, clinics, settings, clinic_id=_clinic_of(path))
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


# ------------------------------------------------------------------------------------------------ floor


def floor_frame(path: Path, clinic: Clinic) -> pl.DataFrame:
    """The file as plain Polars reads it: same delimiter, encoding, sheet and JSON flattening, no checks."""
    profile = clinic.export
    if profile.format == "xlsx":
        frame = pl.read_excel(path, sheet_name=profile.sheet, engine="calamine")
        return frame.select(pl.all().cast(pl.String))
    if profile.format == "json":
        return pl.from_dicts(json_records(json.loads(path.read_bytes()), profile.records), infer_schema_length=None)
    encoding = "windows-1252" if profile.encoding == "cp1252" else "utf8"
    return pl.read_csv(path, separator=profile.delimiter, encoding=encoding, infer_schema=False)


def run_floor(files: list[TimedFile], clinics: dict[str, Clinic], database: Path) -> tuple[float, int]:
    """(seconds, rows) to read every file and append it to a fresh DuckDB table per layout."""
    database.unlink(missing_ok=True)
    con = duckdb.connect(str(database))
    columns: dict[str, set[str]] = {}
    rows = 0
    start = perf_counter()
    try:
        for f in files:
            clinic = clinics[f.clinic_id]
            frame = floor_frame(f.source, clinic)
            rows += frame.height
            table = f"floor_{clinic.export.format}_{len(clinic.export.columns)}"
            if table not in columns:
                con.execute(f"CREATE TABLE {table} AS SELECT * FROM frame")
                columns[table] = set(frame.columns)
            else:
                for extra in sorted(set(frame.columns) - columns[table]):
                    con.execute(f'ALTER TABLE {table} ADD COLUMN "{extra}" VARCHAR')
                    columns[table].add(extra)
                con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM frame")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return perf_counter() - start, rows


# ------------------------------------------------------------------------------------------------ alert receiver


class _Hook(BaseHTTPRequestHandler):
    received = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with _Hook.lock:
            _Hook.received += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the benchmark counts messages, it does not log them


@contextlib.contextmanager
def alert_receiver() -> Iterator[str]:
    """A local JSON webhook (apprise json://) that accepts every alert; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"json://127.0.0.1:{server.server_address[1]}/alerts"
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------------------ child


def _rss_mb() -> float:
    """Peak RSS of this process image (VmHWM).

    Not ru_maxrss: Linux carries the parent's high-water mark into a forked and exec'd child, so a child of a
    parent holding a loaded history would report the parent's memory.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux; not Linux: best effort


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_main(spec_path: Path) -> None:
    """The timed run, in its own process: patch the timers, run the real workload, write the numbers."""
    spec = json.loads(spec_path.read_text())
    baseline = _rss_mb()
    load_before = os.getloadavg()[0]
    settings = load_settings(Path(spec["home"]))
    clock = StageClock()
    instrument(clock)
    profiler = cProfile.Profile() if spec["profile"] else None
    results: list[ExportResult] = []
    recalibrations = 0
    dyads_scored = 0
    start = perf_counter()
    with clock.timing("other.run"):
        if profiler:
            profiler.enable()
        if spec["workload"] == "ingest":
            for path in spec["files"]:
                began = perf_counter()
                results.append(flows.pipeline.ingest_file(Path(path), settings))
                clock.file_seconds.append(perf_counter() - began)
            clock.phases["ingest"] = sum(clock.file_seconds)
        else:
            report = flows.nightly.run_nightly(settings)
            results = report.exports
            if report.errors:
                raise RuntimeError(f"nightly run reported errors: {report.errors[:3]}")
            if report.scoring is not None:
                recalibrations += report.scoring.recalibrated
                dyads_scored = report.scoring.dyads_scored
        if profiler:
            profiler.disable()
    wall = perf_counter() - start
    clock.restore()
    recalibrations += sum(bool(r.scoring and r.scoring.recalibrated) for r in results)
    if spec["workload"] == "ingest":
        dyads_scored = next((r.scoring.dyads_scored for r in reversed(results) if r.scoring), 0)
    files = sorted(clock.file_seconds)
    out = {
        "wall_s": wall,
        "seconds": dict(clock.seconds),
        "first": clock.first,
        "calls": dict(clock.calls),
        "phases": dict(clock.phases),
        "file_s_median": files[len(files) // 2] if files else 0.0,
        "file_s_max": files[-1] if files else 0.0,
        "statuses": dict(Counter(r.status for r in results)),
        "ratings": sum(r.rows_total for r in results),
        "ratings_new": sum(r.rows_new for r in results),
        "ratings_updated": sum(r.rows_updated for r in results),
        "ratings_unchanged": sum(r.rows_unchanged for r in results),
        "ratings_quarantined": sum(r.rows_quarantined for r in results),
        "recalibrations": recalibrations,
        "dyads_scored_last": dyads_scored,
        "peak_rss_mb": _rss_mb(),
        "baseline_rss_mb": baseline,
        "cpu": dict(clock.cpu),
        "cpu_s": _cpu_s(),
        "load_avg": [load_before, os.getloadavg()[0]],
        "missing": clock.missing,
    }
    if profiler:
        for key, title in (("tottime", "by own time"), ("cumulative", "by cumulative time")):
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats(key).print_stats(45)
            out[f"profile_{key}"] = f"# {title}\n{text.getvalue()}"
    Path(spec["out"]).write_text(json.dumps(out))


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


# ------------------------------------------------------------------------------------------------ scenarios


def _group(details: dict[str, float]) -> dict[str, float]:
    grouped = dict.fromkeys(STAGES, 0.0)
    for name, seconds in details.items():
        grouped[name.split(".", 1)[0]] += seconds
    return grouped


def timed_run(
    label: str,
    root: Path,
    settings: Settings,
    workload: str,
    files: list[TimedFile],
    history_rows: int,
    generate_s: float,
    setup_s: float,
    profile: bool,
) -> RunReport:
    """Stage the files, run the child, then the floor on the same files."""
    stage_inbox(settings, files)
    clinics = load_clinics(settings.clinics_file)
    paths = [settings.inbox / f.clinic_id / f.name for f in files]
    sent_before = _Hook.received
    child = run_child(root, settings.home, workload, paths, profile)
    floor_s, rows = run_floor(files, clinics, root / "floor.duckdb")
    details = {name: float(s) for name, s in sorted(child["seconds"].items())}
    return RunReport(
        label=label,
        clinics=len(clinics),
        history_rows=history_rows,
        files=len(files),
        rows=rows,
        ratings=child["ratings"],
        ratings_new=child["ratings_new"],
        ratings_updated=child["ratings_updated"],
        ratings_unchanged=child["ratings_unchanged"],
        ratings_quarantined=child["ratings_quarantined"],
        statuses=child["statuses"],
        generate_s=generate_s,
        setup_s=setup_s,
        wall_s=child["wall_s"],
        stages=_group(details),
        stages_cpu=_group({name: float(s) for name, s in child["cpu"].items()}),
        details=details,
        first_call_s={k: float(v) for k, v in child["first"].items()},
        calls=child["calls"],
        phases=child["phases"],
        file_s_median=child["file_s_median"],
        file_s_max=child["file_s_max"],
        recalibrations=child["recalibrations"],
        dyads_scored_last=child["dyads_scored_last"],
        peak_rss_mb=child["peak_rss_mb"],
        baseline_rss_mb=child["baseline_rss_mb"],
        cpu_s=child["cpu_s"],
        load_avg=(child["load_avg"][0], child["load_avg"][1]),
        floor_s=floor_s,
        alert_messages=_Hook.received - sent_before,
        warehouse_mb=settings.warehouse.stat().st_size / 1e6,
        missing_wrappers=child["missing"],
    )


def _count_rows(paths: list[Path], clinics: dict[str, Clinic]) -> int:
    return sum(floor_frame(p, clinics[_clinic_of(p)]).height for p in paths)


def backfill(root: Path, scale: float, today: date, alert_url: str, profile: bool) -> RunReport:
    """Every clinic's 5-year export into an empty warehouse, one `ingest_file` each (as `alliance ingest`)."""
    started = perf_counter()
    files, profiles = generate_backfill(root / "src", scale, today)
    generate_s = perf_counter() - started
    settings = new_home(root)
    add_profiles(settings.clinics_file, with_alerts(profiles, alert_url))
    clinics, dyads = backfill_shape(scale)
    label = f"{clinics} clinics x {dyads} dyads x 260 weeks"
    return timed_run(label, root, settings, "ingest", files, 0, generate_s, 0.0, profile)


def night(root: Path, scale: float, history_rows: float, today: date, alert_url: str, profile: bool) -> RunReport:
    """A history loaded untimed, then one timed `run_nightly` over the night's files."""
    clinics = night_clinics(scale)
    started = perf_counter()
    history, files, profiles = generate_night(root / "src", clinics, history_rows, today)
    generate_s = perf_counter() - started
    settings = new_home(root)
    add_profiles(settings.clinics_file, with_alerts(profiles, alert_url))
    started = perf_counter()
    seed_history(settings, history)
    setup_s = perf_counter() - started
    history_count = _count_rows(history, load_clinics(settings.clinics_file))
    label = f"{clinics} clinics x {NIGHT_FILES} files on {history_count:,} history rows"
    return timed_run(label, root, settings, "nightly", files, history_count, generate_s, setup_s, profile)


def run(scenario: str = "night", scale: float = 1.0, workdir: Path | None = None, profile: bool = False) -> BenchReport:
    """Generate, run and measure one scenario; the work folder is removed afterwards unless one was given.

    Example: ``run("night", 0.01).runs[0].wall_s``.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}, not {scenario!r}")
    if scale <= 0:
        raise ValueError("scale must be positive")
    base = workdir or Path(tempfile.mkdtemp(prefix="alliance-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    today = date.today()
    report = BenchReport(
        scenario, scale, datetime.now(UTC).isoformat(timespec="seconds"), today.isoformat(), machine_info()
    )
    try:
        with alert_receiver() as url:
            if scenario == "backfill":
                report.runs.append(backfill(_fresh(base / "backfill"), scale, today, url, profile))
            elif scenario == "night":
                report.runs.append(night(_fresh(base / "night"), scale, NIGHT_HISTORY * scale, today, url, profile))
            else:
                for rows in SCALING_HISTORIES:
                    folder = _fresh(base / f"scaling-{rows // 1_000_000}M")
                    report.runs.append(night(folder, scale, rows * scale, today, url, profile))
    finally:
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    return report


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


# ------------------------------------------------------------------------------------------------ output


def _share(part: float, whole: float) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def targets(report: BenchReport) -> list[str]:
    """The issue's targets, judged at the scale that ran (scale < 1 is not the full-size verdict)."""
    lines = []
    at = f"at scale {report.scale:g}"
    for run in report.runs:
        if report.scenario == "backfill":
            ok = run.ratio >= TARGET_BACKFILL_RATIO
            lines.append(f"backfill throughput >= 1/3 of floor {at}: {'MET' if ok else 'MISSED'} ({run.ratio:.3f})")
        elif report.scenario == "night":
            ok = run.wall_s < TARGET_NIGHT_S and run.peak_rss_mb < TARGET_NIGHT_RSS_MB
            lines.append(
                f"night < 180 s and < 4 GB {at}: {'MET' if ok else 'MISSED'} "
                f"({run.wall_s:.1f} s, {run.peak_rss_mb:,.0f} MB)"
            )
    if report.scenario == "scaling" and report.runs:
        walls = [r.wall_s for r in report.runs]
        spread = max(walls) / min(walls) - 1
        ok = spread <= TARGET_FLATNESS
        lines.append(f"night flat within 20% over histories {at}: {'MET' if ok else 'MISSED'} (+{spread:.0%})")
    return lines


def format_report(report: BenchReport) -> str:
    """Markdown tables: totals, stages (seconds and share), stage details, phases, targets."""
    runs = report.runs
    out = [f"## {report.scenario}, scale {report.scale:g} ({report.started_at}, today {report.today})", ""]
    out += ["| run | files | rows | ratings (new/upd/unch/quar) | generate s | setup s | wall s | rows/s | "
            "floor s | floor rows/s | ratio | peak RSS MB | median file s | recal | alerts | warehouse MB | "
            "child CPU s | load avg |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in runs:
        out.append(
            f"| {r.label} | {r.files:,} | {r.rows:,} | {r.ratings:,} ({r.ratings_new:,}/{r.ratings_updated:,}/"
            f"{r.ratings_unchanged:,}/{r.ratings_quarantined:,}) | {r.generate_s:.1f} | {r.setup_s:.1f} | "
            f"{r.wall_s:.1f} | {r.rows_per_s:,.0f} | {r.floor_s:.2f} | {r.floor_rows_per_s:,.0f} | {r.ratio:.4f} | "
            f"{r.peak_rss_mb:,.0f} | {r.file_s_median:.2f} | {r.recalibrations} | {r.alert_messages} | "
            f"{r.warehouse_mb:,.0f} | {r.cpu_s:.1f} | {r.load_avg[0]:.1f} → {r.load_avg[1]:.1f} |"
        )
    out += ["", "Stages (exclusive wall seconds, share of wall, CPU seconds):", ""]
    out.append("| stage | " + " | ".join(f"run {i + 1} s | share | CPU s" for i in range(len(runs))) + " |")
    out.append("|---|" + "---:|---:|---:|" * len(runs))
    for stage in STAGES:
        cells = [
            f"{r.stages[stage]:.2f} | {_share(r.stages[stage], r.wall_s)} | {r.stages_cpu[stage]:.2f}" for r in runs
        ]
        out.append(f"| {stage} | " + " | ".join(cells) + " |")
    names = sorted({n for r in runs for n in r.details}, key=lambda n: (STAGES.index(n.split(".")[0]), n))
    out += ["", "Stage details (exclusive seconds / calls / first call s):", ""]
    out.append("| detail | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " |")
    out.append("|---|" + "---:|" * len(runs))
    for name in names:
        cells = [
            f"{r.details.get(name, 0.0):.2f} / {r.calls.get(name, 0)} / {r.first_call_s.get(name, 0.0):.2f}"
            for r in runs
        ]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    phases = sorted({p for r in runs for p in r.phases})
    if phases:
        out += ["", "Phases (inclusive seconds):", ""]
        out.append("| phase | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " |")
        out.append("|---|" + "---:|" * len(runs))
        for phase in phases:
            out.append(f"| {phase} | " + " | ".join(f"{r.phases.get(phase, 0.0):.1f}" for r in runs) + " |")
    missing = sorted({m for r in runs for m in r.missing_wrappers})
    if missing:
        out += ["", f"Not timed separately (renamed or removed in the code under test): {', '.join(missing)}"]
    out += ["", "Targets:", "", *(f"- {line}" for line in targets(report)), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.bench [--scenario NAME] [--scale K] [--workdir DIR] [--json FILE] [--profile]``."""
    parser = argparse.ArgumentParser(
        prog="bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=SCENARIOS, default="night")
    parser.add_argument("--scale", type=float, default=0.01, help="1.0 = the issue's full size (default 0.01)")
    parser.add_argument("--workdir", type=Path, help="keep generated files, homes and logs here")
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    parser.add_argument("--profile", action="store_true", help="cProfile the timed run (slower; keeps profile_*.txt)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child)
        return 0
    if args.profile and args.workdir is None:
        parser.error("--profile needs --workdir to keep the profile files")
    report = run(args.scenario, args.scale, args.workdir, args.profile)
    print(format_report(report))
    if args.json:
        args.json.write_text(report.to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
