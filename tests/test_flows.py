"""The Prefect flow under the real test harness (one harness per session, started on first use)."""

from __future__ import annotations

import duckdb
import pytest

from alliance.settings import Settings
from flows.ingest import ingest_export
from tests.conftest import add_clinic
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
