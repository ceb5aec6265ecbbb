"""Deployments, the nightly flow, and the runner plus watcher behind `alliance serve`."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from alliance.clinics import load_clinics
from alliance.settings import Settings, load_settings
from flows.events import EXPORT_RECEIVED
from flows.ingest import alert_task, busy, ingest_export, summary
from flows.nightly import clinic_summary, sweep_clinics
from flows.pipeline import ExportResult
from flows.reviews import settle_scores

log = logging.getLogger("alliance.serve")
WAREHOUSE_LIMIT = "alliance-warehouse"


SWEEP_TASKS = 4  # the night's clinics in this many batches: each batch pays GX's and a task's fixed costs once


@task(persist_result=False, retries=3, retry_delay_seconds=[10, 30, 90], retry_condition_fn=busy)
def sweep_task(home: str | None, clinic_ids: list[str]) -> list[dict[str, object]]:
    """A batch of clinics' inboxes, read and validated together, each file ingested; counts only in the result."""
    results, errors = sweep_clinics(load_settings(Path(home) if home else None), clinic_ids)
    batch = ", ".join(clinic_ids)
    return [summary(r) for r in results] + [{"clinic_id": batch, "status": "error", "error": e} for e in errors]


@task(persist_result=False, retries=3, retry_delay_seconds=[10, 30, 90], retry_condition_fn=busy)
def score_task(home: str | None, swept_clinics: list[str], since: datetime) -> dict[str, object]:
    """The night's scoring after the sweep (every dyad only when rules or calibration moved) and snapshots."""
    result = settle_scores(load_settings(Path(home) if home else None), swept_clinics, since)
    return {"queue_dyads": result.queue_dyads, "active_dyads": result.active_dyads, "new": result.new}


@flow(name="nightly", log_prints=False, persist_result=False, task_runner=ThreadPoolTaskRunner(max_workers=4))  # type: ignore[arg-type]
def nightly(home: str | None = None) -> dict[str, object]:
    """Sweep every inbox (fanned out in ``SWEEP_TASKS`` batches of clinics on a Dask cluster, one batch on the
    local thread runner), settle the scores, send digests and trend alerts, publish snapshots, and summarise
    per clinic in artifacts.

    The fan-out goes through the flow's task runner: ``nightly.with_options(task_runner=DaskTaskRunner(...))``
    spreads the batches over a Dask cluster unchanged (the warehouse lock still serialises the writes).
    """
    started = datetime.now(UTC)
    settings = load_settings(Path(home) if home else None)
    clinic_ids = sorted(load_clinics(settings.clinics_file))
    # threads of one process share Python's lock: locally one sweep, which reads ahead on the spare cores
    local = isinstance(FlowRunContext.get().task_runner, ThreadPoolTaskRunner)  # type: ignore[union-attr]
    batches = [clinic_ids] if local else [clinic_ids[i::SWEEP_TASKS] for i in range(SWEEP_TASKS)]
    batches = [batch for batch in batches if batch]
    swept = [row for rows in sweep_task.map(home, batches).result() for row in rows]
    swept_clinics = [str(r["clinic_id"]) for r in swept if r["status"] not in ("unsettled", "taken", "error")]
    scoring = score_task(home, swept_clinics, started)
    alerts = alert_task(home, None, trends=True)
    exports = [ExportResult(str(r["file_name"]), str(r["clinic_id"]), str(r["status"]), str(r["export_id"]),
                            rows_total=int(str(r["rows_total"])), rows_quarantined=int(str(r["rows_quarantined"])))
               for r in swept if r["status"] != "error"]  # fmt: skip
    per_clinic = clinic_summary(settings, started, exports).to_dicts()
    errors = [str(r["error"]) for r in swept if r["status"] == "error"]
    rejected = [str(r["error"]) for r in swept if r["status"] == "rejected"]  # each starts with its file name
    _artifacts(per_clinic, scoring, alerts, rejected + errors)
    logger = get_run_logger()
    logger.info("nightly: %d clinics, %d file(s) failed", len(per_clinic), len(rejected) + len(errors))
    for line in rejected + errors:  # names and error classes only: rejection reasons never hold cell values
        logger.warning("nightly: %s", line)
    return {"per_clinic": per_clinic, "errors": errors, "rejected": rejected, **scoring, "alerts": alerts}


def _artifacts(
    rows: list[dict[str, object]], scoring: dict[str, object], alerts: dict[str, object], failed: list[str]
) -> None:
    create_table_artifact(key="nightly-clinics", table=rows, description="Nightly run per clinic")
    failures = [f"**{len(failed)} file(s) failed** (see `archive/<clinic>/rejected/`):", *(f"- {f}" for f in failed)]
    lines = [
        "# Alliance Watch nightly run",
        *([*failures, ""] if failed else []),
        f"Review queue: {scoring['queue_dyads']} of {scoring['active_dyads']} dyads. "
        f"Alerts: {alerts['sent']} sent, {alerts['failed']} failed (retried next run).",
        "",
        "| clinic | exports | rows | quarantined | new flags | worse flags | queue |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r['clinic_id']} | {r['exports']} | {r['rows']} | {r['quarantined']} | {r['new_flags']} "
            f"| {r['worse_flags']} | {r['queue_dyads']} |"
            for r in rows
        ),
    ]
    create_markdown_artifact(key="nightly-summary", markdown="\n".join(lines), description="Nightly run")


def deployments(settings: Settings) -> list[object]:
    """The two deployments: ingest on a file-arrival event, and the nightly cron (one run at a time).

    Ingest runs have no deployment limit: the server would hold a file landing behind the run before it for
    15–30 s (its slot wait), where the writer lock orders them within a second; the runner's ``serve_runs``
    bounds how many run at once."""
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
        ingest_export.to_deployment(name="ingest-export", triggers=[on_arrival]),
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
    with InboxWatcher(settings, polling=polling, settle_seconds=settings.settle_s):
        try:
            serve(*deployments(settings), query_seconds=settings.runner_poll_s, limit=settings.serve_runs)  # type: ignore[arg-type]
        except KeyboardInterrupt:
            log.info("stopping")
