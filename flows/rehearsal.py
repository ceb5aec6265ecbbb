"""A dry run of one ingest: read, map, validate and pseudonymise as ingest does, and write nothing anywhere."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from alliance.clinics import load_clinics
from alliance.errors import ConfigError, ExportRejected, StorageError
from alliance.pseudonyms import load_key
from alliance.readers import ReadLimits, header_position
from alliance.settings import Settings
from alliance.storage import Warehouse
from flows.archive import export_id_of
from flows.exports import clinic_for, prepare_export
from flows.pipeline import duplicate_message

PREVIEW_COLUMNS = ("source_line", "instrument", "client_id", "therapist_id", "session_date", "session_number", "total")


@dataclass(frozen=True)
class Rehearsal:
    """What ingest would do with one file: its outcome, counts, reasons with lines, and stored-form rows."""

    file_name: str
    clinic_id: str
    status: str  # loaded | quarantined (whole) | rejected | duplicate
    rows_read: int = 0
    would_load: int = 0
    quarantined_rows: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)  # rule -> rows
    reason_lines: dict[str, list[int]] = field(default_factory=dict)  # rule -> first source lines
    preview: pl.DataFrame | None = None
    error: str | None = None
    header: str | None = None  # where the header was taken from, e.g. 'line 4 (detected)'

    @property
    def exit_code(self) -> int:
        """The code `alliance ingest` would exit with for this file alone."""
        return {"rejected": 2, "quarantined": 3}.get(self.status, 0)


def rehearse(path: Path, settings: Settings, clinic_id: str | None = None, preview_rows: int = 5) -> Rehearsal:
    """Everything ingest does before its transaction, for one file; the warehouse, archive and inbox stay untouched.

    Example: ``rehearse(Path("inbox/northside/export.csv"), load_settings()).quarantined``.
    """
    clinic = clinic_for(path, load_clinics(settings.clinics_file), settings, clinic_id)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    key = load_key(settings)
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        prior = Warehouse.of(settings).prior_export(clinic.id, sha256)
    except StorageError:  # a writer has the warehouse open: the file is rehearsed as new
        prior = None
    if prior is not None and prior["status"] != "rejected":
        return Rehearsal(path.name, clinic.id, "duplicate", error=duplicate_message(prior))
    export_id = export_id_of(clinic.id, sha256)
    if len(data) > settings.max_file_mb * 1e6:
        return Rehearsal(path.name, clinic.id, "rejected", error=f"over the {settings.max_file_mb:.0f} MB limit")
    try:
        prepared = prepare_export(
            path, clinic, key, export_id, settings.quarantine_file_share, None,
            ReadLimits.from_settings(settings), data=data,
        )  # fmt: skip
    except ExportRejected as rejection:
        return Rehearsal(path.name, clinic.id, "rejected", error=str(rejection))
    quarantine = prepared.quarantine.filter(pl.col("rules").list.first() != "file_quarantined")
    per_rule = quarantine.select("source_line", pl.col("rules")).explode("rules")
    counts = Counter(per_rule["rules"].to_list())
    lines = {
        rule: sorted(per_rule.filter(pl.col("rules") == rule)["source_line"].unique().to_list())[:5] for rule in counts
    }
    preview = prepared.ratings.sort("source_line").head(preview_rows).select(PREVIEW_COLUMNS)
    return Rehearsal(
        path.name,
        clinic.id,
        "quarantined" if prepared.whole_file_quarantined else "loaded",
        rows_read=prepared.rows_total,
        would_load=prepared.ratings.height,
        quarantined_rows=prepared.quarantine.height,
        quarantined=dict(counts.most_common()),
        reason_lines=lines,
        preview=preview,
        header=header_position(data, clinic.export, path.name),
    )
