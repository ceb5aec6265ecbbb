"""Prefect flow for one export file: ingest, score, alert, publish. Triggered by an alliance.export.received event."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from alliance.clinics import load_clinics
from alliance.errors import AllianceError, ExportGone, WarehouseBusy
from alliance.settings import load_settings
from alliance.storage import Warehouse
from expectations import warm_up
from flows.alerting import deliver_alerts
from flows.events import EXPORT_RECEIVED, ingest_parameters
from flows.pipeline import ExportResult, ingest_file, publish_scope


def prefect_secret(name: str) -> str | None:
    """A secret from a Prefect Secret block named like the variable (SMTP_PASSWORD -> smtp-password)."""
    try:
        from prefect.blocks.system import Secret

        return str(Secret.load(name.lower().replace("_", "-")).get())  # type: ignore[union-attr]
    except Exception:  # no such block, or no API: the caller reports the missing variable by name
        return None


def busy(task: object, run: object, state: object) -> bool:
    """Retry only what waiting can fix: another writer holding the warehouse."""
    try:
        state.result()  # type: ignore[attr-defined]
    except WarehouseBusy:
        return True
    except Exception:
        return False
    return False


@task(retries=3, retry_delay_seconds=[10, 30, 90], retry_condition_fn=busy, persist_result=False)
def ingest_task(path: str, home: str | None, clinic_id: str | None) -> dict[str, object]:
    """Ingest one file; counts only in the result (no client data in Prefect's result store)."""
    # GX's import (2-3 s in a new flow process) overlaps reading the profiles, waiting for the writer lock (the
    # run before this one may still be publishing) and reading the file
    warming = warm_up()
    try:
        settings = load_settings(Path(home) if home else None)
        # the snapshots are published after the alerts: rebuilding them grows with the history, an alert must not
        result = ingest_file(Path(path), settings, clinic_id=clinic_id, publish=False)
    except ExportGone as gone:  # the nightly sweep (or another event) took it first
        result = ExportResult(Path(path).name, clinic_id or Path(path).parent.name, "taken", "", error=str(gone))
    finally:
        warming.join()  # never left importing as the process exits
    return summary(result)


@task(retries=3, retry_delay_seconds=[10, 30, 90], retry_condition_fn=busy, persist_result=False)
def publish_task(home: str | None, clinic_ids: list[str] | None) -> int:
    """Publish the network's snapshot and these clinics' (all when None); the number of snapshots written."""
    warehouse = Warehouse.of(load_settings(Path(home) if home else None))
    with warehouse.writer() as writer:
        return len(writer.publish(warehouse.snapshots, clinic_ids))


@task(retries=2, retry_delay_seconds=[30, 120], persist_result=False)
def alert_task(home: str | None, clinic_ids: list[str] | None, trends: bool = False) -> dict[str, object]:
    """Deliver pending alerts; a failing channel is recorded and retried, never failing the load."""
    settings = load_settings(Path(home) if home else None)
    report = deliver_alerts(settings, load_clinics(settings.clinics_file), clinic_ids, trends, secret=prefect_secret)
    return {"sent": report.sent, "failed": report.failed, "cases_alerted": report.cases_alerted}


def summary(result: ExportResult) -> dict[str, object]:
    return {
        "file_name": result.file_name,
        "export_id": result.export_id,
        "clinic_id": result.clinic_id,
        "status": result.status,
        "rows_total": result.rows_total,
        "rows_new": result.rows_new,
        "rows_updated": result.rows_updated,
        "rows_unchanged": result.rows_unchanged,
        "rows_quarantined": result.rows_quarantined,
        "top_reasons": [list(item) for item in result.top_reasons],
        "error": result.error,
        "flags_new": result.scoring.new if result.scoring else 0,
        "flags_worsened": result.scoring.worsened if result.scoring else 0,
        "recalibrated": bool(result.scoring and result.scoring.recalibrated),
        "snapshots": publish_scope(result.clinic_id, result.scoring),  # what ingest_file would have published
    }


@flow(name="ingest-export", log_prints=False, persist_result=False)
def ingest_export(path: str, home: str | None = None, clinic_id: str | None = None) -> dict[str, object]:
    """Ingest one export, score the dyads it touched, alert supervisors of new or worsened flags."""
    logger = get_run_logger()
    if home is not None:
        request = ingest_parameters(
            {
                "event": EXPORT_RECEIVED,
                "payload": {"path": path, "home": home, "clinic_id": clinic_id or Path(path).parent.name},
            }
        )
        if request is None:
            raise AllianceError(f"{Path(path).name}: not a complete export inside {home}/inbox/<clinic_id>/")
    result = ingest_task(path, home, clinic_id)
    logger.info(
        "%s: %s, %s rows (%s new, %s updated, %s unchanged, %s quarantined)",
        result["file_name"], result["status"], result["rows_total"], result["rows_new"],
        result["rows_updated"], result["rows_unchanged"], result["rows_quarantined"],
    )  # fmt: skip
    if result["status"] == "loaded" and (result["flags_new"] or result["flags_worsened"]):
        alerts = alert_task(home, [str(result["clinic_id"])])
        logger.info("alerts: %s sent, %s failed", alerts["sent"], alerts["failed"])
    if result["status"] not in ("taken", "unsettled"):  # what ingest_file would have published itself
        snapshots = result["snapshots"]
        publish_task(home, [str(c) for c in snapshots] if isinstance(snapshots, list) else None)
    return result
