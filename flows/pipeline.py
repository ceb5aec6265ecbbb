"""The ingest pipeline as plain functions: an export read, loaded, scored and archived under the writer lock.
Flows and the CLI call these."""

from __future__ import annotations

import glob
import hashlib
import logging
import traceback
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from alliance.clinics import Clinic, load_clinics
from alliance.errors import ConfigError, ExportGone, ExportRejected
from alliance.faults import crash_point, fault_point
from alliance.pseudonyms import key_fingerprint, load_key
from alliance.readers import ReadLimits, sha256_of
from alliance.readers.frames import engine_failure
from alliance.settings import Settings
from alliance.storage import Ledger, LoadCounts, Warehouse, Writer, is_storage_failure
from flows.archive import archive_bytes, archive_path, export_id_of, original_name
from flows.events import is_candidate
from flows.exports import PreparedExport, Validator, clinic_for, prepare_export
from flows.prevalidation import kept_read, read_token
from flows.scoring import ScoringResult, score_dyads
from flows.watcher import Signature, file_signature, wait_until_settled
from transforms.quarantine import KnownTherapists

if TYPE_CHECKING:
    from flows.batch import LoadBatch

log = logging.getLogger("alliance.pipeline")


@dataclass
class ExportResult:
    """What happened to one export file, for people and for flows."""

    file_name: str
    clinic_id: str
    status: str  # loaded | quarantined | rejected | duplicate | unsettled | released | taken
    export_id: str
    rows_total: int = 0
    rows_new: int = 0
    rows_updated: int = 0
    rows_unchanged: int = 0
    rows_quarantined: int = 0
    top_reasons: list[tuple[str, int]] = field(default_factory=list)
    error: str | None = None
    archived_as: str | None = None
    scoring: ScoringResult | None = None


def _loaded(
    name: str,
    ledger: Ledger,
    prepared: PreparedExport,
    counts: LoadCounts,
    archived: Path,
    scoring: ScoringResult | None,
    status: str | None = None,
) -> ExportResult:
    """The result of an export whose rows went into the warehouse (loaded, quarantined whole, or released)."""
    return ExportResult(
        name,
        ledger.clinic_id,
        status or ledger.status,
        ledger.export_id,
        rows_total=prepared.rows_total,
        rows_new=counts.new,
        rows_updated=counts.updated,
        rows_unchanged=counts.unchanged,
        rows_quarantined=counts.quarantined,
        top_reasons=top_reasons(prepared.quarantine),
        archived_as=str(archived),
        scoring=scoring,
    )


def top_reasons(quarantine: pl.DataFrame, limit: int = 3) -> list[tuple[str, int]]:
    """Most frequent broken rules of an export, e.g. [('out_of_range:srs_goals', 3)]."""
    counts: Counter[str] = Counter(rule for rules in quarantine["rules"].to_list() for rule in rules)
    return counts.most_common(limit)


def _unexpected(exc: BaseException, stage: str) -> str:
    """A rejection reason for an unexpected failure: the error's class and where, never its message (cell values)."""
    packages = [Path(__file__).resolve().parents[1] / p for p in ("alliance", "flows", "transforms", "expectations")]
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if any(Path(f.filename).resolve().is_relative_to(p) for p in packages)]
    where = f" at {Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else ""  # our last line, not a library's
    return (
        f"unexpected {type(exc).__name__}{where} while {stage}; nothing from the file was loaded, other files are "
        "not affected (report it with this export id)"
    )


@dataclass(frozen=True)
class _Source:
    """The bytes of one export as read once: what is hashed is what is parsed and archived."""

    path: Path
    name: str
    data: bytes | None  # None: over the size cap, hashed as a stream and never parsed
    sha256: str
    signature: Signature


def _read_settled(path: Path, settings: Settings, settled: Signature) -> _Source | None:
    """The file's bytes, if it is still the settled file (the watcher's definition); None when it changed since."""
    if settled[0] > settings.max_file_mb * 1e6:
        sha = sha256_of(path)
        return (
            _Source(path, original_name(path, settings), None, sha, settled)
            if file_signature(path) == settled
            else None
        )
    data = path.read_bytes()
    if file_signature(path) != settled or len(data) != settled[0]:
        return None  # it changed while it was read
    sha = hashlib.sha256(data).hexdigest()
    return _Source(path, original_name(path, settings), data, sha, settled)


