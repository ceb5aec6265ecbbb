"""The ingest pipeline as plain functions: read, map, validate, load, archive. Flows and the CLI call these."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from alliance.clinics import Clinic, load_clinics
from alliance.errors import ConfigError, ExportGone, ExportRejected
from alliance.exports import ReadLimits, read_export, sha256_of
from alliance.faults import crash_point
from alliance.permissions import make_private
from alliance.pseudonyms import key_fingerprint, load_key, pseudonymise
from alliance.redaction import engine_problem
from alliance.settings import Settings
from alliance.storage import Ledger, Warehouse
from expectations import validate_ratings
from flows.events import is_candidate
from flows.scoring import ScoringResult, score_dyads
from transforms.mapping import rating_candidates, resolve_columns, to_canonical, unrated_rows
from transforms.quarantine import QUARANTINE_SCHEMA, accepted_ratings, foreign_therapists, quarantine_rows, screen
from transforms.trajectory import with_dyad_id


@dataclass
class ExportResult:
    """What happened to one export file, for people and for flows."""

    file_name: str
    clinic_id: str
    status: str  # loaded | quarantined | rejected | duplicate
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


def prepare_export(
    path: Path,
    clinic: Clinic,
    key: bytes,
    export_id: str,
    file_share: float,
    max_bytes: int | None = None,
    limits: ReadLimits | None = None,
    known_therapists: pl.DataFrame | None = None,
) -> PreparedExport:
    """Read one export and split it into accepted ratings and quarantine rows; ExportRejected if unreadable.

    ``known_therapists`` (clinic_id, therapist_id already in the warehouse) quarantines rows whose therapist
    belongs only to other clinics (``foreign_therapist:therapist_id``).
    """
    profile = clinic.export
    raw = read_export(path, profile, max_bytes, limits)
    resolved = resolve_columns(raw.columns, profile.columns, path.name)
    vendor_of = {canonical: vendor for vendor, canonical in resolved.items()}
    canonical = to_canonical(raw, resolved)
    today = datetime.now(clinic.tz).date()
    accepted, quarantined, refs = [], [], []
    offset = 0
    for inst in profile.instrument_specs:
        candidates = rating_candidates(canonical, profile, inst, today, clinic.timezone)
        if candidates.is_empty():
            continue
        candidates = candidates.with_row_index("row_id", offset=offset).with_columns(
            pl.col("row_id").cast(pl.Int64), pseudonymise(candidates["client_ref"], key, clinic.id)
        )
        offset += candidates.height
        failures = validate_ratings(candidates, inst)
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


def top_reasons(quarantine: pl.DataFrame, limit: int = 3) -> list[tuple[str, int]]:
    """Most frequent broken rules of an export, e.g. [('out_of_range:srs_goals', 3)]."""
    counts: Counter[str] = Counter(rule for rules in quarantine["rules"].to_list() for rule in rules)
    return counts.most_common(limit)


def archive_path(settings: Settings, clinic_id: str, export_id: str, file_name: str, rejected: bool) -> Path:
    folder = settings.archive / clinic_id / ("rejected" if rejected else "")
    return folder / f"{export_id}__{file_name}"


def _archive(path: Path, target: Path, settings: Settings) -> Path:
    """Move a file out of the inbox unchanged; files from elsewhere are copied, the user's original kept."""
    if path.resolve() == target.resolve():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    inside_inbox = settings.inbox.resolve() in path.resolve().parents
    if inside_inbox:
        shutil.move(path, target)
    else:
        shutil.copy2(path, target)
    make_private(target)  # a moved file keeps the mode it was dropped with
    return target


