"""Reading one export: its bytes mapped to each instrument's rating candidates, validated and screened into
ratings and quarantine rows; and what a batch reads and validates ahead of its files' ingests."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import polars as pl

from alliance.clinics import Clinic, load_clinics
from alliance.errors import AllianceError, ConfigError
from alliance.instruments import Instrument
from alliance.pseudonyms import load_key, pseudonymise
from alliance.readers import ReadLimits, read_export
from alliance.readers.frames import engine_failure
from alliance.settings import Settings
from expectations import Prevalidated, validate_ratings
from flows.archive import export_id_of
from transforms.long_layout import widen
from transforms.mapping import footer_split, rating_candidates, resolve_columns, to_canonical, unrated_rows
from transforms.quarantine import (
    QUARANTINE_SCHEMA,
    KnownTherapists,
    accepted_ratings,
    foreign_therapists,
    quarantine_rows,
    screen,
)
from transforms.trajectory import with_dyad_id

log = logging.getLogger("alliance.pipeline")
Validator = Callable[[pl.DataFrame, Instrument], pl.DataFrame]  # candidates -> failures (row_id, rule)


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


@dataclass(frozen=True)
class CanonicalExport:
    """An export read into the canonical fields, before its rating candidates are built."""

    clinic: Clinic
    canonical: pl.DataFrame
    aside: pl.DataFrame
    vendor_of: dict[str, str]
    today: date


def read_canonical(
    path: Path,
    clinic: Clinic,
    max_bytes: int | None = None,
    limits: ReadLimits | None = None,
    data: bytes | None = None,
) -> CanonicalExport:
    """Read one export into the canonical fields; ExportRejected if unreadable."""
    profile = clinic.export
    raw = read_export(path, profile, max_bytes, limits, data, complete=True)
    columns = profile.columns
    if profile.layout == "long":
        widened = widen(raw, profile, path.name)
        raw, columns = widened.frame, widened.columns
    resolved = resolve_columns(raw.columns, columns, path.name)
    canonical, aside = footer_split(to_canonical(raw, resolved))
    vendor_of = {canonical: vendor for vendor, canonical in resolved.items()}
    return CanonicalExport(clinic, canonical, aside, vendor_of, datetime.now(clinic.tz).date())


def export_candidates(
    path: Path,
    clinic: Clinic,
    key: bytes,
    max_bytes: int | None = None,
    limits: ReadLimits | None = None,
    data: bytes | None = None,
) -> ExportCandidates:
    """Read one export and build its rating candidates; ExportRejected if unreadable."""
    export = read_canonical(path, clinic, max_bytes, limits, data)
    return _identified(export, _mapped_alone(export), key)


FILE = "__file"  # which export of several mapped together a row came from
MAP_ROWS = 100_000  # rows mapped as one frame at most: the mapping's working columns for them are held at once


def candidates_of(exports: list[CanonicalExport], key: bytes) -> list[ExportCandidates | None]:
    """Each export's candidates, as ``export_candidates`` builds them (None where that fails).

    Exports of one kind (profile, timezone, date and canonical columns) are mapped as one frame of up to
    MAP_ROWS rows: the expressions are built and run once for all of them, not once per file, as a network's
    nightly files of one vendor format are. A kind that fails together is mapped file by file, so one file
    fails alone."""
    profiles: dict[int, str] = {}  # a profile's settings, by the profile object clinics share within a batch
    kinds: dict[tuple[object, ...], list[int]] = {}
    for n, export in enumerate(exports):
        profile = export.clinic.export
        text = profiles.get(id(profile)) or profiles.setdefault(id(profile), profile.model_dump_json())
        kind = (text, export.clinic.timezone, export.today, tuple(export.canonical.schema.items()))
        kinds.setdefault(kind, []).append(n)
    out: list[ExportCandidates | None] = [None] * len(exports)
    for members in (chunk for kind in kinds.values() for chunk in _by_rows(kind, exports)):
        try:
            together = _mapped_together([exports[n] for n in members]) if len(members) > 1 else None
        except BaseException as exc:  # a Polars panic too: each file of the kind is mapped alone below
            if not engine_failure(exc):
                raise
            together = None
        for m, n in enumerate(members):
            export = exports[n]
            try:
                out[n] = _identified(export, together[m] if together is not None else _mapped_alone(export), key)
            except BaseException as exc:  # the file's own ingest reads it again and rejects it with its reason
                if not engine_failure(exc):
                    raise
                out[n] = None
    return out


def _by_rows(members: list[int], exports: list[CanonicalExport]) -> Iterator[list[int]]:
    """Exports of one kind in runs of at most MAP_ROWS rows (or one larger export alone)."""
    chunk: list[int] = []
    rows = 0
    for n in members:
        height = exports[n].canonical.height
        if chunk and rows + height > MAP_ROWS:
            yield chunk
            chunk, rows = [], 0
        chunk.append(n)
        rows += height
    if chunk:
        yield chunk


def _mapped_alone(export: CanonicalExport) -> list[tuple[Instrument, pl.DataFrame]]:
    """The rating candidates of one export, per instrument of its profile."""
    profile, clinic = export.clinic.export, export.clinic
    return [
        (inst, rating_candidates(export.canonical, profile, inst, export.today, clinic.timezone))
        for inst in profile.instrument_specs
    ]


def _mapped_together(exports: list[CanonicalExport]) -> list[list[tuple[Instrument, pl.DataFrame]]]:
    """The rating candidates of exports of one kind, mapped as one frame and split back by file."""
    first = exports[0]
    profile = first.clinic.export
    whole = pl.concat(  # one chunk: a Polars 2.1 panic in a string function was met once on a concatenation
        [e.canonical.with_columns(pl.lit(m, pl.Int32).alias(FILE)) for m, e in enumerate(exports)],
        how="vertical",
        rechunk=True,
    )
    found: list[list[tuple[Instrument, pl.DataFrame]]] = [[] for _ in exports]
    for inst in profile.instrument_specs:
        candidates = rating_candidates(whole, profile, inst, first.today, first.clinic.timezone, carry=FILE)
        if candidates.is_empty():
            for mine in found:
                mine.append((inst, pl.DataFrame()))
            continue
        parts = candidates.partition_by(FILE, maintain_order=True, include_key=False, as_dict=True)
        for m, mine in enumerate(found):
            mine.append((inst, parts.get((m,), pl.DataFrame())))
    return found


def _identified(export: CanonicalExport, found: list[tuple[Instrument, pl.DataFrame]], key: bytes) -> ExportCandidates:
    """Each instrument's non-empty candidates with row ids running across the file and pseudonymised clients."""
    per_instrument = []
    offset = 0
    for inst, candidates in found:
        if candidates.is_empty():
            continue
        candidates = candidates.with_row_index("row_id", offset=offset).with_columns(
            pl.col("row_id").cast(pl.Int64), pseudonymise(candidates["client_ref"], key, export.clinic.id)
        )
        offset += candidates.height
        per_instrument.append((inst, candidates))
    return ExportCandidates(export.canonical, export.aside, export.vendor_of, per_instrument, export.today)


