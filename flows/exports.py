"""Reading one export: its bytes mapped to each instrument's rating candidates, validated and screened into
ratings and quarantine rows (what a batch reads ahead of its files' ingests: ``flows.prevalidation``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import polars as pl

from alliance.clinics import Clinic
from alliance.errors import ConfigError
from alliance.instruments import Instrument
from alliance.pseudonyms import pseudonymise
from alliance.readers import ReadLimits, read_export
from alliance.settings import Settings
from expectations import validate_ratings
from transforms.long_layout import widen
from transforms.mapping import footer_split, rating_candidates, resolve_columns, to_canonical, unrated_rows
from transforms.quarantine import (
    QUARANTINE_SCHEMA,
    accepted_ratings,
    foreign_therapists,
    quarantine_rows,
    screen,
    split_failing,
)
from transforms.trajectory import with_dyad_id

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
    return identified(export, mapped_alone(export), key)


def mapped_alone(export: CanonicalExport) -> list[tuple[Instrument, pl.DataFrame]]:
    """The rating candidates of one export, per instrument of its profile."""
    profile, clinic = export.clinic.export, export.clinic
    return [
        (inst, rating_candidates(export.canonical, profile, inst, export.today, clinic.timezone))
        for inst in profile.instrument_specs
    ]


def identified(export: CanonicalExport, found: list[tuple[Instrument, pl.DataFrame]], key: bytes) -> ExportCandidates:
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
    found = found if found is not None else export_candidates(path, clinic, key, max_bytes, limits, data)
    screened = []
    for inst, candidates in found.per_instrument:
        failures = validate(candidates, inst)
        if known_therapists is not None:
            foreign = foreign_therapists(candidates, known_therapists, clinic.id)
            failures = pl.concat([failures, foreign], how="diagonal_relaxed")
        split = screen(candidates, failures, inst, found.vendor_of, export_id, clinic.id)
        ratings = with_dyad_id(accepted_ratings(split.accepted, inst, export_id, clinic.id))
        screened.append(Screening(ratings, split.quarantined, candidates.select("client_id", "client_ref")))
    return _assembled(found, clinic, key, export_id, file_share, screened)


@dataclass(frozen=True)
class Screening:
    """One instrument's rows of one export screened: its ratings, its quarantine rows, its client references."""

    ratings: pl.DataFrame
    quarantine: pl.DataFrame
    refs: pl.DataFrame


def prepare_together(
    exports: list[tuple[Clinic, ExportCandidates, str]], key: bytes, file_share: float, validate: Validator
) -> list[PreparedExport]:
    """``prepare_export`` of each (clinic, candidates read ahead, export id), none of whose therapists belongs to
    another clinic: the rows of one instrument and shape are screened, made ratings and given dyad ids in one
    pass for every export, not one per file (a night's files are a few hundred rows: per-file passes cost more
    than their rows). ``prepare_export`` is its oracle (``tests/test_batch_validation.py``)."""
    shapes: dict[tuple[object, ...], list[tuple[int, int, Instrument, pl.DataFrame, pl.DataFrame]]] = {}
    for n, (_, found, _) in enumerate(exports):
        for m, (inst, candidates) in enumerate(found.per_instrument):
            failures = validate(candidates, inst)
            shape = (inst.code, tuple(candidates.schema.items()), tuple(failures.schema.items()))
            shapes.setdefault(shape, []).append((n, m, inst, candidates, failures))
    screened: list[dict[int, Screening]] = [{} for _ in exports]
    for members in shapes.values():
        for (n, m), screening in _screened_together(members, exports).items():
            screened[n][m] = screening
    return [
        _assembled(found, clinic, key, export_id, file_share, [mine[m] for m in sorted(mine)])
        for (clinic, found, export_id), mine in zip(exports, screened, strict=True)
    ]


SCREENED_FILE = "__screened_file"  # which export of several screened together a row came from


def _screened_together(
    members: list[tuple[int, int, Instrument, pl.DataFrame, pl.DataFrame]],
    exports: list[tuple[Clinic, ExportCandidates, str]],
) -> dict[tuple[int, int], Screening]:
    """``screen``, ``accepted_ratings`` and ``with_dyad_id`` over one instrument's candidates of several exports
    of one shape at once, split back by export."""
    by = SCREENED_FILE
    inst = members[0][2]
    candidates = pl.concat([c.with_columns(pl.lit(n, pl.Int32).alias(by)) for n, _, _, c, _ in members], how="vertical")
    failures = pl.concat([f.with_columns(pl.lit(n, pl.Int32).alias(by)) for n, _, _, _, f in members], how="vertical")
    split = split_failing(candidates, failures, by)
    accepted, rejected, details = split if split is not None else (candidates, candidates.clear(), None)
    export_ids = {n: exports[n][2] for n, *_ in members}
    clinic_ids = {n: exports[n][0].id for n, *_ in members}
    ratings = with_dyad_id(
        accepted_ratings(
            accepted, inst, pl.col(by).replace_strict(export_ids, return_dtype=pl.String),
            pl.col(by).replace_strict(clinic_ids, return_dtype=pl.String), carry=by,
        )
    )  # fmt: skip
    ratings_of = ratings.partition_by(by, maintain_order=True, include_key=False, as_dict=True)
    rejected_of = rejected.partition_by(by, maintain_order=True, include_key=False, as_dict=True)
    details_of: dict[int, dict[tuple[object, ...], str]] = {}
    for (n, *row_rule), text in (details or {}).items():
        details_of.setdefault(n, {})[tuple(row_rule)] = text
    out = {}
    for n, m, _, frame, _ in members:
        mine = rejected_of.get((n,))
        quarantine = (
            quarantine_rows(
                mine, inst, exports[n][1].vendor_of, export_ids[n], clinic_ids[n],
                None if details is None else details_of.get(n, {}),
            )
            if mine is not None
            else pl.DataFrame(schema=QUARANTINE_SCHEMA)
        )  # fmt: skip
        ratings_n = ratings_of.get((n,), ratings.clear().drop(by))
        out[(n, m)] = Screening(ratings_n, quarantine, frame.select("client_id", "client_ref"))
    return out


def _assembled(
    found: ExportCandidates,
    clinic: Clinic,
    key: bytes,
    export_id: str,
    file_share: float,
    screened: list[Screening],
) -> PreparedExport:
    """One export's screened instruments, its unrated and set-aside rows, and the whole-file quarantine rule."""
    profile, canonical, aside, vendor_of = clinic.export, found.canonical, found.aside, found.vendor_of
    accepted = [s.ratings for s in screened]
    quarantined = [s.quarantine for s in screened]
    refs = [s.refs for s in screened]
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
