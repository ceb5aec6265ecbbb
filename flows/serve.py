"""Deployments, the nightly flow, and the runner plus watcher behind `alliance serve`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

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


def serve_everything(settings: Settings, polling: bool = False) -> None:
    """Run until Ctrl-C: both deployments and the watcher, against the Prefect API in PREFECT_API_URL."""
    from prefect import serve

    from flows.watcher import InboxWatcher

    log.info("Prefect API %s; watching %s", os.environ.get("PREFECT_API_URL"), settings.inbox)
    with InboxWatcher(settings, polling=polling):
        try:
            serve(*deployments(settings))  # type: ignore[arg-type]
        except KeyboardInterrupt:
            log.info("stopping")
