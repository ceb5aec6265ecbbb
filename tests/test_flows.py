"""The Prefect flow under the real test harness (one harness per session, started on first use)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import duckdb
import pytest

from alliance.home import init_home
from alliance.samples import add_profiles, generate_sample
from alliance.settings import Settings, load_settings
from flows.events import ingest_parameters
from flows.ingest import ingest_export
from flows.watcher import InboxWatcher, emit_to_prefect
from tests.conftest import TEST_KEY, add_clinic
from tests.receivers import Hook
from tests.test_pipeline import NORTH, ROWS, drop


@pytest.mark.prefect
def test_ingest_export_flow_loads_a_file(settings: Settings, prefect_api: None) -> None:
    add_clinic(settings, NORTH)
    (settings.inbox / "north").mkdir()
    path = drop(settings, "a.csv", ROWS)
    state = ingest_export(str(path), home=str(settings.home), return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert summary["status"] == "loaded" and summary["rows_new"] == 5 and summary["rows_quarantined"] == 1
    assert "C-101" not in str(summary)  # results carry counts, never client references
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM ratings").fetchall() == [(5,)]
    again = ingest_export(str(drop(settings, "a.csv", ROWS)), home=str(settings.home))
    assert again["status"] == "duplicate"


@pytest.mark.prefect
def test_a_file_dropped_in_the_inbox_is_loaded_flagged_and_alerted(
    tmp_path: Path, prefect_api: None, hook: Hook
) -> None:
    settings = load_settings(tmp_path / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(tmp_path / "outbox", clinics=1, weeks=16, seed=2, dyads_per_clinic=25, profile="clean")
    add_profiles(settings.clinics_file, sample.profiles)
    with settings.clinics_file.open("a") as handle:
        handle.write(
            f'\n[[clinics.northside.alerts.supervisors]]\nname = "Dr Lee"\nurls = ["json://127.0.0.1:{hook.port}/lee"]\n'
        )
    events: list[dict] = []

    def emit(event: dict) -> None:
        emit_to_prefect(event)  # the real event into the harness's Prefect API
        events.append(event)

    with InboxWatcher(settings, emit=emit, settle_seconds=0.3, poll_interval=0.05):
        dropped = settings.inbox / "northside" / sample.files[0].path.name
        dropped.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(sample.files[0].path, dropped.with_suffix(".part"))
        dropped.with_suffix(".part").rename(dropped)  # how exporters finish a file
        deadline = time.monotonic() + 30
        while not events and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(events) == 1
    parameters = ingest_parameters(events[0])
    assert parameters == {"path": str(dropped), "home": str(settings.home.resolve()), "clinic_id": "northside"}
    state = ingest_export(**parameters, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["status"] == "loaded" and summary["flags_new"] > 0
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM ratings").fetchall()[0][0] == summary["rows_new"]
        assert con.execute("SELECT count(*) FROM flags WHERE status = 'open'").fetchall()[0][0] > 0
        assert con.execute("SELECT status FROM alerts").fetchall()[0] == ("sent",)
        # the alert goes out before the snapshots are rebuilt (their cost grows with the history); then they are
        alerted, published = con.execute(
            """SELECT (SELECT min(attempted_at) FROM alerts),
                      (SELECT max(published_at) FROM snapshots WHERE path = 'network.duckdb')"""
        ).fetchone()
        assert alerted < published
    with duckdb.connect(str(settings.warehouse.with_name("snapshots") / "network.duckdb"), read_only=True) as snapshot:
        assert snapshot.execute("SELECT count(*) FROM cases").fetchall()[0][0] > 0
    assert [r["path"] for r in hook.requests] == ["/lee"]
    assert not dropped.exists()  # archived
