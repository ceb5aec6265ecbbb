"""Supervisor actions and queries on flags, shared by the CLI and the dashboard."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import polars as pl

from alliance.clinics import load_clinics
from alliance.errors import AllianceError
from alliance.settings import Settings
from alliance.storage import REVIEW_STATUSES, Warehouse
from flows.scoring import ScoringResult, queue_options, score_dyads

FLAG_STATUSES = (*REVIEW_STATUSES, "auto_resolved")


def review_flag(settings: Settings, flag_id: str, status: str, reviewed_by: str, note: str | None = None) -> str:
    """Set a flag's status as a named reviewer, recorded in the append-only reviews table; returns the old status.

    Example: ``review_flag(settings, "3f9a2c1b7d0e4a55", "acknowledged", "dr.lee", "discussed in supervision")``.
    """
    if status not in REVIEW_STATUSES:
        raise AllianceError(f"status must be one of {', '.join(REVIEW_STATUSES)}, not {status!r}")
    if not reviewed_by.strip():
        raise AllianceError("a review needs the reviewer's name (--by)")
    warehouse = Warehouse.of(settings)
    with warehouse.writer() as writer:
        with writer.transaction():
            previous = writer.review(flag_id, status, reviewed_by.strip(), note, datetime.now(UTC))
        clinic = writer.frame("SELECT clinic_id FROM flags WHERE flag_id = ?", [flag_id]).item()
        writer.publish(warehouse.snapshots, [clinic])
    return previous


def rescore(settings: Settings, recalibrate: bool = False) -> ScoringResult:
    """Re-score every dyad (after a rule or threshold change); gives the same flags as incremental scoring."""
    clinics = load_clinics(settings.clinics_file)
    warehouse = Warehouse.of(settings)
    with warehouse.writer() as writer:
        with writer.transaction():
            result = score_dyads(writer, clinics, settings, None, kind="rescore", recalibrate=recalibrate)
        options = queue_options(writer, clinics, settings)
        writer.publish(warehouse.snapshots, None)
    return replace(result, queue_options=options)


def list_flags(settings: Settings, clinic_id: str | None = None, status: str = "open") -> pl.DataFrame:
    """Flags ranked by dyad risk; status 'queue' is the review queue, 'all' every flag."""
    if status not in (*FLAG_STATUSES, "queue", "all"):
        raise AllianceError(f"status must be one of {', '.join((*FLAG_STATUSES, 'queue', 'all'))}, not {status!r}")
    where, params = [], []
    if clinic_id:
        where.append("clinic_id = ?")
        params.append(clinic_id)
    if status == "queue":
        source = "SELECT f.* FROM flags f JOIN review_queue q USING (flag_id)"
    else:
        source = "SELECT * FROM flags"
        if status != "all":
            where.append("status = ?")
            params.append(status)
    sql = (
        f"SELECT * FROM ({source}) {'WHERE ' + ' AND '.join(where) if where else ''} "
        "ORDER BY risk_score DESC, list_position(['advisory','low','medium','high','critical'], severity) DESC, "
        "last_session_date DESC, flag_id"
    )
    with Warehouse.of(settings).reader() as reader:
        return reader.frame(sql, params)
