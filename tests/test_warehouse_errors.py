"""The warehouse's own troubles: a reader on the working file, a damaged file or log, a bad setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alliance.cli import app
from alliance.errors import WarehouseBusy
from alliance.settings import Settings, load_settings
from alliance.storage import Warehouse
from flows.nightly import run_nightly
from flows.pipeline import ingest_file
from tests.conftest import put
from tests.test_pipeline import ROWS

# A second process holding a read-only connection to the working file, as a duckdb shell or BI tool would.
READER = (
    "import duckdb, sys, time\n"
    "con = duckdb.connect(sys.argv[1], read_only=True)\n"
    "print('open', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
)

UNCHECKPOINTED = (
    "import duckdb, os, sys\n"
    "con = duckdb.connect(sys.argv[1])\n"
    "con.execute(\"SET checkpoint_threshold = '1GB'\")\n"
    "con.execute(\"INSERT INTO audit SELECT now(), 'x', 'y', 'z', NULL FROM range(500)\")\n"
    "os._exit(0)\n"
)


def hold_open(path: Path, seconds: float) -> subprocess.Popen[str]:
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert reader.stdout is not None and reader.stdout.readline().strip() == "open"
    return reader


def test_a_reader_on_the_working_file_makes_a_writer_wait_then_fail_clearly(two_clinics: Settings) -> None:
    ingest_file(put(two_clinics, "north", "a.csv", ROWS), two_clinics)
    reader = hold_open(two_clinics.warehouse, 120)
    try:
        warehouse = Warehouse(two_clinics.warehouse, lock_timeout_s=1.0)
        with pytest.raises(WarehouseBusy) as info, warehouse.writer():
            pass
    finally:
        reader.kill()
        reader.wait()
    message = str(info.value)
    assert "another process has the warehouse file open" in message
    assert f"readers belong on the snapshots in {warehouse.snapshots}/" in message
    assert "Conflicting lock" not in message


def test_a_writer_waits_for_a_reader_that_closes_within_the_wait(two_clinics: Settings) -> None:
    ingest_file(put(two_clinics, "north", "a.csv", ROWS), two_clinics)
    reader = hold_open(two_clinics.warehouse, 1.5)
    try:
        # the default wait is far longer than the reader stays: the run simply goes on after it
        result = ingest_file(put(two_clinics, "north", "b.csv", [r.replace("C-1", "C-8") for r in ROWS]), two_clinics)
    finally:
        reader.wait(timeout=60)
    assert result.status == "loaded"


@pytest.mark.parametrize("damage", ["warehouse", "wal"])
def test_a_damaged_warehouse_or_log_is_one_error_line_that_says_restore(two_clinics: Settings, damage: str) -> None:
    ingest_file(put(two_clinics, "north", "a.csv", ROWS), two_clinics)
    if damage == "warehouse":
        with two_clinics.warehouse.open("r+b") as handle:
            handle.seek(0)
            handle.write(b"\x00garbage" * 512)
    else:  # a process died with work in the log, and the log was then damaged
        subprocess.run([sys.executable, "-c", UNCHECKPOINTED, str(two_clinics.warehouse)], check=True)
        wal = two_clinics.warehouse.with_name("warehouse.duckdb.wal")
        data = bytearray(wal.read_bytes())
        for i in range(len(data) // 2, len(data) // 2 + 40):
            data[i] ^= 0xFF
        wal.write_bytes(bytes(data))
    result = CliRunner().invoke(app, ["verify", "--home", str(two_clinics.home)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output
    assert "alliance restore" in lines[0]


def test_a_bad_setting_in_the_environment_is_one_error_line(
    two_clinics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLIANCE_LOCK_TIMEOUT_S", "ten minutes")
    result = CliRunner().invoke(app, ["status", "--home", str(two_clinics.home)])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: bad setting in the environment: ALLIANCE_LOCK_TIMEOUT_S:")
    assert line.endswith("fix or unset it")


def test_the_writer_s_duckdb_memory_is_the_setting_and_a_night_runs_within_a_small_one(
    two_clinics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB would take 80% of the machine's memory; the writer holds ALLIANCE_DUCKDB_MEMORY (2GB by default)
    and spills beyond it. A night loads, scores and publishes within 64 MB; a value DuckDB cannot read is refused
    before any run starts."""
    with Warehouse.of(load_settings(two_clinics.home)).writer() as writer:
        assert writer.con.execute("SELECT current_setting('memory_limit')").fetchall() == [("1.8 GiB",)]
    monkeypatch.setenv("ALLIANCE_DUCKDB_MEMORY", "64MB")
    settings = load_settings(two_clinics.home)
    put(settings, "north", "night.csv", ROWS)
    report = run_nightly(settings)
    assert [r.status for r in report.exports] == ["loaded"] and report.scoring is not None
    assert (Warehouse.of(settings).snapshots / "clinic-north.duckdb").exists()
    with Warehouse.of(settings).writer() as writer:
        assert writer.con.execute("SELECT current_setting('memory_limit')").fetchall() == [("61.0 MiB",)]
    for bad in ("2GB'; DROP TABLE ratings; --", "0MB", "lots"):
        monkeypatch.setenv("ALLIANCE_DUCKDB_MEMORY", bad)
        result = CliRunner().invoke(app, ["status", "--home", str(two_clinics.home)])
        (line,) = result.output.strip().splitlines()
        assert result.exit_code == 1 and line.startswith(
            "Error: bad setting in the environment: ALLIANCE_DUCKDB_MEMORY:"
        )


def test_half_written_snapshots_left_by_an_earlier_run_are_cleaned_up(two_clinics: Settings) -> None:
    snapshots = two_clinics.home / "snapshots"
    snapshots.mkdir()
    leftovers = [snapshots / ".clinic-closed.duckdb.partial", snapshots / ".network.duckdb.partial.wal"]
    for leftover in leftovers:  # what a run killed while publishing, or out of space, leaves
        leftover.write_bytes(b"\0" * 4096)
    ingest_file(put(two_clinics, "north", "a.csv", ROWS), two_clinics)
    assert not [p for p in leftovers if p.exists()]
    assert (snapshots / "clinic-north.duckdb").exists()
