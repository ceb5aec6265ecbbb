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
    sample = generate_sample(tmp_path / "outbox", clinics=1, weeks=12, seed=3, dyads_per_clinic=15, profile="clean")
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
        dropped = settings.inbox / "northside" / sample.files[0].path.name
        shutil.copy(sample.files[0].path, dropped)
        deadline = time.monotonic() + 90
        while dropped.exists() and time.monotonic() < deadline:
            time.sleep(1)
        assert not dropped.exists(), "the file was not taken within 90 s"
        time.sleep(2)  # the archive move is the last step after the commit
        with duckdb.connect(str(network_snapshot(settings.home)), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM ratings").fetchall()[0][0] > 0
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


def network_snapshot(home: Path) -> Path:
    return home / "snapshots" / "network.duckdb"
