"""Prefect flow wrapping the ingest pipeline for one export file."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from alliance.settings import load_settings
from flows.pipeline import ExportResult, ingest_file


@flow(name="ingest-export", log_prints=False, persist_result=False)
def ingest_export(path: str, home: str | None = None, clinic_id: str | None = None) -> dict[str, object]:
    """Ingest one export; returns counts only (no client data), which is safe for Prefect's result store."""
    settings = load_settings(Path(home) if home else None)
    result: ExportResult = ingest_file(Path(path), settings, clinic_id=clinic_id)
    get_run_logger().info(
        "%s: %s, %d rows (%d new, %d updated, %d unchanged, %d quarantined)",
        result.file_name,
        result.status,
        result.rows_total,
        result.rows_new,
        result.rows_updated,
        result.rows_unchanged,
        result.rows_quarantined,
    )
    return {
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
    }
