"""What a benchmark run reports: each timed run, the issue's targets with their verdicts, the machine, as markdown."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.clock import STAGES


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
    peak_tree_mb: float = 0.0  # with its worker processes, sampled (0: not measured)

    @property
    def peak_mb(self) -> float:
        """What the run held at most: its own high-water mark, or with its workers when that was more."""
        return max(self.peak_rss_mb, self.peak_tree_mb)

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
class Verdict:
    """One target of the issue judged on one run: what was asked, what was measured, their ratio, met or not.

    ``ratio`` reads as ``ratio_of`` says (e.g. "of the floor", "of the limit"); ``met`` decides, not the ratio.
    """

    target: str
    measured: str
    ratio: float
    ratio_of: str
    met: bool

    @property
    def verdict(self) -> str:
        return "met" if self.met else "missed"


@dataclass
class BenchReport:
    """Every run of one scenario at one scale, its targets judged, with the machine it ran on."""

    scenario: str
    scale: float
    started_at: str
    today: str
    machine: dict[str, str]
    runs: list[RunReport] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)  # the scenario's own numbers (peer stages, latencies)

    def to_json(self) -> str:
        data = asdict(self)
        for run, out in zip(self.runs, data["runs"], strict=True):
            out |= {"rows_per_s": run.rows_per_s, "floor_rows_per_s": run.floor_rows_per_s, "ratio": run.ratio}
        data["verdicts"] = [asdict(v) | {"verdict": v.verdict} for v in self.verdicts]
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


def _share(part: float, whole: float) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def targets(report: BenchReport) -> list[str]:
    """One line per target: what it asks, the figure, the ratio and the verdict at the scale that ran."""
    at = f"at scale {report.scale:g}"
    return [f"{v.target} {at}: {v.verdict.upper()} ({v.measured}; {v.ratio:.3g} {v.ratio_of})" for v in report.verdicts]


def format_targets(report: BenchReport) -> list[str]:
    """The targets as a table (scale < 1 is a verdict at that scale, not the full-size one)."""
    out = [f"Targets at scale {report.scale:g}:", "", "| target | measured | ratio | verdict |", "|---|---|---:|---|"]
    for v in report.verdicts:
        out.append(f"| {v.target} | {v.measured} | {v.ratio:.3g} {v.ratio_of} | **{v.verdict}** |")
    return out


def format_figures(figures: dict[str, Any]) -> list[str]:
    """A scenario's own figures (the peer's stages, latencies), one line each."""
    out = []
    for name, value in figures.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {_number(v)}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(_number(v) for v in value)
        out.append(f"- {name}: {_number(value)}")
    return out


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_report(report: BenchReport) -> str:
    """Markdown tables: totals, stages (seconds and share), stage details, phases, targets."""
    runs = report.runs
    out = [f"## {report.scenario}, scale {report.scale:g} ({report.started_at}, today {report.today})", ""]
    if runs:
        out += _run_tables(runs)
    if report.figures:
        out += ["", "Figures:", "", *format_figures(report.figures)]
    out += ["", *format_targets(report), ""]
    return "\n".join(out)


def _run_tables(runs: list[RunReport]) -> list[str]:
    """Totals, stages (seconds and share), stage details and phases of the timed runs."""
    out: list[str] = []
    out += ["| run | files | rows | ratings (new/upd/unch/quar) | generate s | setup s | wall s | rows/s | "
            "floor s | floor rows/s | ratio | peak RSS MB (with workers) | median file s | recal | alerts | "
            "warehouse MB | child CPU s | load avg |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in runs:
        out.append(
            f"| {r.label} | {r.files:,} | {r.rows:,} | {r.ratings:,} ({r.ratings_new:,}/{r.ratings_updated:,}/"
            f"{r.ratings_unchanged:,}/{r.ratings_quarantined:,}) | {r.generate_s:.1f} | {r.setup_s:.1f} | "
            f"{r.wall_s:.1f} | {r.rows_per_s:,.0f} | {r.floor_s:.2f} | {r.floor_rows_per_s:,.0f} | {r.ratio:.4f} | "
            f"{r.peak_rss_mb:,.0f} ({r.peak_tree_mb:,.0f}) | {r.file_s_median:.2f} | {r.recalibrations} | "
            f"{r.alert_messages} | {r.warehouse_mb:,.0f} | {r.cpu_s:.1f} | {r.load_avg[0]:.1f} → {r.load_avg[1]:.1f} |"
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
    return out
