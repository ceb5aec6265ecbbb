"""The nightly flow's per-clinic fan-out, unchanged, on a local Dask cluster (two worker processes)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from alliance.samples import generate_sample
from alliance.storage import table_checksums
from flows.nightly import run_nightly
from tests.conftest import home_with_night


@pytest.mark.slow
@pytest.mark.prefect
def test_nightly_fans_out_over_a_dask_cluster_with_the_same_result(tmp_path: Path, prefect_api: None) -> None:
    from prefect_dask import DaskTaskRunner

    from flows.serve import nightly

    sample = generate_sample(tmp_path / "outbox", clinics=4, weeks=12, seed=13, dyads_per_clinic=12, profile="clean")
    # the corrected re-export must follow its original; across parallel clinics only the per-clinic order matters
    plain = home_with_night(tmp_path / "plain", sample)
    run_nightly(plain)
    dask = home_with_night(tmp_path / "dask", sample)
    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True})
    summary = nightly.with_options(task_runner=runner)(home=str(dask.home))
    assert not summary["errors"]
    assert sorted(r["clinic_id"] for r in summary["per_clinic"]) == sorted(sample.profiles)
    states = []
    for settings in (plain, dask):
        with duckdb.connect(str(settings.warehouse), read_only=True) as con:
            checks = table_checksums(con, stable_only=True)
        states.append({t: v for t, v in checks.items() if t not in ("calibrations", "flags", "dyad_sessions")})
    assert states[0] == states[1]  # same ratings, quarantine, ledger counts, dyads whatever the order of clinics