def duplicate_message(prior: dict[str, object]) -> str:
    when = prior["received_at"]
    day = when.date().isoformat() if isinstance(when, datetime) else str(when)
    message = (
        f"same bytes as {prior['file_name']}, ingested for clinic {prior['clinic_id']} on {day} "
        f"(export {prior['export_id']}, {prior['status']}); nothing to do"
    )
    if prior["status"] == "quarantined":
        message += f"; to load its passing rows after review: alliance release {prior['export_id']} --by NAME"
    return message


def ingest_file(
    path: Path,
    settings: Settings,
    clinic_id: str | None = None,
    received_at: datetime | None = None,
    publish: bool = True,
    validate: Validator | None = None,
    in_batch: bool = False,
    batch: LoadBatch | None = None,
) -> ExportResult:
    """Ingest one export end to end; the same bytes twice at one clinic is a no-op reported as 'duplicate'.

    Example: ``ingest_file(Path("inbox/northside/export.csv"), load_settings())``. With ``publish=False``
    the snapshots are left to the caller (the nightly sweep publishes once, after its re-score). A file still
    being written is left where it is (status ``unsettled``); an unexpected failure while reading or loading
    rejects that file alone, with its error class in the ledger. ``validate`` may be a ``Prevalidated`` batch
    (see ``prevalidate``). ``in_batch``: one file of a sweep or multi-file ingest, whose end scores every file's
    dyads in one pass (``flows.reviews.settle_scores``): this file's are left to it (``scoring`` None).
    ``batch`` (``flows.batch.LoadBatch``, implies ``in_batch``): the file is read, checked and prepared now,
    and loaded with the batch's other files in one transaction; its result is complete once the batch flushes.
    """
    clinics = load_clinics(settings.clinics_file)
    clinic = clinic_for(path, clinics, settings, clinic_id)
    if not path.is_file():
        in_inbox = settings.inbox.resolve() in path.resolve().parents
        raise (ExportGone if in_inbox else ConfigError)(f"{path}: no such file")
    key = load_key(settings)
    received_at = received_at or datetime.now(UTC)
    # waited for outside the writer lock, so a file still growing never holds up other runs
    settled = wait_until_settled(path, settings.settle_s, timeout=max(3 * settings.settle_s, 1.0))
    if settled is None:
        if not path.is_file():
            raise ExportGone(f"{path.name}: no longer there; another run has taken it")
        return _unsettled(path.name, clinic.id)
    warehouse = Warehouse.of(settings)
    with warehouse.writer() as writer:
        admitted = _admit(
            writer, warehouse, path, clinic, key, settled, received_at, settings, validate, publish, batch
        )
        if isinstance(admitted, ExportResult):
            return admitted
        if batch is not None:
            return batch.defer(admitted)
        return _commit(writer, warehouse, admitted, clinics, settings, publish, in_batch)


def _unsettled(name: str, clinic_id: str) -> ExportResult:
    return ExportResult(
        name, clinic_id, "unsettled", "",
        error="still being written (its size or time keeps changing); left in place for the next run",
    )  # fmt: skip


@dataclass(frozen=True)
class Admitted:
    """An export read, checked and prepared under the writer lock, with its ledger row: ready to load."""

    source: _Source
    clinic: Clinic
    ledger: Ledger  # status, row counts and archive path as the load will record them
    attempts: int  # ledger rows of these bytes at this clinic when it was admitted (its export id counts them)
    prepared: PreparedExport
    target: Path  # where it is archived once loaded


