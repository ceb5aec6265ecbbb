"""Pseudonym key rotation: every client pseudonym, dyad id and flag id re-derived under a new key."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from alliance.errors import AllianceError
from alliance.faults import crash_point
from alliance.pseudonyms import create_key_file, key_fingerprint, load_key, new_key, pseudonym
from alliance.settings import Settings
from alliance.storage import Warehouse, Writer
from transforms.flags import flag_id
from transforms.trajectory import dyad_code

ID_MAP = {"old": pl.String, "new": pl.String}


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _read_key(path: Path) -> bytes:
    return path.read_text(encoding="utf-8").strip().encode()


def _swap(settings: Settings, pending: Path) -> None:
    """Retire the old key file and put the new one in its place; neither is ever deleted."""
    if settings.key_file.exists():
        os.replace(settings.key_file, settings.key_file.with_name(f"pseudonym.key.retired-{_stamp()}"))
    os.replace(pending, settings.key_file)


def rekey(settings: Settings, key: bytes | None = None) -> int:
    """Rotate the pseudonym key; returns the number of clients re-pseudonymised.

    The new key is written to ``pseudonym.key.new`` first, the warehouse is rewritten in one transaction,
    then the key files are swapped (the old one kept as ``pseudonym.key.retired-<time>`` to destroy once
    the result is verified). Interrupted after the commit, running it again finishes the swap; a key file
    whose fingerprint the warehouse records is never removed.
    """
    if settings.hmac_key is not None:
        raise AllianceError("ALLIANCE_HMAC_KEY is set: rotate the key where it is kept, then run rekey with --new-key")
    pending = settings.key_file.with_name("pseudonym.key.new")
    warehouse = Warehouse.of(settings)
    with warehouse.writer() as writer:
        recorded = writer.key_fingerprint()
        clients = writer.frame("SELECT count(*) AS n FROM client_refs").item()
        if pending.exists():
            if key_fingerprint(_read_key(pending)) == recorded:  # committed, but the swap never happened
                _swap(settings, pending)
                writer.audit("alliance", "rekey", "pseudonym key", "key file swap finished after an interruption")
                writer.publish(warehouse.snapshots, None, fresh=True)  # no old pseudonym left in a free block
                return int(clients)
            # written by a run stopped before its commit: the warehouse never used it; kept, never deleted
            os.replace(pending, pending.with_name(f"pseudonym.key.abandoned-{_stamp()}"))
        old = load_key(settings)
        if recorded not in (None, key_fingerprint(old)):
            raise AllianceError("the key file is not the warehouse's key; refusing to rotate from it")
        fresh = key or new_key()
        if fresh == old:
            raise AllianceError("the new key is the old key")
        create_key_file(pending, fresh)
        clients_map, dyad_map, flag_map = _id_maps(writer, fresh)
        with writer.transaction():
            writer.remap_ids(clients_map, dyad_map, flag_map, key_fingerprint(fresh))
        crash_point("after_rekey_commit")
        _swap(settings, pending)
        writer.publish(warehouse.snapshots, None, fresh=True)  # no old pseudonym left in a free block
    return clients_map.height


def _id_maps(writer: Writer, fresh: bytes) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Old -> new client pseudonyms (per clinic), dyad ids and flag ids."""
    refs = writer.frame("SELECT clinic_id, client_id AS old, client_ref FROM client_refs")
    clients = refs.with_columns(
        pl.Series("new", [pseudonym(fresh, c, r) for c, r in zip(refs["clinic_id"], refs["client_ref"], strict=True)])
    ).select("clinic_id", "old", "new")
    renamed = dict(zip(zip(clients["clinic_id"], clients["old"], strict=True), clients["new"], strict=True))
    dyads = writer.frame("SELECT DISTINCT dyad_id, clinic_id, client_id, therapist_id FROM dyads")
    dyad_map = {
        row["dyad_id"]: dyad_code(row["clinic_id"], renamed[(row["clinic_id"], row["client_id"])], row["therapist_id"])
        for row in dyads.iter_rows(named=True)
    }
    flags = writer.frame("SELECT flag_id, dyad_id, instrument, rule, first_session_date, first_session FROM flags")
    flag_map = {
        row["flag_id"]: flag_id(
            dyad_map[row["dyad_id"]], row["instrument"], row["rule"], row["first_session_date"], row["first_session"]
        )
        for row in flags.iter_rows(named=True)
    }
    return (
        clients,
        pl.DataFrame({"old": list(dyad_map), "new": list(dyad_map.values())}, schema=ID_MAP),
        pl.DataFrame({"old": list(flag_map), "new": list(flag_map.values())}, schema=ID_MAP),
    )
