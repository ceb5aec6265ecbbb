"""The benchmark: each scenario runs end to end at a tiny scale and reports real work and a verdict per target.

Timings are never asserted; what is asserted is the report's structure, that rows really went through, and that
the verdicts follow from the figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from datetime import date
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from alliance.clinics import load_clinics
from alliance.samples import add_profiles, generate_sample
from benchmarks.child import TreeMemory
from benchmarks.floor import floor_frame
from benchmarks.peer import run_peer
from benchmarks.report import BenchReport, RunReport, Verdict, format_report, machine_info
from benchmarks.scenarios import backfill_verdicts, history_verdicts, night_verdicts, run, run_many
from benchmarks.workload import AlertHook, alert_receiver, new_home


def _run(
    wall_s: float, floor_s: float = 1.0, rows: int = 1000, peak: float = 500.0, history: int = 0, tree: float = 0.0
) -> RunReport:
    stages = dict.fromkeys(("read", "map", "validate", "load", "commit", "score", "flag", "publish", "alert"), 0.0)
    return RunReport(
        label="run", clinics=4, history_rows=history, files=4, rows=rows, ratings=rows, ratings_new=rows,
        ratings_updated=0, ratings_unchanged=0, ratings_quarantined=0, statuses={"loaded": 4}, generate_s=0.0,
        setup_s=0.0, wall_s=wall_s, stages=stages | {"other": wall_s}, stages_cpu=stages | {"other": 0.0},
        details={"other.run": wall_s}, first_call_s={}, calls={}, phases={}, file_s_median=0.0, file_s_max=0.0,
        recalibrations=0, dyads_scored_last=0, peak_rss_mb=peak, baseline_rss_mb=100.0, cpu_s=wall_s,
        load_avg=(0.0, 0.0), floor_s=floor_s, alert_messages=0, warehouse_mb=1.0, missing_wrappers=[],
        peak_tree_mb=tree,
    )  # fmt: skip


def _verdicts(report: BenchReport) -> dict[str, Verdict]:
    return {v.target: v for v in report.verdicts}


def test_backfill_verdict_is_the_ratio_to_the_floor_against_one_third() -> None:
    fast, slow = backfill_verdicts(_run(2.5, floor_s=1.0)), backfill_verdicts(_run(3.5, floor_s=1.0))
    assert [v.met for v in fast] == [True, True] and fast[0].ratio == pytest.approx(0.4)
    assert slow[0].met is False and slow[0].ratio == pytest.approx(1 / 3.5)
    assert backfill_verdicts(_run(1.0, peak=5000.0))[1].met is False  # over 4 GB
    # its worker processes count: 3 GB here and 2 GB in a worker is 5 GB the machine must hold
    with_workers = backfill_verdicts(_run(1.0, peak=3000.0, tree=5000.0))[1]
    assert with_workers.met is False and with_workers.ratio == pytest.approx(5000 / 4096)


def test_tree_memory_counts_the_worker_processes() -> None:
    hold = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); import time; time.sleep(3)"
    with TreeMemory() as alone:
        time.sleep(1)
    with TreeMemory() as tree:
        worker = subprocess.Popen([sys.executable, "-c", hold])
        worker.wait(timeout=30)
    assert tree.peak_mb > alone.peak_mb + 250  # the worker's 300 MB, touched page by page


def test_night_verdicts_judge_the_limit_memory_and_the_prefect_overhead() -> None:
    met = night_verdicts([_run(100.0), _run(114.0)])
    assert [v.met for v in met] == [True, True, True]
    assert met[2].ratio == pytest.approx(1.14)
    missed = night_verdicts([_run(200.0), _run(240.0)])
    assert [v.met for v in missed] == [False, True, False]
    assert len(night_verdicts([_run(100.0)])) == 2  # no Prefect run, no Prefect verdict


def test_history_verdict_is_the_spread_between_the_smallest_and_largest_night() -> None:
    flat = history_verdicts([_run(10.0, history=1), _run(11.5, history=7), _run(10.5, history=20)])
    assert flat[0].met and flat[0].ratio == pytest.approx(1.15)
    assert not history_verdicts([_run(10.0), _run(12.5), _run(11.0)])[0].met


def test_report_prints_every_target_with_its_figure_ratio_and_verdict() -> None:
    report = BenchReport("latency", 0.01, "now", "2026-12-02", machine_info())
    report.verdicts.append(Verdict("file landing → alert delivered < 15 s", "worst 9.0 s", 0.6, "of the limit", True))
    report.figures["landing → alert s"] = [9.0, 7.5]
    text = format_report(report)
    assert "| file landing → alert delivered < 15 s | worst 9.0 s | 0.6 of the limit | **met** |" in text
    assert "landing → alert s: 9.00, 7.50" in text
    assert json.loads(report.to_json())["verdicts"][0]["verdict"] == "met"


def test_peer_reads_validates_loads_and_flags_every_layout(tmp_path: Path) -> None:
    sample = generate_sample(tmp_path / "out", clinics=4, weeks=26, seed=5, dyads_per_clinic=8, profile="clean")
    settings = new_home(tmp_path)
    add_profiles(settings.clinics_file, sample.profiles)
    clinics = load_clinics(settings.clinics_file)
    files = [f.path for f in sample.files if "_corrected" not in f.path.name]
    database = tmp_path / "peer.duckdb"
    out = run_peer(files, clinics, database)
    assert out["rows"] == sum(floor_frame(p, clinics[p.parent.name]).height for p in files)
    assert out["failed"] > 0  # the generator plants invalid rows in every file
    assert out["loaded"] == out["ratings"] - out["failed"]
    assert set(out["flags"]) <= {"low_score", "drop", "reliable_decrease"} and sum(out["flags"].values()) > 0
    with duckdb.connect(str(database), read_only=True) as con:
        per_clinic = dict(con.execute("SELECT clinic_id, count(*) FROM ratings GROUP BY ALL").fetchall())
        instruments = {row[0] for row in con.execute("SELECT DISTINCT instrument FROM ratings").fetchall()}
        unparsed = con.execute("SELECT count(*) FROM ratings WHERE session_date IS NULL").fetchall()[0][0]
    assert set(per_clinic) == set(clinics) and all(n > 0 for n in per_clinic.values())
    assert instruments == {"SRS", "ORS", "WAI_SR"}
    assert unparsed == 0  # every layout's dates (US, German, spreadsheet cells, JSON) were read


def test_unknown_scenario_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scenario must be one of"):
        run_many(["nightly"], 0.01, tmp_path)
    assert not any(tmp_path.iterdir())


def test_cli_bench_refuses_an_unknown_scenario() -> None:
    from alliance.cli import app

    result = CliRunner().invoke(app, ["bench", "--scenario", "nightly"])
    assert result.exit_code != 0


@pytest.mark.slow
def test_backfill_runs_the_real_ingest_against_the_floor(tmp_path: Path) -> None:
    report = run("backfill", 0.0005, tmp_path)
    (ours,) = report.runs
    assert ours.statuses == {"loaded": 4} and ours.ratings_new > 0 and ours.floor_s > 0
    assert [v.target for v in report.verdicts] == ["backfill throughput ≥ 1/3 of the floor", "peak memory < 4 GB"]
    assert "ratio" in format_report(report)


@pytest.mark.slow
def test_night_runs_the_plain_function_and_the_prefect_flow_on_the_same_home(tmp_path: Path) -> None:
    report = run("night", 0.004, tmp_path)
    plain, flow = report.runs
    assert plain.history_rows > 0 and plain.ratings_new > 0
    assert (flow.ratings, flow.ratings_new, flow.ratings_quarantined) == (
        plain.ratings, plain.ratings_new, plain.ratings_quarantined,
    )  # fmt: skip
    assert len(report.verdicts) == 3 and report.verdicts[2].target.startswith("Prefect nightly flow")
    data = json.loads(report.to_json())
    assert data["scenario"] == "night" and len(data["runs"]) == 2


@pytest.mark.slow
def test_history_runs_the_night_over_three_growing_histories(tmp_path: Path) -> None:
    report = run("scaling", 0.0005, tmp_path)  # the scenario's earlier name still works
    assert report.scenario == "history"
    histories = [r.history_rows for r in report.runs]
    assert len(histories) == 3 and histories == sorted(histories) and histories[0] > 0
    assert all(r.ratings_new > 0 for r in report.runs)
    assert report.verdicts[0].target == "night flat within ±20% over histories"


@pytest.mark.slow
def test_peer_scenario_runs_both_on_the_same_exports(tmp_path: Path) -> None:
    report = run("peer", 0.0005, tmp_path)
    (ours,) = report.runs
    assert report.figures["peer rows / ratings / failed GX / loaded"][0] == ours.rows
    assert report.figures["peer wall s"] > 0 and ours.ratings_new > 0
    assert report.verdicts[0].ratio == pytest.approx(report.figures["peer wall s"] / ours.wall_s)


@pytest.mark.slow
def test_latency_times_landings_under_serve_to_the_webhook(tmp_path: Path) -> None:
    report = run("latency", 0.0005, tmp_path)
    assert report.figures["landings"] == 4 and report.figures["history ratings"] > 0
    assert len(report.figures["landing → ingested s"]) == 4  # every landed file was taken and archived
    assert report.verdicts[0].target.startswith("file landing → alert delivered")
    assert date.fromisoformat(report.today)


def test_the_alert_receiver_answers_each_message_as_late_as_asked() -> None:
    """``--alert-delay-ms``: the benchmark's receiver stands in for a remote channel that takes its time."""
    for delay_s in (0.2, 0.0):
        with alert_receiver(delay_s) as url:
            before = AlertHook.received
            started = time.perf_counter()
            request = urllib.request.Request(url.replace("json://", "http://"), data=b"{}", method="POST")
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 200
            assert AlertHook.received == before + 1
            assert (time.perf_counter() - started >= delay_s) and AlertHook.delay_s == delay_s
