"""Deployments and `alliance serve`: a local Prefect server if none is configured, the runner, the watcher."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from alliance.errors import AllianceError
from alliance.settings import Settings, load_settings
from flows.events import EXPORT_RECEIVED
from flows.ingest import ingest_export, prefect_secret
from flows.nightly import run_nightly

log = logging.getLogger("alliance.serve")
WAREHOUSE_LIMIT = "alliance-warehouse"


@task(persist_result=False)
def nightly_task(home: str | None) -> dict[str, object]:
    report = run_nightly(load_settings(Path(home) if home else None), secret=prefect_secret)
    return {
        "per_clinic": report.per_clinic.to_dicts(),
        "errors": report.errors,
        "alerts_sent": report.alerts.sent if report.alerts else 0,
        "alerts_failed": report.alerts.failed if report.alerts else 0,
        "queue_dyads": report.scoring.queue_dyads if report.scoring else 0,
        "active_dyads": report.scoring.active_dyads if report.scoring else 0,
    }


@flow(name="nightly", log_prints=False, persist_result=False)
def nightly(home: str | None = None) -> dict[str, object]:
    """Sweep every inbox, re-score all dyads, send digests and trend alerts, publish snapshots, summarise."""
    summary = nightly_task(home)
    rows = summary["per_clinic"]
    create_table_artifact(key="nightly-clinics", table=rows, description="Nightly run per clinic")  # type: ignore[arg-type]
    lines = [
        "# Alliance Watch nightly run",
        f"Review queue: {summary['queue_dyads']} of {summary['active_dyads']} dyads. "
        f"Alerts: {summary['alerts_sent']} sent, {summary['alerts_failed']} failed (retried next run).",
        "",
        "| clinic | exports | rows | quarantined | new flags | worse flags | queue |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['clinic_id']} | {r['exports']} | {r['rows']} | {r['quarantined']} | {r['new_flags']} "
            f"| {r['worse_flags']} | {r['queue_dyads']} |"
            for r in rows  # type: ignore[attr-defined]
        ),
    ]
    create_markdown_artifact(key="nightly-summary", markdown="\n".join(lines), description="Nightly run")
    get_run_logger().info("nightly: %d clinics, %d sweep errors", len(rows), len(summary["errors"]))  # type: ignore[arg-type]
    return summary


def deployments(settings: Settings) -> list[object]:
    """The two deployments: ingest on a file-arrival event, and the nightly cron; one run of each at a time."""
    from prefect.events import DeploymentEventTrigger
    from prefect.schedules import Cron

    home = str(settings.home.resolve())
    on_arrival = DeploymentEventTrigger(
        expect={EXPORT_RECEIVED},
        match={"alliance.home": home},
        parameters={
            "path": "{{ event.payload.path }}",
            "home": "{{ event.payload.home }}",
            "clinic_id": "{{ event.payload.clinic_id }}",
        },
    )
    return [
        ingest_export.to_deployment(name="ingest-export", triggers=[on_arrival], concurrency_limit=1),
        nightly.to_deployment(
            name="nightly",
            schedules=[Cron(settings.nightly_cron, timezone=settings.nightly_timezone)],
            parameters={"home": home},
            concurrency_limit=1,
        ),
    ]


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


def serve_everything(settings: Settings, polling: bool = False) -> None:
    """Run until Ctrl-C: Prefect server (when PREFECT_API_URL is unset), both deployments, and the watcher."""
    with _api(settings) as api:
        os.environ["PREFECT_API_URL"] = api
        from prefect import serve

        from flows.watcher import InboxWatcher

        log.info("Prefect API %s; watching %s", api, settings.inbox)
        with InboxWatcher(settings, polling=polling):
            try:
                serve(*deployments(settings))  # type: ignore[arg-type]
            except KeyboardInterrupt:
                log.info("stopping")


@contextmanager
def _api(settings: Settings) -> Iterator[str]:
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        yield configured
        return
    with local_prefect_server(settings) as api:
        yield api
