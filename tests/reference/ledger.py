"""A file's load as first written, one export per call, kept unchanged as the oracle of
``LedgerTables.load_exports`` (test_batch_load.py)."""

from __future__ import annotations

import polars as pl

from alliance.storage import Ledger, LoadCounts, Writer
from alliance.storage.schema import RATING_KEY
from alliance.storage.session import _now


def load_export(
    writer: Writer, ledger: Ledger, ratings: pl.DataFrame, quarantine: pl.DataFrame, client_refs: pl.DataFrame
) -> LoadCounts:
    """Upsert ratings, add quarantine rows and client references, write the ledger (inside ``transaction()``)."""
    now = _now()
    key = " AND ".join(f"r.{k} = s.{k}" for k in RATING_KEY)
    con = writer.con
    con.register("incoming_ratings", ratings.to_arrow())
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE staged AS
        SELECT s.*,
               CASE WHEN r.clinic_id IS NULL THEN 'new'
                    WHEN r.items IS NOT DISTINCT FROM s.items AND r.total = s.total THEN 'unchanged'
                    ELSE 'updated' END AS change
        FROM incoming_ratings s LEFT JOIN ratings r ON {key}"""
    )
    counted = dict(con.execute("SELECT change, count(*) FROM staged GROUP BY change").fetchall())
    if counted.get("updated"):
        con.execute(
            f"""INSERT INTO rating_history BY NAME
            SELECT r.*, ? AS replaced_by_export, ? AS replaced_at
            FROM ratings r JOIN staged s ON {key} WHERE s.change = 'updated'""",
            [ledger.export_id, now],
        )
        con.execute(
            f"""UPDATE ratings r SET items = s.items, total = s.total, export_id = s.export_id,
                   source_line = s.source_line, updated_at = ?
            FROM staged s WHERE {key} AND s.change = 'updated'""",
            [now],
        )
    con.execute(
        f"""INSERT INTO ratings BY NAME
        SELECT dyad_id, {", ".join(RATING_KEY)}, items, total, export_id, source_line,
               ?::TIMESTAMPTZ AS loaded_at, ?::TIMESTAMPTZ AS updated_at
        FROM staged WHERE change = 'new'""",
        [now, now],
    )
    if quarantine.height:
        con.register("incoming_quarantine", quarantine.to_arrow())
        con.execute(
            """INSERT INTO quarantine BY NAME
            SELECT *, ?::TIMESTAMPTZ AS quarantined_at FROM incoming_quarantine""",
            [now],
        )
    if client_refs.height:
        con.register("incoming_refs", client_refs.to_arrow())
        con.execute(
            """INSERT INTO client_refs BY NAME
            SELECT DISTINCT i.clinic_id, i.client_id, i.client_ref, i.first_export_id
            FROM incoming_refs i ANTI JOIN client_refs c
              ON c.clinic_id = i.clinic_id AND c.client_id = i.client_id"""
        )
    touched = con.execute("SELECT DISTINCT dyad_id FROM staged WHERE change <> 'unchanged' ORDER BY 1").fetchall()
    counts = LoadCounts(
        new=counted.get("new", 0),
        updated=counted.get("updated", 0),
        unchanged=counted.get("unchanged", 0),
        quarantined=quarantine.height,
        touched_dyads=tuple(row[0] for row in touched),
    )
    writer._write_ledger([(ledger, counts)])
    for name in ("incoming_ratings", "incoming_quarantine", "incoming_refs"):
        con.unregister(name)
    return counts