PREVALIDATE_FILES = 200  # files read and validated ahead in one batch: GX's fixed cost shared, memory bounded
PREVALIDATE_BYTES = 64_000_000  # or fewer: a group's frames take about 6 times its files' bytes in memory
ReadToken = tuple[str, str, str, bytes, int | None, ReadLimits | None]


def read_token(
    path: Path, clinic: Clinic, sha256: str, key: bytes, max_bytes: int | None, limits: ReadLimits | None
) -> ReadToken:
    """What an export's candidates depend on besides the clinic's profile and the date (the path: its suffix)."""
    return str(path.absolute()), clinic.id, sha256, key, max_bytes, limits


@dataclass(frozen=True)
class KeptRead:
    """What a batch read of one file: its candidates, and the file prepared as its first ingest would prepare it
    if none of its therapists belonged to another clinic (None when preparing it failed: its ingest says why)."""

    clinic: Clinic
    found: ExportCandidates
    prepared: PreparedExport | None
    export_id: str  # the export id it was prepared for: the first ingest of these bytes at this clinic
    file_share: float

    def ready(self, export_id: str, file_share: float, known: KnownTherapists) -> PreparedExport | None:
        """The prepared file, when its ingest would prepare exactly this: same export id and quarantine share,
        and no therapist known only at other clinics; else None (prepared again from ``found``)."""
        if self.prepared is None or export_id != self.export_id or file_share != self.file_share:
            return None
        if any(known.any_foreign(self.clinic.id, c) for _, c in self.found.per_instrument):
            return None
        return self.prepared


def kept_read(validate: Validator | None, clinic: Clinic, token: ReadToken) -> KeptRead | None:
    """What a batch read ahead from exactly these bytes, for this profile, key and date; else None."""
    kept = validate.take(token) if isinstance(validate, Prevalidated) else None
    if not isinstance(kept, KeptRead):
        return None
    return kept if kept.clinic == clinic and kept.found.today == datetime.now(clinic.tz).date() else None


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
    read: list[tuple[Path, str, CanonicalExport]] = []
    for path in paths:
        try:
            clinic = clinic_for(path, clinics, settings, clinic_id)
            if path.stat().st_size > max_bytes:
                continue
            data = path.read_bytes()
            read.append((path, hashlib.sha256(data).hexdigest(), read_canonical(path, clinic, max_bytes, limits, data)))
        except BaseException as exc:  # the file's own ingest rejects it, with its reason
            if not engine_failure(exc):
                raise
    kept: list[tuple[ReadToken, Path, str, Clinic, ExportCandidates]] = []
    for (path, sha256, export), found in zip(read, candidates_of([e for _, _, e in read], key), strict=True):
        if found is not None:
            kept.append((read_token(path, export.clinic, sha256, key, max_bytes, limits), path, sha256, export.clinic,
                         found))  # fmt: skip
            batch += [(candidates, inst) for inst, candidates in found.per_instrument]
    try:
        prevalidated.prime(batch)
        primed = True
    except Exception as exc:
        log.warning("batch validation failed (%s); each file is validated on its own", type(exc).__name__)
        primed = False
    # each file prepared here too, so that a read-ahead worker screens it and its ingest only checks therapists
    share = settings.quarantine_file_share
    nobody = pl.DataFrame(schema={"clinic_id": pl.String, "therapist_id": pl.String})  # foreign ones: at ingest
    for token, path, sha256, clinic, found in kept:
        export_id, prepared = export_id_of(clinic.id, sha256), None
        try:
            if primed:
                prepared = prepare_export(path, clinic, key, export_id, share, max_bytes, limits, nobody,
                                          validate=prevalidated, found=found)  # fmt: skip
        except BaseException as exc:  # its own ingest prepares it again and rejects it, with its reason
            if not engine_failure(exc):
                raise
        prevalidated.keep(token, KeptRead(clinic, found, prepared, export_id, share))
    return prevalidated
