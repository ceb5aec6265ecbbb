"""Table checksums that prove two copies of the warehouse (or a snapshot and its source) hold the same rows."""

from __future__ import annotations

import duckdb

from alliance.storage.session import _quote

# Columns that record when or in which run something happened (or which channel URL, which names a host and
# port): they differ between two runs that loaded the same data, so checksums that prove "same warehouse" leave
# them out.
VOLATILE_COLUMNS = {
    "received_at", "loaded_at", "updated_at", "replaced_at", "quarantined_at", "first_flagged_at",
    "worsened_at", "resolved_at", "estimated_at", "attempted_at", "reviewed_at", "published_at", "happened_at",
    "run_id", "started_at", "finished_at", "archived_as", "sha256", "alert_key", "renamed_at", "opened_at",
    "changed_at", "closed_at", "channel",
}  # fmt: skip
CHECKSUM_TABLES = (
    "exports", "ratings", "rating_history", "quarantine", "client_refs", "dyad_sessions", "flags", "dyads",
    "reviews", "cases", "case_reviews", "calibrations", "expected_trajectories", "alerts", "flag_renames",
    "pending_dyads",
)  # fmt: skip


def table_checksums(con: duckdb.DuckDBPyConnection, stable_only: bool = False) -> dict[str, tuple[int, str]]:
    """Row count and an order-independent md5 of every table's rows (without volatile columns when asked)."""
    out: dict[str, tuple[int, str]] = {}
    present = {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    for table in [t for t in CHECKSUM_TABLES if t in present]:  # a backup from before a table was added lacks it
        columns = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
        kept = [c for c in columns if not (stable_only and c in VOLATILE_COLUMNS)]
        row = " || '|' || ".join(f"coalesce(CAST({_quote(c)} AS VARCHAR), '∅')" for c in kept)
        count, digest = con.execute(
            "SELECT count(*), coalesce(md5(string_agg(r, chr(10) ORDER BY r)), '') "
            f"FROM (SELECT {row} AS r FROM {table})"
        ).fetchall()[0]
        out[table] = (int(count), str(digest))
    return out
