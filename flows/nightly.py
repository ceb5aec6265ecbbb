"""The nightly run as a plain function: sweep the inboxes, re-score, judge silence, alert, publish."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from alliance.clinics import load_clinics
from alliance.errors import AllianceError, ExportGone
from alliance.settings import Settings
from alliance.storage import Warehouse, writer_lease
from flows.alerting import AlertReport, Secret, deliver_alerts
from flows.batch import LoadBatch
from flows.exports import Validator
from flows.pipeline import ExportResult, inbox_files, ingest_file
from flows.prevalidation import PREVALIDATE_BYTES, PREVALIDATE_FILES
from flows.readahead import groups_of, read_ahead
from flows.reviews import settle_scores
from flows.scoring import ScoringResult, scoring_totals

log = logging.getLogger("alliance.nightly")


@dataclass
class NightlyReport:
    """One night: the exports swept, the full re-score, the alerts, and a per-clinic summary."""

    started_at: datetime
    exports: list[ExportResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    scoring: ScoringResult | None = None
    alerts: AlertReport | None = None
    per_clinic: pl.DataFrame = field(default_factory=pl.DataFrame)


def sweep_clinic(settings: Settings, clinic_id: str | None = None) -> tuple[list[ExportResult], list[str]]:
    """Ingest every complete file still in an inbox (one clinic's, or all); one bad file stops nothing."""
    return sweep_clinics(settings, None if clinic_id is None else [clinic_id])


def sweep_clinics(settings: Settings, clinic_ids: list[str] | None) -> tuple[list[ExportResult], list[str]]:
    """Ingest every complete file in these clinics' inboxes (all when None), read and validated as one batch.

    The Prefect nightly runs this for a few batches of clinics through its task runner, in parallel.
    """
    results: list[ExportResult] = []
    errors: list[str] = []
    paths = inbox_files(settings, clinic_ids)
    # what is read ahead stays bounded: one GX validation per instrument for each group of files
    groups = groups_of(paths, PREVALIDATE_FILES, PREVALIDATE_BYTES)
    with read_ahead(groups, settings) as ahead:  # later groups are read on another core while one loads
        for k, files in enumerate(groups):
            validate = ahead.for_group(k)
            with writer_lease(settings.warehouse):  # files share a writer session for a few seconds at a time
                batch = LoadBatch(settings)  # and their loads one transaction
                _ingest_each(files, settings, validate, batch, results, errors)
                try:
                    batch.flush()
                except Exception as exc:  # the files it held are marked failed and stay in their inboxes
                    log.warning("nightly sweep: a batch's load failed: %s", type(exc).__name__)
    # a file that could not be loaded at all is an error line, as before batches loaded together
    errors += [f"{r.file_name}: {r.error}" for r in results if r.status == "failed"]
    return [r for r in results if r.status not in ("taken", "failed")], errors


def _ingest_each(
    paths: list[Path],
    settings: Settings,
    validate: Validator,
    batch: LoadBatch,
    results: list[ExportResult],
    errors: list[str],
) -> None:
    for path in paths:
        try:
            # scores settled and snapshots published once, at the end of the night
            results.append(ingest_file(path, settings, publish=False, validate=validate, batch=batch))
        except ExportGone:
            continue  # a file-arrival run took it first: that is the point of overlapping safely
        except AllianceError as exc:
            errors.append(str(exc))
            log.warning("nightly sweep: %s", exc)
        except Exception as exc:  # the last net: ingest_file rejects what it can; nothing here may stop the night
            errors.append(f"{path.name}: unexpected {type(exc).__name__}; left in place, the night went on")
            log.warning("nightly sweep: %s (clinic %s): unexpected %s", path.name, path.parent.name,
                        type(exc).__name__)  # fmt: skip


def failed_files(exports: list[ExportResult], errors: list[str]) -> int:
    """Files the run could not load at all: rejected ones, and errors outside any file's ledger row."""
    return sum(r.status in ("rejected", "failed") for r in exports) + len(errors)


def clinic_summary(settings: Settings, started_at: datetime, exports: list[ExportResult]) -> pl.DataFrame:
    """Per clinic for the run: exports, rows, quarantined rows, new and worsened flags, queue size."""
    rows = pl.DataFrame(
        [
            {"clinic_id": r.clinic_id, "rows": r.rows_total, "quarantined": r.rows_quarantined}
            for r in exports
            if r.status != "duplicate"
        ],
        schema={"clinic_id": pl.String, "rows": pl.Int64, "quarantined": pl.Int64},
    )
    per_export = rows.group_by("clinic_id").agg(
        pl.len().alias("exports"), pl.col("rows").sum(), pl.col("quarantined").sum()
    )
    with Warehouse.of(settings).reader() as reader:
        flags = reader.frame(
            """SELECT d.clinic_id,
                      count(*) FILTER (WHERE f.first_flagged_at >= $start AND f.ongoing) AS new_flags,
                      count(*) FILTER (WHERE f.worsened_at >= $start AND f.ongoing) AS worse_flags,
                      (SELECT count(*) FROM dyads q WHERE q.clinic_id = d.clinic_id AND q.in_queue) AS queue_dyads
               FROM (SELECT DISTINCT clinic_id FROM dyads) d LEFT JOIN flags f USING (clinic_id)
               GROUP BY d.clinic_id""",
            {"start": started_at},
        )
    return (
        flags.join(per_export, on="clinic_id", how="full", coalesce=True)
        .fill_null(0)
        .select("clinic_id", "exports", "rows", "quarantined", "new_flags", "worse_flags", "queue_dyads")
        .sort("clinic_id")
    )


def run_nightly(settings: Settings, secret: Secret | None = None) -> NightlyReport:
    """Everything the night does, in order; each step converges when re-run after a crash."""
    report = NightlyReport(started_at=datetime.now(UTC))
    clinics = load_clinics(settings.clinics_file)
    report.exports, report.errors = sweep_clinic(settings)
    swept = [r.clinic_id for r in report.exports if r.status not in ("unsettled", "taken")]
    settled = settle_scores(settings, swept, report.started_at)  # every dyad only if rules or RC moved
    report.scoring = scoring_totals([*(r.scoring for r in report.exports if r.scoring), settled])  # the night's
    report.alerts = deliver_alerts(settings, clinics, trends=True, secret=secret)
    report.per_clinic = clinic_summary(settings, report.started_at, report.exports)
    return report
