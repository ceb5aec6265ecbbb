"""`alliance serve` for real, in a subprocess: its own Prefect server, the runner, the watcher; Ctrl-C stops all."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from alliance.home import init_home
from alliance.samples import add_profiles, generate_sample
from alliance.settings import load_settings
from tests.conftest import TEST_KEY


@pytest.mark.slow
def test_serve_turns_a_dropped_file_into_flags_and_stops_cleanly(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(tmp_path / "outbox", clinics=2, weeks=12, seed=3, dyads_per_clinic=15, profile="clean")
    add_profiles(settings.clinics_file, sample.profiles)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-client")
    serve = subprocess.Popen(
        [sys.executable, "-m", "alliance", "serve", "--home", str(settings.home)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    output: list[str] = []
    server_pid = 0
    try:
        assert serve.stdout is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = serve.stdout.readline()
            output.append(line)
            if "polling for scheduled runs" in line or "being served" in line:
                break
        else:
            pytest.fail("serve did not come up:\n" + "".join(output))
        server_pid = int((settings.home / "prefect" / "server.pid").read_text())
        # two clinics' files at once: two ingest runs side by side, their writes ordered by the warehouse lock
        firsts = {f.clinic_id: f for f in reversed(sample.files)}
        assert len(firsts) == 2
        dropped = [settings.inbox / f.clinic_id / f.path.name for f in firsts.values()]
        for file, target in zip(firsts.values(), dropped, strict=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(file.path, target)
        deadline = time.monotonic() + 120
        while any(d.exists() for d in dropped) and time.monotonic() < deadline:
            time.sleep(1)
        assert not any(d.exists() for d in dropped), "the files were not taken within 120 s"
        time.sleep(5)  # the snapshots are published after the alert
        with duckdb.connect(str(network_snapshot(settings.home)), read_only=True) as con:
            loaded = con.execute("SELECT clinic_id, status FROM exports ORDER BY 1").fetchall()
            assert loaded == sorted((clinic, "loaded") for clinic in firsts), output
            assert con.execute("SELECT count(DISTINCT clinic_id) FROM ratings").fetchall()[0][0] == 2
            assert con.execute("SELECT count(*) FROM flags").fetchall()[0][0] > 0
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            pytest.fail("serve did not stop on Ctrl-C")
    assert not Path(f"/proc/{server_pid}").exists()  # no Prefect server left behind
    assert not (settings.home / "prefect" / "server.pid").exists()


def test_ingest_runs_wait_on_the_writer_lock_not_on_a_deployment_slot(tmp_path: Path) -> None:
    """Prefect's slot wait held a landing file's run 15-30 s behind the run before it; the runner's limit
    bounds the processes instead."""
    from flows.serve import deployments

    ingest, nightly = deployments(load_settings(tmp_path / "home"))
    assert ingest.name == "ingest-export" and ingest.concurrency_limit is None  # type: ignore[attr-defined]
    assert nightly.name == "nightly" and nightly.concurrency_limit == 1  # type: ignore[attr-defined]


def network_snapshot(home: Path) -> Path:
    return home / "snapshots" / "network.duckdb"
