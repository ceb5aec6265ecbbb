"""Supervisor actions and queries on cases and flags, shared by the CLI and the dashboard."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

import polars as pl

from alliance.clinics import load_clinics
from alliance.errors import AllianceError
from alliance.settings import Settings
from alliance.storage import REVIEW_STATUSES, Warehouse, Writer
from flows.scoring import ScoringResult, full_scoring_due, queue_options, score_dyads
from transforms.cases import CASE_STATUSES

FLAG_STATUSES = (*REVIEW_STATUSES, "auto_resolved")
CASE_LISTINGS = ("queue", *CASE_STATUSES, "all")  # queue: open and acknowledged cases


def _reviewer(status: str, reviewed_by: str) -> str:
    if status not in REVIEW_STATUSES:
        raise AllianceError(f"status must be one of {', '.join(REVIEW_STATUSES)}, not {status!r}")
    if not reviewed_by.strip():
        raise AllianceError("a review needs the reviewer's name (--by)")
    return reviewed_by.strip()


def review_case(settings: Settings, case_id: str, status: str, reviewed_by: str, note: str | None = None) -> str:
    """Set a case's status, and with it its flags', as a named reviewer; returns the case's old status.

    Example: ``review_case(settings, "f22876bed10f471e", "acknowledged", "dr.lee", "raised in supervision")``.
    """
    reviewer = _reviewer(status, reviewed_by)
    return _recorded(
        settings, "cases", "case_id", case_id, lambda w, now: w.review_case(case_id, status, reviewer, note, now)
    )


def _recorded(settings: Settings, table: str, column: str, subject: str, act: Callable[[Writer, datetime], str]) -> str:
    """One review action in its own transaction, then the subject's clinic snapshot republished."""
    warehouse = Warehouse.of(settings)
    with warehouse.writer() as writer:
        with writer.transaction():
            previous = act(writer, datetime.now(UTC))
        clinic = writer.frame(f"SELECT clinic_id FROM {table} WHERE {column} = ?", [subject]).item()
        writer.publish(warehouse.snapshots, [clinic])
    return previous


def is_case(settings: Settings, review_id: str) -> bool:
    """Whether an id names a case (else it is taken as a flag id)."""
    with Warehouse.of(settings).reader() as reader:
        return not reader.frame("SELECT 1 FROM cases WHERE case_id = ?", [review_id]).is_empty()


def list_cases(settings: Settings, clinic_id: str | None = None, status: str = "queue") -> pl.DataFrame:
    """Cases ranked by risk; status 'queue' (open and acknowledged), one of CASE_STATUSES, or 'all'."""
    if status not in CASE_LISTINGS:
        raise AllianceError(f"status must be one of {', '.join(CASE_LISTINGS)}, not {status!r}")
    where, params = ["TRUE"], []
    if clinic_id:
        where.append("clinic_id = ?")
        params.append(clinic_id)
    if status == "queue":
        where.append("status IN ('open', 'acknowledged')")
    elif status != "all":
        where.append("status = ?")
        params.append(status)
    sql = (
        f"SELECT * FROM cases WHERE {' AND '.join(where)} "
        "ORDER BY status = 'closed', risk_score DESC, "
        "list_position(['advisory','low','medium','high','critical'], severity) DESC, last_session_date DESC, case_id"
    )
    with Warehouse.of(settings).reader() as reader:
        return reader.frame(sql, params)


def review_flag(settings: Settings, flag_id: str, status: str, reviewed_by: str, note: str | None = None) -> str:
    """Set a flag's status as a named reviewer, recorded in the append-only reviews table; returns the old status.

    Example: ``review_flag(settings, "3f9a2c1b7d0e4a55", "acknowledged", "dr.lee", "discussed in supervision")``.
    """
    reviewer = _reviewer(status, reviewed_by)
    return _recorded(
        settings, "flags", "flag_id", flag_id, lambda w, now: w.review(flag_id, status, reviewer, note, now)
    )


def rescore(settings: Settings, recalibrate: bool = False) -> ScoringResult:
    """Re-score every dyad (after a rule or threshold change); gives the same flags as incremental scoring."""
    clinics = load_clinics(settings.clinics_file)
    warehouse = Warehouse.of(settings)
    with warehouse.writer() as writer:
        with writer.transaction():
            result = score_dyads(
                writer, clinics, settings, None, kind="rescore", recalibrate=recalibrate, commit_chunks=True
            )
        options = queue_options(writer, clinics, settings)
        writer.publish(warehouse.snapshots, None)
    return replace(result, queue_options=options)


def settle_scores(settings: Settings, swept_clinics: list[str], since: datetime) -> ScoringResult:
    """The end of a batch (the night's sweep, a multi-file ingest): the dyads its files loaded scored in one
    pass, the silence, queue and cases of its clinics settled, and the snapshots published.

    Flags depend on the ratings, the calibration, each clinic's rules and the queue policy, never on the date
    (silence is judged against the clinic's latest session). So every other dyad already stands as a full
    rescore would leave it, unless rules, policy or software changed since the last full scoring, or reliable
    change is due for re-estimation: only then is every dyad re-scored and every snapshot published. Otherwise
    the batch's clinics' snapshots and the network's are (every clinic's when a run re-estimated reliable
    change ``since`` the batch began, which re-scored all dyads).
    """
    clinics = load_clinics(settings.clinics_file)
    warehouse = Warehouse.of(settings)
    with warehouse.writer() as writer:
        if full_scoring_due(writer, clinics, settings):
            with writer.transaction():
                result = score_dyads(writer, clinics, settings, None, kind="rescore", commit_chunks=True)
            writer.publish(warehouse.snapshots, None)
        else:
            with writer.transaction():  # the clinics settled: those swept, and those of every dyad left waiting
                result = score_dyads(
                    writer, clinics, settings, [], kind="batch", settle=swept_clinics, commit_chunks=True
                )
            everyone = writer.frame(
                "SELECT count(*) AS n FROM scoring_runs WHERE started_at >= ? AND recalibrated", [since]
            ).item()
            # every row of the network compared: a change a killed run left unpublished is caught up nightly
            writer.publish(warehouse.snapshots, None if everyone else list(result.clinics), whole_network=True)
    return result


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
