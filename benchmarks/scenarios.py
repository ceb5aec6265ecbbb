"""The scenarios, one per target of the issue: each generates its workload, times it and judges its targets."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from time import perf_counter

from alliance.clinics import Clinic, load_clinics
from alliance.samples import add_profiles
from alliance.settings import Settings, load_settings
from benchmarks.child import run_child
from benchmarks.clock import STAGES
from benchmarks.floor import floor_frame, run_floor
from benchmarks.report import BenchReport, RunReport, Verdict, machine_info
from benchmarks.workload import (
    HISTORY_ROWS,
    NIGHT_FILES,
    NIGHT_HISTORY,
    AlertHook,
    TimedFile,
    alert_receiver,
    backfill_shape,
    clinic_of,
    generate_backfill,
    generate_night,
    new_home,
    night_clinics,
    seed_history,
    stage_inbox,
    with_alerts,
)

SCENARIOS = ("backfill", "night", "history", "latency", "peer")
ALIASES = {"scaling": "history", "all": "all"}  # `scaling` was the history scenario's first name
TARGET_BACKFILL_RATIO = 1 / 3
TARGET_RSS_MB = 4096.0
TARGET_NIGHT_S = 180.0
TARGET_PREFECT_OVERHEAD = 0.15
TARGET_FLATNESS = 0.20
TARGET_LATENCY_S = 15.0


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
    floor: bool = True,
) -> RunReport:
    """Stage the files, run the child in root, then (unless ``floor`` is off) the floor on the same files."""
    root.mkdir(parents=True, exist_ok=True)
    stage_inbox(settings, files)
    clinics = load_clinics(settings.clinics_file)
    paths = [settings.inbox / f.clinic_id / f.name for f in files]
    sent_before = AlertHook.received
    child = run_child(root, settings.home, workload, paths, profile)
    if floor:
        floor_s, rows = run_floor(files, clinics, root / "floor.duckdb")
    else:
        floor_s, rows = 0.0, _count_rows([f.source for f in files], clinics)
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
        alert_messages=AlertHook.received - sent_before,
        warehouse_mb=settings.warehouse.stat().st_size / 1e6,
        missing_wrappers=child["missing"],
        peak_tree_mb=child["peak_tree_mb"],
    )


def _count_rows(paths: list[Path], clinics: dict[str, Clinic]) -> int:
    return sum(floor_frame(p, clinics[clinic_of(p)]).height for p in paths)


# ------------------------------------------------------------------------------------------------ workloads


def backfill_run(root: Path, scale: float, today: date, alert_url: str, profile: bool) -> RunReport:
    """Every clinic's 5-year export into an empty warehouse, as `alliance ingest FILE...` loads them."""
    started = perf_counter()
    files, profiles = generate_backfill(root / "src", scale, today)
    generate_s = perf_counter() - started
    settings = new_home(root)
    add_profiles(settings.clinics_file, with_alerts(profiles, alert_url))
    clinics, dyads = backfill_shape(scale)
    label = f"{clinics} clinics x {dyads} dyads x 260 weeks"
    return timed_run(label, root / "run", settings, "ingest", files, 0, generate_s, 0.0, profile)


def night_runs(
    root: Path, scale: float, history_rows: float, today: date, alert_url: str, profile: bool, prefect: bool
) -> list[RunReport]:
    """A history loaded untimed, then one timed `run_nightly` over the night's files; with ``prefect``, the
    same night again on a copy of the same home through the Prefect nightly flow."""
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
    twin = None
    if prefect:
        shutil.copytree(settings.home, root / "home-prefect")
        twin = load_settings(root / "home-prefect")
    label = f"{clinics} clinics x {NIGHT_FILES} files on {history_count:,} history rows"
    runs = [timed_run(label, root / "plain", settings, "nightly", files, history_count, generate_s, setup_s, profile)]
    if twin is not None:
        label = f"{label}, Prefect nightly flow (stages summed over its task threads)"
        runs.append(timed_run(label, root / "prefect", twin, "prefect-nightly", files, history_count, generate_s,
                              setup_s, profile, floor=False))  # fmt: skip
    return runs


# ------------------------------------------------------------------------------------------------ verdicts


def memory_verdict(run: RunReport) -> Verdict:
    measured = f"{run.peak_rss_mb:,.0f} MB, {run.peak_tree_mb:,.0f} MB with its worker processes"
    return Verdict("peak memory < 4 GB", measured, run.peak_mb / TARGET_RSS_MB, "of the limit",
                   run.peak_mb < TARGET_RSS_MB)  # fmt: skip


def backfill_verdicts(run: RunReport) -> list[Verdict]:
    throughput = Verdict(
        "backfill throughput ≥ 1/3 of the floor",
        f"{run.rows_per_s:,.0f} rows/s vs floor {run.floor_rows_per_s:,.0f} rows/s "
        f"({run.rows:,} rows, {run.wall_s:.1f} s)",
        run.ratio,
        "of the floor",
        run.ratio >= TARGET_BACKFILL_RATIO,
    )
    return [throughput, memory_verdict(run)]


