"""Snapshots: per-clinic and network files, readable by DuckDB 1.5 tools, never blocking a run."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from alliance.home import init_home
from alliance.samples import SampleSet, add_profiles, generate_sample
from alliance.settings import Settings, load_settings
from alliance.storage import Warehouse
from flows.pipeline import ingest_file
from flows.reviews import list_flags, review_flag
from tests.conftest import TEST_KEY, add_clinic
from tests.test_hostile import NORTH

DUCKDB_15 = Path(sys.executable).with_name("duckdb")  # the PyPI duckdb-cli 1.5.x, a dev dependency


@pytest.fixture
def home(tmp_path: Path) -> tuple[Settings, SampleSet]:
    settings = load_settings(tmp_path / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(tmp_path / "drop", clinics=4, weeks=12, seed=5, dyads_per_clinic=12, profile="clean")
    add_profiles(settings.clinics_file, sample.profiles)
    return settings, sample


def ingest(settings: Settings, sample: SampleSet, clinic_id: str) -> None:
    for file in sample.files:
        if file.clinic_id == clinic_id:
            target = settings.inbox / clinic_id / file.path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(file.path, target)
            assert ingest_file(target, settings).status == "loaded"


def test_clinic_snapshot_holds_only_that_clinic(home: tuple[Settings, SampleSet]) -> None:
    settings, sample = home
    for clinic in ("northside", "rheinpark"):
        ingest(settings, sample, clinic)
    snapshots = Warehouse(settings.warehouse).snapshots
    with duckdb.connect(str(snapshots / "clinic-northside.duckdb"), read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert {"ratings", "flags", "client_refs", "review_queue", "dyad_trajectory"} <= tables
        for table in ("ratings", "flags", "quarantine", "exports", "dyads", "client_refs"):
            assert con.execute(f"SELECT DISTINCT clinic_id FROM {table}").fetchall() == [("northside",)], table
        refs = {r[0] for r in con.execute("SELECT client_ref FROM client_refs").fetchall()}
        assert {d.client_ref for d in sample.dyads if d.clinic_id == "northside"} <= refs
    with duckdb.connect(str(snapshots / "network.duckdb"), read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert "client_refs" not in tables
        assert {r[0] for r in con.execute("SELECT DISTINCT clinic_id FROM ratings").fetchall()} == {
            "northside",
            "rheinpark",
        }
        text = " ".join(
            str(r) for t in ("ratings", "flags", "quarantine") for r in con.execute(f"SELECT * FROM {t}").fetchall()
        )
        assert not any(d.client_ref in text for d in sample.dyads)
    assert not (snapshots / "clinic-northside.duckdb").stat().st_mode & 0o222  # read-only file


def test_review_notes_stay_out_of_the_network_snapshot(home: tuple[Settings, SampleSet]) -> None:
    settings, sample = home
    ingest(settings, sample, "northside")
    flag_id = list_flags(settings, status="open")["flag_id"][0]
    review_flag(settings, flag_id, "acknowledged", "Dr Lee", "spoke with client CANARY-note-1")
    snapshots = Warehouse(settings.warehouse).snapshots
    with duckdb.connect(str(snapshots / "network.duckdb"), read_only=True) as con:
        assert con.execute("SELECT reviewed_by, note FROM reviews").fetchall() == [("Dr Lee", None)]
    with duckdb.connect(str(snapshots / "clinic-northside.duckdb"), read_only=True) as con:
        assert con.execute("SELECT note FROM reviews").fetchall() == [("spoke with client CANARY-note-1",)]


@pytest.mark.skipif(not DUCKDB_15.exists(), reason="duckdb-cli 1.5 (dev dependency) not installed")
def test_duckdb_15_cli_opens_snapshots_but_not_the_working_file(home: tuple[Settings, SampleSet]) -> None:
    settings, sample = home
    ingest(settings, sample, "northside")
    version = subprocess.run([DUCKDB_15, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("v1.5")
    snapshot = Warehouse(settings.warehouse).snapshot_path("northside")
    ok = subprocess.run(
        [DUCKDB_15, "-readonly", "-csv", str(snapshot), "SELECT count(*) FROM review_queue; SELECT count(*) FROM ratings"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert int(ok.stdout.split()[-1]) > 0
    refused = subprocess.run(
        [DUCKDB_15, "-readonly", str(settings.warehouse), "SELECT 1"], capture_output=True, text=True
    )
    assert refused.returncode != 0  # the 2.x working file is for the pipeline only


READER = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1], read_only=True)
    print(con.execute("SELECT count(*) FROM ratings").fetchall()[0][0], flush=True)
    sys.stdin.readline()  # hold the snapshot open until told
    print(con.execute("SELECT count(*) FROM ratings").fetchall()[0][0], flush=True)
    """
)


def test_a_reader_holding_a_snapshot_never_blocks_a_run(home: tuple[Settings, SampleSet]) -> None:
    settings, sample = home
    ingest(settings, sample, "northside")
    snapshot = Warehouse(settings.warehouse).snapshot_path()
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(snapshot)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert reader.stdout is not None and reader.stdin is not None
        before = int(reader.stdout.readline())
        started = time.monotonic()
        ingest(settings, sample, "harbor")  # writes the warehouse and replaces the snapshot the reader holds
        assert time.monotonic() - started < 60
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert int(reader.stdout.readline()) == before  # the open reader keeps its consistent old view
    finally:
        reader.kill()
        reader.wait()
    with duckdb.connect(str(snapshot), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM ratings").fetchall()[0][0] > before


def test_quarantined_values_stay_out_of_the_network_snapshot(settings: Settings) -> None:
    add_clinic(settings, NORTH)
    inbox = settings.inbox / "north"
    inbox.mkdir(parents=True)
    path = inbox / "typed.csv"
    path.write_text(
        "Client ID,Clinician,Session Date,Session #,SRS Relationship,SRS Goals,SRS Approach,SRS Overall\n"
        "C1,t1,01/05/2026,1,9,9,9,9\nC2,t1,01/05/2026,1,9,Jane CANARY-q1,9,9\nC3,t1,01/06/2026,1,9,9,9,9\n",
        encoding="utf-8",
    )
    assert ingest_file(path, settings).rows_quarantined == 1
    warehouse = Warehouse.of(settings)
    with duckdb.connect(str(warehouse.snapshot_path()), read_only=True) as con:
        rows = con.execute('SELECT source_line, rules, reasons, "values" FROM quarantine').fetchall()
    reasons = [
        "line 3, column 'SRS Goals' (srs_goals): is text, not a number",
        "line 3, total: is empty, and not every item is there to compute it",
    ]
    assert rows == [(3, ["not_a_number:srs_goals", "missing:total"], reasons, None)]
    with duckdb.connect(str(warehouse.snapshot_path("north")), read_only=True) as con:
        (own,) = con.execute('SELECT "values"::VARCHAR FROM quarantine').fetchone() or ("",)
    assert "CANARY-q1" in own  # the clinic's own snapshot keeps them, for its reviewers
