"""Pseudonym key rotation: every client pseudonym, dyad id and flag id re-derived under a new key."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import polars as pl

from alliance.errors import AllianceError
from alliance.pseudonyms import create_key_file, key_fingerprint, load_key, new_key, pseudonym
from alliance.settings import Settings
from alliance.storage import Warehouse
from transforms.flags import flag_id
from transforms.trajectory import dyad_code


def rekey(settings: Settings, key: bytes | None = None) -> int:
    """Rotate the pseudonym key; returns the number of clients re-pseudonymised.

    The new key is written to ``pseudonym.key.new`` first, the warehouse is rewritten in one transaction,
    then the key files are swapped (the old one kept as ``pseudonym.key.retired-<time>`` to destroy once
    the result is verified). Interrupted after the commit, the next run names the new key file to use.
    """
    if settings.hmac_key is not None:
        raise AllianceError("ALLIANCE_HMAC_KEY is set: rotate the key where it is kept, then run rekey with --new-key")
    old = load_key(settings)
    fresh = key or new_key()
    if fresh == old:
        raise AllianceError("the new key is the old key")
    pending = settings.key_file.with_name("pseudonym.key.new")
    pending.unlink(missing_ok=True)
    create_key_file(pending, fresh)
    warehouse = Warehouse.of(settings)
    with warehouse.writer() as writer:
        if writer.key_fingerprint() not in (None, key_fingerprint(old)):
            raise AllianceError("the key file is not the warehouse's key; refusing to rotate from it")
        refs = writer.frame("SELECT clinic_id, client_id AS old, client_ref FROM client_refs")
        clients = refs.with_columns(
            pl.Series(
                "new", [pseudonym(fresh, c, r) for c, r in zip(refs["clinic_id"], refs["client_ref"], strict=True)]
            )
        ).select("clinic_id", "old", "new")
        renamed = dict(zip(zip(clients["clinic_id"], clients["old"], strict=True), clients["new"], strict=True))
        dyads = writer.frame("SELECT DISTINCT dyad_id, clinic_id, client_id, therapist_id FROM dyads")
        dyad_map = {
            row["dyad_id"]: dyad_code(
                row["clinic_id"], renamed[(row["clinic_id"], row["client_id"])], row["therapist_id"]
            )
            for row in dyads.iter_rows(named=True)
        }
        flags = writer.frame("SELECT flag_id, dyad_id, instrument, rule, first_session_date, first_session FROM flags")
        flag_map = {
            row["flag_id"]: flag_id(
                dyad_map[row["dyad_id"]],
                row["instrument"],
                row["rule"],
                row["first_session_date"],
                row["first_session"],
            )
            for row in flags.iter_rows(named=True)
        }
        with writer.transaction():
            writer.remap_ids(
                clients,
                pl.DataFrame(
                    {"old": list(dyad_map), "new": list(dyad_map.values())}, schema={"old": pl.String, "new": pl.String}
                ),
                pl.DataFrame(
                    {"old": list(flag_map), "new": list(flag_map.values())}, schema={"old": pl.String, "new": pl.String}
                ),
                key_fingerprint(fresh),
            )
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        os.replace(settings.key_file, settings.key_file.with_name(f"pseudonym.key.retired-{stamp}"))
        os.replace(pending, settings.key_file)
        writer.publish(warehouse.snapshots, None)
    return clients.height