def ingest_file(
    path: Path,
    settings: Settings,
    clinic_id: str | None = None,
    received_at: datetime | None = None,
    publish: bool = True,
) -> ExportResult:
    """Ingest one export end to end; the same bytes twice is a no-op reported as 'duplicate'.

    Example: ``ingest_file(Path("inbox/northside/export.csv"), load_settings())``. With ``publish=False``
    the snapshots are left to the caller (the nightly sweep publishes once, after its re-score).
    """
    clinics = load_clinics(settings.clinics_file)
    clinic = clinic_for(path, clinics, settings, clinic_id)
    if not path.is_file():
        in_inbox = settings.inbox.resolve() in path.resolve().parents
        raise (ExportGone if in_inbox else ConfigError)(f"{path}: no such file")
    key = load_key(settings)
    received_at = received_at or datetime.now(UTC)
    warehouse = Warehouse.of(settings)
    with warehouse.writer() as writer:
        writer.check_key(key_fingerprint(key))
        # the file is read under the lock: a concurrent run may have archived it while we waited
        if not path.is_file():
            raise ExportGone(f"{path.name}: no longer there; another run has taken it")
        sha = sha256_of(path)
        export_id = sha[:16]
        ledger = Ledger(
            export_id=export_id,
            clinic_id=clinic.id,
            file_name=path.name,
            sha256=sha,
            bytes=path.stat().st_size,
            received_at=received_at,
            status="loaded",
            instruments=list(clinic.export.instruments),
        )
        prior = writer.export_by_sha(sha)
        if prior is not None and prior["status"] != "rejected":
            # Same bytes already committed (or a crash came after the commit): only the archive move may be left.
            target = archive_path(settings, clinic.id, prior["export_id"], prior["file_name"], rejected=False)
            moved = _archive(path, target, settings) if not target.exists() else target
            if moved == target and path.exists() and settings.inbox.resolve() in path.resolve().parents:
                path.unlink()
            if publish:
                writer.publish(warehouse.snapshots, [clinic.id])
            return ExportResult(path.name, clinic.id, "duplicate", prior["export_id"], archived_as=str(target))
        try:
            known_therapists = writer.frame("SELECT DISTINCT clinic_id, therapist_id FROM ratings")
            prepared = prepare_export(
                path,
                clinic,
                key,
                export_id,
                settings.quarantine_file_share,
                int(settings.max_file_mb * 1e6),
                ReadLimits.from_settings(settings),
                known_therapists,
            )
        except ExportRejected as refused:
            rejection: ExportRejected | None = refused
        except (pl.exceptions.PolarsError, ValueError, KeyError, TypeError) as fault:
            # an engine failure past the reader quotes the value it met: refuse the file with the kind only
            rejection = ExportRejected(
                path.name, f"could not be processed ({type(fault).__name__}: {engine_problem(fault)}); please report it"
            )
        else:
            rejection = None
        if rejection is not None:
            target = archive_path(settings, clinic.id, export_id, path.name, rejected=True)
            writer.record_rejection(
                replace(ledger, status="rejected", error=rejection.problem, archived_as=str(target))
            )
            if publish:
                writer.publish(warehouse.snapshots, [clinic.id])
            _archive(path, target, settings)
            return ExportResult(
                path.name, clinic.id, "rejected", export_id, error=str(rejection), archived_as=str(target)
            )
        status = "quarantined" if prepared.whole_file_quarantined else "loaded"
        target = archive_path(settings, clinic.id, export_id, path.name, rejected=False)
        with writer.transaction():
            counts = writer.load_export(
                replace(
                    ledger,
                    status=status,
                    rows_total=prepared.rows_total,
                    rows_quarantined=prepared.quarantine.height,
                    archived_as=str(target),
                ),
                prepared.ratings,
                prepared.quarantine,
                prepared.client_refs,
            )
            # scored in the same transaction: a crash never leaves ratings without their flags
            scoring = (
                score_dyads(writer, clinics, settings, list(counts.touched_dyads), export_id=export_id)
                if counts.touched_dyads
                else None
            )
        crash_point("after_commit")
        # scoring may have touched other dyads' clinics only through recalibration, which rescored all
        if publish:  # a sweep publishes once at its end instead of after every file
            writer.publish(warehouse.snapshots, None if scoring and scoring.recalibrated else [clinic.id])
        crash_point("after_publish")
        _archive(path, target, settings)
    return ExportResult(
        path.name,
        clinic.id,
        status,
        export_id,
        rows_total=prepared.rows_total,
        rows_new=counts.new,
        rows_updated=counts.updated,
        rows_unchanged=counts.unchanged,
        rows_quarantined=counts.quarantined,
        top_reasons=top_reasons(prepared.quarantine),
        archived_as=str(target),
        scoring=scoring,
    )


def inbox_files(settings: Settings) -> list[Path]:
    """Complete export files waiting in every clinic's inbox, oldest first (the watcher's own definition)."""
    if not settings.inbox.exists():
        return []
    found = [p for p in settings.inbox.glob("*/*") if is_candidate(p, settings.inbox)]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))