def _admit(
    writer: Writer,
    warehouse: Warehouse,
    path: Path,
    clinic: Clinic,
    key: bytes,
    settled: Signature,
    received_at: datetime,
    settings: Settings,
    validate: Validator | None,
    publish: bool,
    batch: LoadBatch | None,
) -> ExportResult | Admitted:
    """Read the file under the lock and prepare it; an ExportResult when there is nothing to load (unsettled,
    duplicate, rejected)."""
    writer.check_key(key_fingerprint(key))
    # the file is read under the lock: a concurrent run may have archived it while we waited
    if not path.is_file():
        raise ExportGone(f"{path.name}: no longer there; another run has taken it")
    source = _read_settled(path, settings, settled)
    if source is None:
        return _unsettled(path.name, clinic.id)
    if batch is not None and batch.holds(clinic.id, source.sha256):
        batch.flush()  # the same bytes twice in one batch: the second is a duplicate of the first, once it loaded
    prior, attempts = writer.sightings(clinic.id, source.sha256)
    if prior is not None and prior["status"] != "rejected":
        # Same bytes already committed (or a crash came after the commit): only the archive move may be left.
        target = archive_path(settings, clinic.id, prior["export_id"], prior["file_name"], rejected=False)
        archive_bytes(source.data, path, target, source.signature, settings)
        if publish:
            writer.publish(warehouse.snapshots, [clinic.id])
        return ExportResult(
            source.name, clinic.id, "duplicate", prior["export_id"], archived_as=str(target),
            error=duplicate_message(prior),
        )  # fmt: skip
    ledger = Ledger(
        export_id=export_id_of(clinic.id, source.sha256, attempts),
        clinic_id=clinic.id,
        file_name=source.name,
        sha256=source.sha256,
        bytes=source.signature[0],
        received_at=received_at,
        status="loaded",
        instruments=list(clinic.export.instruments),
    )
    if source.data is None:
        limit, size = settings.max_file_mb, source.signature[0] / 1e6
        problem = f"the file is {size:.0f} MB, over the {limit:.0f} MB limit"
        return _reject(writer, warehouse, settings, source, ledger, problem, f"{source.name}: {problem}", publish)
    try:
        fault_point("prepare", source.name)
        max_bytes, limits = int(settings.max_file_mb * 1e6), ReadLimits.from_settings(settings)
        kept = kept_read(validate, clinic, read_token(path, clinic, source.sha256, key, max_bytes, limits))
        share = settings.quarantine_file_share
        prepared = kept.ready(ledger.export_id, share, _therapists(writer, batch)) if kept else None
        if prepared is None:
            prepared = prepare_export(
                path,
                clinic,
                key,
                ledger.export_id,
                share,
                max_bytes,
                limits,
                batch.known_therapists(writer) if batch is not None else writer.known_therapists(),
                data=source.data,
                validate=validate,
                found=kept.found if kept else None,
            )
    except ExportRejected as rejection:
        return _reject(writer, warehouse, settings, source, ledger, rejection.problem, str(rejection), publish)
    except BaseException as exc:  # the safety net, a Polars panic too: one file's surprise must not stop the others
        if not engine_failure(exc) or (is_storage_failure(exc) and not isinstance(exc, OSError)):
            raise
        log.warning("%s (clinic %s): rejected after %s", source.name, clinic.id, type(exc).__name__)
        problem = _unexpected(exc, "reading and checking the file")
        return _reject(writer, warehouse, settings, source, ledger, problem, f"{source.name}: {problem}", publish)
    target = archive_path(settings, clinic.id, ledger.export_id, source.name, rejected=False)
    ledger = replace(
        ledger,
        status="quarantined" if prepared.whole_file_quarantined else "loaded",
        rows_total=prepared.rows_total,
        rows_quarantined=prepared.quarantine.height,
        archived_as=str(target),
    )
    return Admitted(source, clinic, ledger, attempts, prepared, target)


def _therapists(writer: Writer, batch: LoadBatch | None) -> KnownTherapists:
    return batch.therapists(writer) if batch is not None else KnownTherapists(writer.known_therapists())


