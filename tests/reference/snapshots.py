"""A snapshot's tables written as first written, one clinic at a time, kept as the oracle of
alliance.storage.snapshots (test_snapshot_oracle.py): the same tables, rows and views."""

from __future__ import annotations

from pathlib import Path

import duckdb

from alliance.storage.schema import CURRENT_FLAG, CURRENT_FLAG_ID, VIEWS_FILE
from alliance.storage.snapshots import NETWORK_REDACTED, SNAPSHOT_TABLES, SNAPSHOT_VERSION


def write_snapshot(con: duckdb.DuckDBPyConnection, target: Path, clinic_id: str | None) -> None:
    """The network's (clinic_id None) or one clinic's snapshot file at ``target``, from the writer's ``con``."""
    quoted = str(target).replace("'", "''")
    con.execute(f"ATTACH '{quoted}' AS snap (STORAGE_VERSION '{SNAPSHOT_VERSION}')")
    try:
        for table in SNAPSHOT_TABLES:
            columns = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
            select = NETWORK_REDACTED.get(table, "*") if clinic_id is None else "*"
            where = "TRUE"
            if clinic_id is not None and "clinic_id" in columns:
                where = "clinic_id = $clinic"
            elif clinic_id is not None and table == "reviews":
                where = f"""flag_id IN (SELECT r.flag_id FROM reviews r {CURRENT_FLAG}
                    JOIN flags f ON f.flag_id = {CURRENT_FLAG_ID} WHERE f.clinic_id = $clinic)"""
            elif clinic_id is not None and table == "flag_renames":
                where = "new_flag_id IN (SELECT flag_id FROM flags WHERE clinic_id = $clinic)"
            params = {"clinic": clinic_id} if "$clinic" in where else {}
            con.execute(f"CREATE TABLE snap.{table} AS SELECT {select} FROM {table} WHERE {where}", params)
        if clinic_id is not None:
            con.execute(
                "CREATE TABLE snap.client_refs AS SELECT * FROM client_refs WHERE clinic_id = $clinic",
                {"clinic": clinic_id},
            )
    finally:
        con.execute("DETACH snap")
    views = duckdb.connect(str(target))
    try:
        views.execute(VIEWS_FILE.read_text(encoding="utf-8"))
        views.execute("CHECKPOINT")
    finally:
        views.close()
