"""One writer: overlapping runs in two processes both complete, one after the other, losing nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from filelock import FileLock

from alliance.errors import WarehouseBusy
from alliance.home import init_home
from alliance.samples import add_profiles, generate_sample
from alliance.settings import load_settings
from alliance.storage import Warehouse
from flows.pipeline import ingest_file
from tests.conftest import TEST_KEY

ALLIANCE = [sys.executable, "-m", "alliance"]


def test_lock_wait_is_bounded_with_a_clear_message(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "warehouse.duckdb", lock_timeout_s=0.3)
    with FileLock(warehouse.lock_path), pytest.raises(WarehouseBusy) as info, warehouse.writer():
        pass
    assert "another run has held the writer lock for over 0 s" in str(info.value)
    assert str(warehouse.lock_path) in str(info.value)


def test_nightly_and_file_arrival_overlap_in_two_processes(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(settings.inbox, clinics=4, weeks=30, seed=9, dyads_per_clinic=80, profile="clean")
    add_profiles(settings.clinics_file, sample.profiles)
    harbor = next(f for f in sample.files if f.clinic_id == "harbor")
    env = {**os.environ, "ALLIANCE_HOME": str(settings.home)}
    # the nightly sweep ingests everything else while a file-arrival run ingests one file
    nightly = subprocess.Popen(
        [*ALLIANCE, "nightly"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    arrival = subprocess.Popen(
        [*ALLIANCE, "ingest", str(harbor.path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out_nightly, _ = nightly.communicate(timeout=300)
    out_arrival, _ = arrival.communicate(timeout=300)
    assert nightly.returncode == 0, out_nightly
    assert arrival.returncode == 0, out_arrival
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        ledger = con.execute("SELECT file_name, count(*) FROM exports GROUP BY 1").fetchall()
        assert sorted(name for name, _ in ledger) == sorted(f.path.name for f in sample.files)
        assert all(n == 1 for _, n in ledger)
        expected_new = sum(f.rows_expected - f.invalid_expected for f in sample.files if not f.corrected_expected)
        assert con.execute("SELECT count(*) FROM ratings").fetchall()[0][0] == expected_new
        assert con.execute(
            "SELECT count(*) FROM (SELECT clinic_id, client_id, therapist_id, instrument, session_date, session_number "
            "FROM ratings GROUP BY ALL HAVING count(*) > 1)"
        ).fetchall() == [(0,)]
    # running both again converges: nothing new
    assert ingest_file(next(settings.archive.glob("harbor/*")), settings, clinic_id="harbor").status == "duplicate"