def _reject(
    writer: Writer,
    warehouse: Warehouse,
    settings: Settings,
    source: _Source,
    ledger: Ledger,
    problem: str,
    message: str,
    publish: bool,
) -> ExportResult:
    """Record the export as rejected (``problem`` in the ledger) and archive it under rejected/."""
    target = archive_path(settings, ledger.clinic_id, ledger.export_id, source.name, rejected=True)
    # nothing of it is loaded: a ledger row with zero rows, whatever preparing it had counted
    rejection = replace(
        ledger, status="rejected", error=problem, archived_as=str(target), rows_total=0, rows_quarantined=0
    )
    writer.record_rejection(rejection)
    if publish:
        writer.publish(warehouse.snapshots, [ledger.clinic_id])
    archive_bytes(source.data, source.path, target, source.signature, settings)
    return ExportResult(
        source.name, ledger.clinic_id, "rejected", ledger.export_id, error=message, archived_as=str(target)
    )


def _commit(
    writer: Writer,
    warehouse: Warehouse,
    admitted: Admitted,
    clinics: dict[str, Clinic],
    settings: Settings,
    publish: bool,
    in_batch: bool,
) -> ExportResult:
    """Load and score one admitted export in its own transaction, publish, archive; rejected whole on a failure."""
    source, ledger, prepared = admitted.source, admitted.ledger, admitted.prepared
    try:
        with writer.transaction():
            counts, scoring = _load_and_score(writer, ledger, prepared, clinics, settings, in_batch)
    except Exception as exc:  # rolled back: the file is rejected whole, the run goes on
        if is_storage_failure(exc):
            raise
        log.warning("%s (clinic %s): rejected after %s", source.name, ledger.clinic_id, type(exc).__name__)
        problem = _unexpected(exc, "loading and scoring the file")
        return _reject(writer, warehouse, settings, source, ledger, problem, f"{source.name}: {problem}", publish)
    crash_point("after_commit")
    # scoring may have touched other dyads' clinics only through recalibration, which rescored all
    if publish:  # a sweep publishes once at its end instead of after every file
        writer.publish(warehouse.snapshots, publish_scope(ledger.clinic_id, scoring))
    crash_point("after_publish")
    archive_bytes(source.data, source.path, admitted.target, source.signature, settings)
    return _loaded(source.name, ledger, prepared, counts, admitted.target, scoring)


def publish_scope(clinic_id: str, scoring: ScoringResult | None) -> list[str] | None:
    """The snapshots a file's run republishes: every clinic's after reliable change was re-estimated (None),
    else its own clinic's and those of any dyads its scoring took over from a batch cut short."""
    if scoring and scoring.recalibrated:
        return None
    return sorted({clinic_id, *(scoring.clinics if scoring else ())})


def _load_and_score(
    writer: Writer,
    ledger: Ledger,
    prepared: PreparedExport,
    clinics: dict[str, Clinic],
    settings: Settings,
    in_batch: bool = False,
) -> tuple[LoadCounts, ScoringResult | None]:
    """Load one prepared export and score the dyads it touched, inside the caller's transaction."""
    counts = writer.load_export(ledger, prepared.ratings, prepared.quarantine, prepared.client_refs)
    fault_point("load", ledger.file_name)
    # scored in the same transaction, or left to the batch's end in it: a crash never leaves ratings whose
    # dyads no scoring will reach
    touched = list(counts.touched_dyads)
    if not touched:
        return counts, None
    if in_batch:  # the batch's end scores every file's dyads in one pass (flows.reviews.settle_scores)
        writer.mark_pending([(ledger.export_id, ledger.clinic_id, touched)])
        return counts, None
    scoring = score_dyads(writer, clinics, settings, touched, export_id=ledger.export_id)
    return counts, scoring


def inbox_files(settings: Settings, clinics: str | list[str] | None = None) -> list[Path]:
    """Complete export files waiting in every clinic's inbox (or these clinics'), oldest first (the watcher's
    own definition). A sweep of some clinics lists only their folders: a network-wide listing per clinic
    would cost the night one full listing per clinic."""
    if not settings.inbox.exists():
        return []
    ids = [clinics] if isinstance(clinics, str) else clinics
    patterns = ["*/*"] if ids is None else [f"{glob.escape(clinic_id)}/*" for clinic_id in ids]
    found = [p for pattern in patterns for p in settings.inbox.glob(pattern) if is_candidate(p, settings.inbox)]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))