def night_verdicts(runs: list[RunReport]) -> list[Verdict]:
    plain = runs[0]
    out = [
        Verdict("night end to end < 3 min", f"{plain.wall_s:.1f} s ({plain.files:,} files, {plain.rows:,} rows)",
                plain.wall_s / TARGET_NIGHT_S, "of the limit", plain.wall_s < TARGET_NIGHT_S),
        memory_verdict(plain),
    ]  # fmt: skip
    if len(runs) > 1:
        flow = runs[1]
        ratio = flow.wall_s / plain.wall_s if plain.wall_s else 0.0
        out.append(Verdict("Prefect nightly flow ≤ 15% slower than the plain function",
                           f"{flow.wall_s:.1f} s vs {plain.wall_s:.1f} s", ratio, "× the plain function",
                           ratio <= 1 + TARGET_PREFECT_OVERHEAD))  # fmt: skip
    return out


def history_verdicts(runs: list[RunReport]) -> list[Verdict]:
    walls = [r.wall_s for r in runs]
    spread = max(walls) / min(walls) if min(walls) else 0.0
    measured = " → ".join(f"{r.wall_s:.1f} s at {r.history_rows:,}" for r in runs)
    return [Verdict("night flat within ±20% over histories", measured + " history rows", spread,
                    "largest / smallest night", spread - 1 <= TARGET_FLATNESS)]  # fmt: skip


# ------------------------------------------------------------------------------------------------ scenarios


def backfill(report: BenchReport, base: Path, url: str, profile: bool) -> None:
    run = backfill_run(_fresh(base / "backfill"), report.scale, date.fromisoformat(report.today), url, profile)
    report.runs.append(run)
    report.verdicts += backfill_verdicts(run)


def night(report: BenchReport, base: Path, url: str, profile: bool) -> None:
    today = date.fromisoformat(report.today)
    report.runs += night_runs(_fresh(base / "night"), report.scale, NIGHT_HISTORY * report.scale, today, url,
                              profile, prefect=True)  # fmt: skip
    report.verdicts += night_verdicts(report.runs)


def history(report: BenchReport, base: Path, url: str, profile: bool) -> None:
    today = date.fromisoformat(report.today)
    for rows in HISTORY_ROWS:
        folder = _fresh(base / f"history-{rows // 1_000_000}M")
        report.runs += night_runs(folder, report.scale, rows * report.scale, today, url, profile, prefect=False)
    report.verdicts += history_verdicts(report.runs)


def latency(report: BenchReport, base: Path, url: str, profile: bool) -> None:
    from benchmarks.latency import landing_to_alert

    landing_to_alert(report, _fresh(base / "latency"), url)


def peer(report: BenchReport, base: Path, url: str, profile: bool) -> None:
    from benchmarks.peer import side_by_side

    side_by_side(report, _fresh(base / "peer"), url, profile)


RUNNERS: dict[str, Callable[[BenchReport, Path, str, bool], None]] = {
    "backfill": backfill, "night": night, "history": history, "latency": latency, "peer": peer,
}  # fmt: skip


def run(scenario: str = "night", scale: float = 1.0, workdir: Path | None = None, profile: bool = False) -> BenchReport:
    """Generate, run and measure one scenario; the work folder is removed afterwards unless one was given.

    Example: ``run("night", 0.01).verdicts[0].met``.
    """
    return run_many([scenario], scale, workdir, profile)[0]


def run_many(
    scenarios: list[str],
    scale: float = 1.0,
    workdir: Path | None = None,
    profile: bool = False,
    alert_delay_s: float = 0.0,
) -> list[BenchReport]:
    """Each scenario in turn (``all`` is every one), one report each, sharing one alert receiver (which answers
    each message after ``alert_delay_s``, as a remote channel would)."""
    names = [ALIASES.get(s, s) for s in scenarios]
    names = [n for s in names for n in (SCENARIOS if s == "all" else (s,))]
    unknown = [n for n in names if n not in RUNNERS]
    if unknown:
        raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)} or all, not {unknown[0]!r}")
    if scale <= 0:
        raise ValueError("scale must be positive")
    base = workdir or Path(tempfile.mkdtemp(prefix="alliance-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    reports = []
    try:
        with alert_receiver(alert_delay_s) as url:
            for name in names:
                today = date.today()
                report = BenchReport(name, scale, datetime.now(UTC).isoformat(timespec="seconds"),
                                     today.isoformat(), machine_info())  # fmt: skip
                if alert_delay_s:
                    report.figures["alert channel delay ms"] = round(alert_delay_s * 1000)
                RUNNERS[name](report, base, url, profile)
                reports.append(report)
    finally:
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    return reports


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder
