"""The ingest pipeline as plain functions: read, map, validate, load, archive. Flows and the CLI call these."""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
import shutil
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl

from alliance.clinics import Clinic, load_clinics
from alliance.errors import AllianceError, ConfigError, ExportGone, ExportRejected
from alliance.faults import crash_point, fault_point
from alliance.instruments import Instrument
from alliance.permissions import make_private
from alliance.pseudonyms import key_fingerprint, load_key, pseudonymise
from alliance.readers import ReadLimits, read_export, sha256_of
from alliance.settings import Settings
from alliance.storage import Ledger, LoadCounts, Warehouse, Writer, is_storage_failure
from expectations import Prevalidated, validate_ratings
from flows.events import is_candidate
from flows.scoring import ScoringResult, defer_dyads, score_dyads
from flows.watcher import Signature, file_signature, wait_until_settled
from transforms.long_layout import widen
from transforms.mapping import footer_split, rating_candidates, resolve_columns, to_canonical, unrated_rows
from transforms.quarantine import (
    QUARANTINE_SCHEMA,
    accepted_ratings,
    foreign_therapists,
    quarantine_rows,
    screen,
)
from transforms.trajectory import with_dyad_id

log = logging.getLogger("alliance.pipeline")
Validator = Callable[[pl.DataFrame, Instrument], pl.DataFrame]  # candidates -> failures (row_id, rule)


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


@dataclass(frozen=True)
class PreparedExport:
    """An export read and screened, ready for one load transaction."""

    ratings: pl.DataFrame
    quarantine: pl.DataFrame
    client_refs: pl.DataFrame
    rows_total: int
    whole_file_quarantined: bool


def clinic_for(path: Path, clinics: dict[str, Clinic], settings: Settings, clinic_id: str | None) -> Clinic:
    """The clinic named explicitly, else the one whose inbox folder holds the file."""
    lexical, inbox = Path(os.path.abspath(path)), Path(os.path.abspath(settings.inbox))
    if lexical.is_relative_to(inbox):
        # a link in one clinic's inbox must not smuggle in a file from elsewhere (or from another clinic)
        real, real_inbox = path.resolve(), settings.inbox.resolve()
        folder = lexical.relative_to(inbox).parts[:1]
        if not real.is_relative_to(real_inbox) or real.relative_to(real_inbox).parts[:1] != folder:
            raise ConfigError(f"{path.name}: a link in the inbox to a file outside its clinic's folder; refused")
    if clinic_id is None:
        try:
            clinic_id = path.resolve().relative_to(settings.inbox.resolve()).parts[0]
        except (ValueError, IndexError):
            raise ConfigError(f"{path.name}: not in an inbox/<clinic_id>/ folder; pass --clinic") from None
    if clinic_id not in clinics:
        known = ", ".join(sorted(clinics)) or "none"
        raise ConfigError(f"{path.name}: clinic {clinic_id!r} is not in clinics.toml (known: {known})")
    return clinics[clinic_id]


@dataclass(frozen=True)
class ExportCandidates:
    """An export read and mapped: each instrument's rating candidates (row ids, pseudonyms), before validation."""

    canonical: pl.DataFrame
    aside: pl.DataFrame  # summary and footer rows, rows a long layout could not place
    vendor_of: dict[str, str]
    per_instrument: list[tuple[Instrument, pl.DataFrame]]
    today: date  # the clinic's date the candidates were checked against (no session in the future)


def export_candidates(
    path: Path,
    clinic: Clinic,
    key: bytes,
    max_bytes: int | None = None,
    limits: ReadLimits | None = None,
    data: bytes | None = None,
) -> ExportCandidates:
    """Read one export and build its rating candidates; ExportRejected if unreadable."""
    profile = clinic.export
    raw = read_export(path, profile, max_bytes, limits, data, complete=True)
    columns = profile.columns
    if profile.layout == "long":
        widened = widen(raw, profile, path.name)
        raw, columns = widened.frame, widened.columns
    resolved = resolve_columns(raw.columns, columns, path.name)
    canonical, aside = footer_split(to_canonical(raw, resolved))
    today = datetime.now(clinic.tz).date()
    per_instrument = []
    offset = 0
    for inst in profile.instrument_specs:
        candidates = rating_candidates(canonical, profile, inst, today, clinic.timezone)
        if candidates.is_empty():
            continue
        candidates = candidates.with_row_index("row_id", offset=offset).with_columns(
            pl.col("row_id").cast(pl.Int64), pseudonymise(candidates["client_ref"], key, clinic.id)
        )
        offset += candidates.height
        per_instrument.append((inst, candidates))
    vendor_of = {canonical: vendor for vendor, canonical in resolved.items()}
    return ExportCandidates(canonical, aside, vendor_of, per_instrument, today)


ReadToken = tuple[str, str, bytes, int | None, ReadLimits | None]


def _read_token(clinic: Clinic, sha256: str, key: bytes, max_bytes: int | None, limits: ReadLimits | None) -> ReadToken:
    """What an export's candidates depend on besides the clinic's profile and the date."""
    return clinic.id, sha256, key, max_bytes, limits


def _kept_read(validate: Validator | None, clinic: Clinic, token: ReadToken) -> ExportCandidates | None:
    """The candidates a batch read ahead from exactly these bytes, for this profile, key and date; else None."""
    kept = validate.take(token) if isinstance(validate, Prevalidated) else None
    if not isinstance(kept, tuple):
        return None
    read_for, found = kept
    return found if read_for == clinic and found.today == datetime.now(clinic.tz).date() else None


def prepare_export(
    path: Path,
    clinic: Clinic,
    key: bytes,
    export_id: str,
    file_share: float,
    max_bytes: int | None = None,
    limits: ReadLimits | None = None,
    known_therapists: pl.DataFrame | None = None,
    data: bytes | None = None,
    validate: Validator | None = None,
    found: ExportCandidates | None = None,
) -> PreparedExport:
    """Read one export and split it into accepted ratings and quarantine rows; ExportRejected if unreadable.

    ``known_therapists`` (clinic_id, therapist_id already in the warehouse) quarantines rows whose therapist
    belongs only to other clinics (``foreign_therapist:therapist_id``). ``data`` are the file's bytes when the
    caller has read (and hashed) them already. ``validate`` is ``validate_ratings`` (the default) or a batch's
    ``Prevalidated`` (the same failures, found for many exports at once); ``found`` the candidates it read
    ahead from the same bytes.
    """
    validate = validate or validate_ratings
    profile = clinic.export
    found = found if found is not None else export_candidates(path, clinic, key, max_bytes, limits, data)
    canonical, aside, vendor_of = found.canonical, found.aside, found.vendor_of
    accepted, quarantined, refs = [], [], []
    for inst, candidates in found.per_instrument:
        failures = validate(candidates, inst)
        if known_therapists is not None:
            foreign = foreign_therapists(candidates, known_therapists, clinic.id)
            failures = pl.concat([failures, foreign], how="diagonal_relaxed")
        screened = screen(candidates, failures, inst, vendor_of, export_id, clinic.id)
        accepted.append(with_dyad_id(accepted_ratings(screened.accepted, inst, export_id, clinic.id)))
        quarantined.append(screened.quarantined)
        refs.append(candidates.select("client_id", "client_ref"))
    unrated = unrated_rows(canonical, profile)
    if unrated.height:
        unrated = unrated.with_columns(
            pseudonymise(unrated["client_ref"], key, clinic.id), pl.lit(["no_rating"]).alias("rules")
        )
        quarantined.append(quarantine_rows(unrated, None, vendor_of, export_id, clinic.id))
    if aside.height:  # summary and footer rows, rows a long layout could not place
        reasons = {(row, rule): reason for row, (rule, reason) in enumerate(aside.select("rule", "reason").rows())}
        aside = aside.with_columns(
            pseudonymise(aside["client_ref"], key, clinic.id),
            pl.concat_list("rule").alias("rules"),
            pl.int_range(pl.len(), dtype=pl.Int64).alias("row_id"),
        )
        quarantined.append(quarantine_rows(aside, None, vendor_of, export_id, clinic.id, reasons))
    if not accepted:  # no rating row at all (header only, or all unrated): empty, but with the ratings columns
        first = profile.instrument_specs[0]
        none = pl.DataFrame(
            schema={"client_id": pl.String, "therapist_id": pl.String, "session_date": pl.Date,
                    "session_number": pl.Int64, **dict.fromkeys(first.item_fields, pl.Float64),
                    "total": pl.Float64, "source_line": pl.Int64}
        )  # fmt: skip
        accepted.append(with_dyad_id(accepted_ratings(none, first, export_id, clinic.id)))
    ratings = pl.concat(accepted)
    quarantine = pl.concat(quarantined) if quarantined else pl.DataFrame(schema=QUARANTINE_SCHEMA)
    rows_total = ratings.height + quarantine.height
    whole = rows_total > 0 and quarantine.height / rows_total > file_share
    if whole:
        quarantine = pl.concat([quarantine, _quarantine_all(ratings, export_id)])
        ratings = ratings.clear()
    client_refs = (
        pl.concat(refs)
        .drop_nulls()
        .unique()
        .with_columns(pl.lit(clinic.id).alias("clinic_id"), pl.lit(export_id).alias("first_export_id"))
        if refs
        else pl.DataFrame()
    )
    return PreparedExport(ratings, quarantine, client_refs, rows_total, whole)


def _quarantine_all(ratings: pl.DataFrame, export_id: str) -> pl.DataFrame:
    """Passing rows of a file quarantined whole keep their values, so a reviewer can release them."""
    return ratings.select(
        pl.lit(export_id).alias("export_id"),
        pl.col("clinic_id"),
        pl.col("source_line").cast(pl.Int64),
        pl.col("instrument"),
        pl.lit(["file_quarantined"]).alias("rules"),
        pl.concat_list(
            pl.format("line {}: row passed, but the whole file was quarantined", pl.col("source_line"))
        ).alias("reasons"),
        pl.struct("client_id", "therapist_id", "session_date", "session_number", "total")
        .struct.json_encode()
        .alias("values"),
    )


def _loaded(
    name: str,
    clinic_id: str,
    status: str,
    export_id: str,
    prepared: PreparedExport,
    counts: LoadCounts,
    archived: Path,
    scoring: ScoringResult | None,
) -> ExportResult:
    """The result of an export whose rows went into the warehouse (loaded, quarantined whole, or released)."""
    return ExportResult(
        name,
        clinic_id,
        status,
        export_id,
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


ARCHIVED_PREFIX = re.compile(r"^[0-9a-f]{16}__")


def export_id_of(clinic_id: str, sha256: str, attempt: int = 0) -> str:
    """The id of one ingest of these bytes at this clinic; a rejected file retried after a fix gets a new one."""
    return hashlib.sha256(f"{clinic_id}\x1f{sha256}\x1f{attempt}".encode()).hexdigest()[:16]


def original_name(path: Path, settings: Settings) -> str:
    """The export's own name: a file re-ingested from the archive loses the export-id prefix it was given there."""
    inside_archive = settings.archive.resolve() in path.resolve().parents
    return ARCHIVED_PREFIX.sub("", path.name) if inside_archive else path.name


def _name_max(folder: Path) -> int:
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    try:
        return os.pathconf(probe, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def archive_path(settings: Settings, clinic_id: str, export_id: str, file_name: str, rejected: bool) -> Path:
    """archive/<clinic>/[rejected/]<export_id>__<name>, the name shortened (suffix kept) to fit the filesystem."""
    folder = settings.archive / clinic_id / ("rejected" if rejected else "")
    name = f"{export_id}__{file_name}"
    limit = _name_max(folder)
    if len(name.encode()) <= limit:
        return folder / name
    # the export id keeps shortened names unique; the start of the name and its suffix keep them recognisable
    suffix = Path(file_name).suffix if len(Path(file_name).suffix.encode()) <= 16 else ""
    room = limit - len(f"{export_id}__".encode()) - len("…".encode()) - len(suffix.encode())
    stem = file_name[: len(file_name) - len(suffix)].encode()[:room].decode("utf-8", errors="ignore")
    return folder / f"{export_id}__{stem}…{suffix}"


def _ours(path: Path, settings: Settings) -> bool:
    """Files in the inbox or the rejected archive are moved on; a file from elsewhere is the user's, and stays."""
    real = path.resolve()
    return settings.inbox.resolve() in real.parents or settings.archive.resolve() in real.parents


def _archive(data: bytes | None, path: Path, target: Path, signature: Signature, settings: Settings) -> Path:
    """Archive exactly the bytes that were read; the source leaves the inbox only if it is still those bytes.

    A file appended to after it was read stays in the inbox: the next run sees new bytes and loads the rest.
    A file too large to have been read (``data`` None) is moved, or copied when it is the user's.
    """
    if path.resolve() == target.resolve():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        (shutil.move if _ours(path, settings) else shutil.copy2)(path, target)
        make_private(target)  # a moved file keeps the mode it was dropped with
        return target
    if not (target.is_file() and target.stat().st_size == len(data)):
        partial = target.with_name(f".{target.name.encode()[:200].decode(errors='ignore')}.partial")
        try:
            partial.write_bytes(data)
            os.utime(partial, ns=(signature[1], signature[1]))
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)  # a full disk must not keep half a copy
            raise
    if _ours(path, settings) and file_signature(path) == signature:
        path.unlink(missing_ok=True)
    make_private(target)
    return target


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
) -> ExportResult:
    """Ingest one export end to end; the same bytes twice at one clinic is a no-op reported as 'duplicate'.

    Example: ``ingest_file(Path("inbox/northside/export.csv"), load_settings())``. With ``publish=False``
    the snapshots are left to the caller (the nightly sweep publishes once, after its re-score). A file still
    being written is left where it is (status ``unsettled``); an unexpected failure while reading or loading
    rejects that file alone, with its error class in the ledger. ``validate`` may be a ``Prevalidated`` batch
    (see ``prevalidate``). ``in_batch``: one file of a sweep or multi-file ingest, whose end scores every file's
    dyads in one pass (``flows.reviews.settle_scores``): this file's are left to it (``scoring`` None).
    """
    clinics = load_clinics(settings.clinics_file)
    clinic = clinic_for(path, clinics, settings, clinic_id)
    if not path.is_file():
        in_inbox = settings.inbox.resolve() in path.resolve().parents
        raise (ExportGone if in_inbox else ConfigError)(f"{path}: no such file")
    key = load_key(settings)
    received_at = received_at or datetime.now(UTC)
    unsettled = ExportResult(
        path.name, clinic.id, "unsettled", "",
        error="still being written (its size or time keeps changing); left in place for the next run",
    )  # fmt: skip
    # waited for outside the writer lock, so a file still growing never holds up other runs
    settled = wait_until_settled(path, settings.settle_s, timeout=max(3 * settings.settle_s, 1.0))
    if settled is None:
        if not path.is_file():
            raise ExportGone(f"{path.name}: no longer there; another run has taken it")
        return unsettled
    warehouse = Warehouse.of(settings)
    with warehouse.writer() as writer:
        writer.check_key(key_fingerprint(key))
        # the file is read under the lock: a concurrent run may have archived it while we waited
        if not path.is_file():
            raise ExportGone(f"{path.name}: no longer there; another run has taken it")
        source = _read_settled(path, settings, settled)
        if source is None:
            return unsettled
        prior = writer.export_by_sha(clinic.id, source.sha256)
        if prior is not None and prior["status"] != "rejected":
            # Same bytes already committed (or a crash came after the commit): only the archive move may be left.
            target = archive_path(settings, clinic.id, prior["export_id"], prior["file_name"], rejected=False)
            _archive(source.data, path, target, source.signature, settings)
            if publish:
                writer.publish(warehouse.snapshots, [clinic.id])
            return ExportResult(
                source.name, clinic.id, "duplicate", prior["export_id"], archived_as=str(target),
                error=duplicate_message(prior),
            )  # fmt: skip
        export_id = export_id_of(clinic.id, source.sha256, writer.attempts(clinic.id, source.sha256))
        ledger = Ledger(
            export_id=export_id,
            clinic_id=clinic.id,
            file_name=source.name,
            sha256=source.sha256,
            bytes=source.signature[0],
            received_at=received_at,
            status="loaded",
            instruments=list(clinic.export.instruments),
        )

        def reject(problem: str, message: str) -> ExportResult:
            target = archive_path(settings, clinic.id, export_id, source.name, rejected=True)
            writer.record_rejection(replace(ledger, status="rejected", error=problem, archived_as=str(target)))
            if publish:
                writer.publish(warehouse.snapshots, [clinic.id])
            _archive(source.data, path, target, source.signature, settings)
            return ExportResult(source.name, clinic.id, "rejected", export_id, error=message, archived_as=str(target))

        if source.data is None:
            limit = settings.max_file_mb
            return reject(
                f"the file is {source.signature[0] / 1e6:.0f} MB, over the {limit:.0f} MB limit",
                f"{source.name}: the file is {source.signature[0] / 1e6:.0f} MB, over the {limit:.0f} MB limit",
            )
        try:
            fault_point("prepare", source.name)
            known_therapists = writer.known_therapists()
            max_bytes, limits = int(settings.max_file_mb * 1e6), ReadLimits.from_settings(settings)
            prepared = prepare_export(
                path,
                clinic,
                key,
                export_id,
                settings.quarantine_file_share,
                max_bytes,
                limits,
                known_therapists,
                data=source.data,
                validate=validate,
                found=_kept_read(validate, clinic, _read_token(clinic, source.sha256, key, max_bytes, limits)),
            )
        except ExportRejected as rejection:
            return reject(rejection.problem, str(rejection))
        except Exception as exc:  # the safety net: one file's surprise must not stop the others
            if is_storage_failure(exc) and not isinstance(exc, OSError):
                raise
            log.warning("%s (clinic %s): rejected after %s", source.name, clinic.id, type(exc).__name__)
            problem = _unexpected(exc, "reading and checking the file")
            return reject(problem, f"{source.name}: {problem}")
        status = "quarantined" if prepared.whole_file_quarantined else "loaded"
        target = archive_path(settings, clinic.id, export_id, source.name, rejected=False)
        try:
            with writer.transaction():
                counts, scoring = _load_and_score(
                    writer,
                    replace(
                        ledger,
                        status=status,
                        rows_total=prepared.rows_total,
                        rows_quarantined=prepared.quarantine.height,
                        archived_as=str(target),
                    ),
                    prepared,
                    clinics,
                    settings,
                    in_batch,
                )
        except Exception as exc:  # rolled back: the file is rejected whole, the run goes on
            if is_storage_failure(exc):
                raise
            log.warning("%s (clinic %s): rejected after %s", source.name, clinic.id, type(exc).__name__)
            problem = _unexpected(exc, "loading and scoring the file")
            return reject(problem, f"{source.name}: {problem}")
        crash_point("after_commit")
        # scoring may have touched other dyads' clinics only through recalibration, which rescored all
        if publish:  # a sweep publishes once at its end instead of after every file
            writer.publish(warehouse.snapshots, None if scoring and scoring.recalibrated else [clinic.id])
        crash_point("after_publish")
        _archive(source.data, path, target, source.signature, settings)
    return _loaded(source.name, clinic.id, status, export_id, prepared, counts, target, scoring)


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
    if in_batch:
        defer_dyads(writer, ledger.export_id, ledger.clinic_id, touched)
        return counts, None
    scoring = score_dyads(writer, clinics, settings, touched, export_id=ledger.export_id)
    return counts, scoring


def release_export(settings: Settings, export_id: str, by: str, note: str | None = None) -> ExportResult:
    """Load a file quarantined whole, as if the threshold allowed it: rows that broke a rule stay quarantined.

    Reviewed (``by``) and recorded in ``audit``. Example: ``release_export(settings, "3f9a2c1b7d0e4a55", "Dr Lee")``.
    """
    clinics = load_clinics(settings.clinics_file)
    key = load_key(settings)
    warehouse = Warehouse.of(settings)
    with warehouse.writer() as writer:
        writer.check_key(key_fingerprint(key))
        found = writer.export_by_id(export_id)
        if found is None:
            raise AllianceError(f"no export {export_id!r}; `alliance status` and the exports table list them")
        if found["status"] != "quarantined":
            status = found["status"]
            raise AllianceError(f"export {export_id} ({found['file_name']}) is {status}, not quarantined whole")
        if found["clinic_id"] not in clinics:
            raise ConfigError(f"export {export_id}: clinic {found['clinic_id']!r} is not in clinics.toml")
        clinic = clinics[found["clinic_id"]]
        archived = Path(str(found["archived_as"] or ""))
        if not archived.is_file():
            raise AllianceError(f"export {export_id}: its archived file {archived.name} is missing; nothing released")
        data = archived.read_bytes()
        if hashlib.sha256(data).hexdigest() != found["sha256"]:
            raise AllianceError(f"export {export_id}: the archived file is not the bytes quarantined; nothing released")
        prepared = prepare_export(
            archived.with_name(str(found["file_name"])),
            clinic,
            key,
            export_id,
            1.0,
            None,
            ReadLimits.from_settings(settings),
            writer.known_therapists(),
            data=data,
        )
        ledger = Ledger(
            export_id=export_id,
            clinic_id=clinic.id,
            file_name=str(found["file_name"]),
            sha256=str(found["sha256"]),
            bytes=len(data),
            received_at=found["received_at"],
            status="loaded",
            instruments=list(found["instruments"] or clinic.export.instruments),
            rows_total=prepared.rows_total,
            rows_quarantined=prepared.quarantine.height,
            archived_as=str(archived),
        )
        with writer.transaction():
            writer.drop_quarantine(export_id)
            counts, scoring = _load_and_score(writer, ledger, prepared, clinics, settings)
            writer.audit(
                by, "release", export_id,
                f"{counts.new} new, {counts.updated} updated, {counts.quarantined} still quarantined"
                + (f"; {note}" if note else ""),
            )  # fmt: skip
        writer.publish(warehouse.snapshots, None if scoring and scoring.recalibrated else [clinic.id])
    return _loaded(ledger.file_name, clinic.id, "released", export_id, prepared, counts, archived, scoring)


def prevalidate(paths: list[Path], settings: Settings, clinic_id: str | None = None) -> Prevalidated:
    """The batch's validation done ahead: every file's candidates checked by one GX validation per instrument,
    and kept for the file's ingest, which then reads and maps it once.

    Files are read as they are now, outside any lock; one that cannot be read, or changes before its ingest,
    is simply read and validated again by ``ingest_file``, which stays the judge of every file. Nothing here
    can stop a run: a batch that fails to validate leaves every file to its own validation.
    """
    prevalidated = Prevalidated()
    batch: list[tuple[pl.DataFrame, Instrument]] = []
    try:
        clinics, key = load_clinics(settings.clinics_file), load_key(settings)
    except AllianceError:
        return prevalidated  # each ingest reports the same problem for its own file
    limits, max_bytes = ReadLimits.from_settings(settings), int(settings.max_file_mb * 1e6)
    for path in paths:
        try:
            clinic = clinic_for(path, clinics, settings, clinic_id)
            if path.stat().st_size > max_bytes:
                continue
            data = path.read_bytes()
            found = export_candidates(path, clinic, key, max_bytes, limits, data)
        except Exception:  # the file's own ingest rejects it, with its reason
            continue
        token = _read_token(clinic, hashlib.sha256(data).hexdigest(), key, max_bytes, limits)
        prevalidated.keep(token, (clinic, found))
        batch += [(candidates, inst) for inst, candidates in found.per_instrument]
    try:
        prevalidated.prime(batch)
    except Exception as exc:
        log.warning("batch validation failed (%s); each file is validated on its own", type(exc).__name__)
    return prevalidated


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
