"""Start the dashboard: `streamlit run dashboards/app.py` as a subprocess, local-only, headless, no telemetry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from alliance.clinics import load_clinics
from alliance.errors import ConfigError

APP = Path(__file__).with_name("app.py")
HOME_ENV = "ALLIANCE_HOME"
CLINIC_ENV = "ALLIANCE_DASHBOARD_CLINIC"
DEFAULT_PORT = 8501


def command(port: int) -> list[str]:
    """The streamlit command line: bound to 127.0.0.1, no browser, no usage statistics, no file watching."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.headless", "true",
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--client.toolbarMode", "minimal",
        "--theme.base", "light",
        "--global.developmentMode", "false",
        "--client.showErrorDetails", "type",  # tracebacks go to the server log, not to supervisors' screens
        "--runner.magicEnabled", "false",
        # Streamlit's own table download writes CSV without neutralising formula-like cells: turned off
        "--client.disableDataExport", "true",
    ]  # fmt: skip


def environment(home: Path, clinic: str | None) -> dict[str, str]:
    """The app's environment: the home (absolute, the app runs in another directory) and the clinic scope."""
    env = {**os.environ, HOME_ENV: str(home.resolve()), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    env.pop(CLINIC_ENV, None)
    if clinic:
        env[CLINIC_ENV] = clinic
    return env


def check_clinic(home: Path, clinic: str | None) -> None:
    """Refuse a clinic that clinics.toml does not know, before a server starts for nothing."""
    clinics_file = home / "clinics.toml"
    if clinic and clinics_file.exists() and clinic not in load_clinics(clinics_file):
        raise ConfigError(f"no clinic {clinic!r} in {clinics_file}; known: {', '.join(load_clinics(clinics_file))}")


def start(home: Path, clinic: str | None = None, port: int = DEFAULT_PORT) -> subprocess.Popen[bytes]:
    """Start the server in the background (tests, or a caller that manages it); stop it with ``stop``."""
    check_clinic(home, clinic)
    return subprocess.Popen(
        command(port), env=environment(home, clinic), cwd=APP.parent, start_new_session=True
    )  # own process group, so stop() ends streamlit's children too


def wait_ready(port: int, timeout_s: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until the server answers its health check; raise if it exits or does not answer in time."""
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{port}/_stcore/health"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the dashboard exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"the dashboard did not answer on port {port} within {timeout_s:.0f} s")


def stop(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """Stop a server started by ``start`` (its whole process group)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, 15)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (systemd, a timeout) or SIGHUP stop the server like Ctrl-C


def run(home: Path, clinic: str | None = None, port: int = DEFAULT_PORT) -> int:
    """Serve the dashboard in the foreground until Ctrl-C, SIGTERM or SIGHUP, which stop the server's whole
    process group too; returns streamlit's exit code (0 when stopped)."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    process = start(home, clinic, port)
    print(f"Alliance Watch dashboard on http://127.0.0.1:{port}" + (f" (clinic {clinic})" if clinic else ""))
    try:
        return process.wait()
    except KeyboardInterrupt:
        stop(process)
        return 0
