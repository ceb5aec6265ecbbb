"""Releasing an export quarantined whole: a reviewer loads it as if the threshold allowed it."""

from __future__ import annotations

import hashlib
from pathlib import Path

from alliance.clinics import load_clinics
from alliance.errors import AllianceError, ConfigError
from alliance.pseudonyms import key_fingerprint, load_key
from alliance.readers import ReadLimits
from alliance.settings import Settings
from alliance.storage import Ledger, Warehouse
from flows.exports import prepare_export
from flows.pipeline import ExportResult, _load_and_score, _loaded, publish_scope


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
        writer.publish(warehouse.snapshots, publish_scope(clinic.id, scoring))
    return _loaded(ledger.file_name, ledger, prepared, counts, archived, scoring, "released")
