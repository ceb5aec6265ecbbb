"""Keys and audit, verify, backup and restore: the promises a data team relies on."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from alliance.cli import app
from alliance.home import init_home
from alliance.samples import add_profiles, generate_sample
from alliance.settings import Settings, load_settings
from alliance.storage import Warehouse, table_checksums
from flows.pipeline import ingest_file
from flows.reviews import list_flags, review_flag
from tests.conftest import TEST_KEY

runner = CliRunner()


@pytest.fixture
def loaded(tmp_path: Path) -> Settings:
    settings = load_settings(tmp_path / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(settings.inbox, clinics=4, weeks=12, seed=6, dyads_per_clinic=15, profile="clean")
    add_profiles(settings.clinics_file, sample.profiles)
    for file in sample.files:
        ingest_file(file.path, settings)
    review_flag(settings, list_flags(settings)["flag_id"][0], "acknowledged", "Dr Lee", "seen")
    return settings


def checksums(settings: Settings) -> dict[str, tuple[int, str]]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        return table_checksums(con)


def test_verify_passes_on_a_real_warehouse_and_names_each_problem(loaded: Settings) -> None:
    home = str(loaded.home)
    result = runner.invoke(app, ["verify", "--home", home])
    assert result.exit_code == 0, result.output
    with duckdb.connect(str(loaded.warehouse)) as con:  # tamper as a careless hand-edit would
        con.execute("DELETE FROM quarantine WHERE rowid IN (SELECT min(rowid) FROM quarantine)")
        con.execute("INSERT INTO ratings SELECT * FROM ratings LIMIT 1")
    snapshot = Warehouse(loaded.warehouse).snapshot_path("northside")
    snapshot.chmod(0o644)
    with snapshot.open("ab") as handle:
        handle.write(b"\0")
    result = runner.invoke(app, ["verify", "--home", home])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert "Error: 1 exports whose quarantine rows differ from rows_quarantined" in lines
    assert "Error: 1 ratings stored twice under one natural key" in lines
    assert "Error: snapshot clinic-northside.duckdb does not match the checksum recorded when it was published" in lines


def test_audit_records_reviews_publications_and_alerts(loaded: Settings) -> None:
    with duckdb.connect(str(loaded.warehouse), read_only=True) as con:
        actions = dict(con.execute("SELECT action, count(*) FROM audit GROUP BY 1").fetchall())
        review = con.execute("SELECT actor, detail FROM audit WHERE action = 'review'").fetchall()
    assert actions["publish_snapshot"] >= 5 and actions["review"] == 1
    assert review == [("Dr Lee", "open -> acknowledged")]


def test_backup_restore_drill_rederives_identical_checksums(loaded: Settings, tmp_path: Path) -> None:
    before = checksums(loaded)
    result = runner.invoke(app, ["backup", "--to", str(tmp_path / "backups"), "--home", str(loaded.home)])
    assert result.exit_code == 0, result.output
    (folder,) = (tmp_path / "backups").iterdir()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "pseudonym.key").stat().st_mode) == 0o600
    fresh = tmp_path / "restored"
    result = runner.invoke(app, ["restore", str(folder), "--home", str(fresh)])
    assert result.exit_code == 0, result.output
    restored = load_settings(fresh)
    assert checksums(restored) == before
    assert restored.key_file.read_text() == loaded.key_file.read_text()
    assert runner.invoke(app, ["verify", "--home", str(fresh)]).exit_code == 0
    assert Warehouse(restored.warehouse).snapshot_path("harbor").exists()
    # refuses to overwrite without --force, and refuses a damaged backup
    again = runner.invoke(app, ["restore", str(folder), "--home", str(fresh)])
    assert again.exit_code == 1 and "pass --force" in again.output
    with (folder / "warehouse.duckdb").open("ab") as handle:
        handle.write(b"x")
    damaged = runner.invoke(app, ["restore", str(folder), "--home", str(fresh), "--force"])
    assert damaged.exit_code == 1 and "changed since the backup was made" in damaged.output
    assert os.path.exists(restored.warehouse) and checksums(restored) == before
