"""Start the dashboard: `streamlit run dashboards/app.py` as a subprocess, headless, no telemetry.

Without an identity provider it binds to 127.0.0.1 only. With one (``ALLIANCE_OIDC_*`` settings, or an
``[auth]`` table in ``<home>/.streamlit/secrets.toml``) people sign in through Streamlit's ``st.login``.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import tomlkit

from alliance.clinics import load_clinics
from alliance.errors import ConfigError
from alliance.permissions import OWNER_FILE
from alliance.settings import Settings

APP = Path(__file__).with_name("app.py")
HOME_ENV = "ALLIANCE_HOME"
CLINIC_ENV = "ALLIANCE_DASHBOARD_CLINIC"
DEFAULT_PORT = 8501
LOOPBACK = "127.0.0.1"
GENERATED_SECRETS = ".dashboard-auth-{port}.toml"  # in the home, owner-only, one per port, rewritten at start


def command(port: int, address: str = LOOPBACK, secrets_files: tuple[Path, ...] = ()) -> list[str]:
    """The streamlit command line: no browser, no usage statistics, no file watching; 127.0.0.1 by default."""
    files = [arg for path in secrets_files for arg in ("--secrets.files", str(path))]
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.headless", "true",
        "--server.port", str(port),
        "--server.address", address,
        *files,
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


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def auth_section(settings: Settings, port: int) -> dict[str, str] | None:
    """Streamlit's ``[auth]`` table from the ALLIANCE_OIDC_* settings, or None when they are not all set."""
    parts = (settings.oidc_metadata_url, settings.oidc_client_id, settings.oidc_client_secret)
    if not any(parts):
        return None
    if not all(parts):
        raise ConfigError(
            "dashboard sign-in needs ALLIANCE_OIDC_METADATA_URL, ALLIANCE_OIDC_CLIENT_ID and "
            "ALLIANCE_OIDC_CLIENT_SECRET together; one or two of them are set"
        )
    base = (settings.dashboard_url or f"http://localhost:{port}").rstrip("/")
    return {
        "redirect_uri": f"{base}/oauth2callback",
        "cookie_secret": secrets.token_urlsafe(32),  # sign-ins last until the dashboard restarts
        "client_id": str(settings.oidc_client_id),
        "client_secret": settings.oidc_client_secret.get_secret_value() if settings.oidc_client_secret else "",
        "server_metadata_url": str(settings.oidc_metadata_url),
    }


def secrets_files(settings: Settings, port: int) -> tuple[Path, ...]:
    """Secrets files for the dashboard: the home's own ``.streamlit/secrets.toml``, then one made from settings."""
    found = []
    own = settings.home / ".streamlit" / "secrets.toml"
    if own.exists():
        found.append(own)
    section = auth_section(settings, port)
    generated = settings.home / GENERATED_SECRETS.format(port=port)  # two dashboards keep their own cookie secrets
    generated.unlink(missing_ok=True)
    if section is not None:
        fd = os.open(generated, os.O_WRONLY | os.O_CREAT | os.O_EXCL, OWNER_FILE)  # holds the client secret
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(tomlkit.dumps({"auth": section}))
        found.append(generated)
    return tuple(found)


def has_sign_in(files: tuple[Path, ...]) -> bool:
    """Whether any of these secrets files configures Streamlit's sign-in (an [auth] table)."""
    for path in files:
        try:
            if "auth" in tomlkit.parse(path.read_text(encoding="utf-8")):
                return True
        except (OSError, ValueError):
            continue
    return False


def start(
    home: Path, clinic: str | None = None, port: int = DEFAULT_PORT, settings: Settings | None = None
) -> subprocess.Popen[bytes]:
    """Start the server in the background (tests, or a caller that manages it); stop it with ``stop``.

    Refuses to bind beyond loopback unless sign-in is configured: without it anyone reaching the port sees
    every clinic it may open.
    """
    check_clinic(home, clinic)
    settings = (settings or Settings()).model_copy(update={"home": home})
    files = secrets_files(settings, port)
    if not is_loopback(settings.dashboard_address) and not has_sign_in(files):
        raise ConfigError(
            f"ALLIANCE_DASHBOARD_ADDRESS={settings.dashboard_address}: the dashboard serves beyond this machine only "
            "with sign-in; configure an identity provider (ALLIANCE_OIDC_*), or keep it on 127.0.0.1"
        )
    return subprocess.Popen(
        command(port, settings.dashboard_address, files),
        env=environment(home, clinic),
        cwd=APP.parent,
        start_new_session=True,
    )  # own process group, so stop() ends streamlit's children too


def wait_ready(port: int, timeout_s: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until the server answers its health check; raise if it exits or does not answer in time."""
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{port}/_stcore/health"  # a non-loopback bind to 0.0.0.0 answers here too
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


def run(home: Path, clinic: str | None = None, port: int = DEFAULT_PORT, settings: Settings | None = None) -> int:
    """Serve the dashboard in the foreground until Ctrl-C, SIGTERM or SIGHUP, which stop the server's whole
    process group too; returns streamlit's exit code (0 when stopped)."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    process = start(home, clinic, port, settings)
    address = (settings or Settings()).dashboard_address
    print(f"Alliance Watch dashboard on http://{address}:{port}" + (f" (clinic {clinic})" if clinic else ""))
    try:
        return process.wait()
    except KeyboardInterrupt:
        stop(process)
        return 0
