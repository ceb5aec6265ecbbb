"""`alliance dashboard` as a process: a signal to it stops the Streamlit server it started, freeing the port."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from alliance.settings import Settings
from dashboards import launch
from tests.receivers import free_port


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_alliance_dashboard_stops_its_server_on_a_signal(settings: Settings, stop_signal: signal.Signals) -> None:
    port = free_port()
    command = [str(Path(sys.executable).parent / "alliance"), "dashboard", "--home", str(settings.home)]
    parent = subprocess.Popen([*command, "--port", str(port)], stdout=subprocess.DEVNULL)
    try:
        launch.wait_ready(port, timeout_s=60, process=parent)
        parent.send_signal(stop_signal)
        assert parent.wait(timeout=30) == 0
        with pytest.raises(OSError):  # nothing answers on the port: the Streamlit child is gone too
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
    finally:
        if parent.poll() is None:
            parent.kill()
