"""A batch's files read, mapped, validated and prepared together ahead of their ingests: one mapping per kind
of export, one GX validation per instrument, and each file kept for its ingest (``kept_read``), which then only
checks what it alone can know (its export id, the therapists other files brought)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from alliance.clinics import Clinic, load_clinics
from alliance.errors import AllianceError
from alliance.instruments import Instrument
from alliance.pseudonyms import load_key
from alliance.readers import ReadLimits
from alliance.readers.frames import engine_failure
from alliance.settings import Settings
from expectations import Prevalidated
from flows.archive import export_id_of
from flows.exports import (
    CanonicalExport,
    ExportCandidates,
    PreparedExport,
    Validator,
    clinic_for,
    identified,
    mapped_alone,
    prepare_export,
    prepare_together,
    read_canonical,
)
from transforms.mapping import rating_candidates
from transforms.quarantine import KnownTherapists

log = logging.getLogger("alliance.pipeline")

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
                out[n] = identified(export, together[m] if together is not None else mapped_alone(export), key)
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


def prevalidate(paths: list[Path], settings: Settings, clinic_id: str | None = None) -> Prevalidated:
    """The batch's validation done ahead: every file's candidates checked by one GX validation per instrument,
    each file prepared (``KeptRead``), and kept for the file's ingest, which then reads, maps and screens it once.

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
    export_ids = [export_id_of(clinic.id, sha256) for _, _, sha256, clinic, _ in kept]
    together: list[PreparedExport] | None = None
    if primed:
        try:
            ids = [(clinic, found, e) for (_, _, _, clinic, found), e in zip(kept, export_ids, strict=True)]
            together = prepare_together(ids, key, share, prevalidated)
        except BaseException as exc:  # each file is prepared alone below: one that fails, fails alone
            if not engine_failure(exc):
                raise
    nobody = pl.DataFrame(schema={"clinic_id": pl.String, "therapist_id": pl.String})  # foreign ones: at ingest
    for n, ((token, path, _, clinic, found), export_id) in enumerate(zip(kept, export_ids, strict=True)):
        prepared = together[n] if together is not None else None
        if together is None and primed:
            try:
                prepared = prepare_export(path, clinic, key, export_id, share, max_bytes, limits, nobody,
                                          validate=prevalidated, found=found)  # fmt: skip
            except BaseException as exc:  # its own ingest prepares it again and rejects it, with its reason
                if not engine_failure(exc):
                    raise
        prevalidated.keep(token, KeptRead(clinic, found, prepared, export_id, share))
    return prevalidated
