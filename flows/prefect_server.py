"""A local Prefect server for `alliance serve` when none is configured; imports no Prefect code itself.

Prefect reads PREFECT_API_URL when it is first imported, so the server must be up and the variable set
before anything imports Prefect.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from alliance.errors import AllianceError
from alliance.settings import Settings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def local_prefect_server(settings: Settings, timeout_s: float = 90.0) -> Iterator[str]:
    """A Prefect server (SQLite in the home, analytics off) for this machine; yields its API URL."""
    port = _free_port()
    prefect_home = (settings.home / "prefect").resolve()
    prefect_home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}",
    }
    env.pop("PREFECT_API_URL", None)
    logfile = (prefect_home / "server.log").open("ab")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=logfile,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    pid_file = prefect_home / "server.pid"
    pid_file.write_text(str(server.pid))
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if server.poll() is not None:
                raise AllianceError(f"the Prefect server exited early; see {prefect_home / 'server.log'}")
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AllianceError(f"the Prefect server did not start within {timeout_s:.0f} s")
            time.sleep(0.5)
        yield api
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        logfile.close()
        pid_file.unlink(missing_ok=True)


@contextmanager
def prefect_api(settings: Settings) -> Iterator[str]:
    """PREFECT_API_URL as configured, or a local server started (and stopped) for the duration."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        yield configured
        return
    with local_prefect_server(settings) as api:
        os.environ["PREFECT_API_URL"] = api
        try:
            yield api
        finally:
            os.environ.pop("PREFECT_API_URL", None)
