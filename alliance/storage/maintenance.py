"""Upkeep of the warehouse: the pseudonym key's fingerprint, key rotation and the consistency check."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from alliance.errors import StorageError
from alliance.readers import sha256_of
from alliance.storage.schema import CURRENT_FLAG, CURRENT_FLAG_ID, RATING_KEY, UNDATED_CHANGE
from alliance.storage.session import Session, _now


class Maintenance(Session):
    """The key fingerprint, id remapping on key rotation, and ``verify``."""

    _key_checked: str | None = None  # the fingerprint this session found recorded: each file of a batch asks

    def check_key(self, fingerprint: str) -> None:
        """Record the pseudonym key's fingerprint on first use; refuse a different key afterwards."""
        if fingerprint == self._key_checked:
            return
        found = self.con.execute("SELECT value FROM meta WHERE key = 'key_fingerprint'").fetchall()
        if not found:
            self.con.execute("INSERT INTO meta VALUES ('key_fingerprint', ?)", [fingerprint])
        elif found[0][0] != fingerprint:
            raise StorageError(
                f"the pseudonym key (fingerprint {fingerprint}) is not the one this warehouse was built with "
                f"({found[0][0]}); the same client would get a second pseudonym. Use the warehouse's key, or "
                "finish an interrupted `alliance rekey` (it leaves pseudonym.key.new beside the key file)"
            )
        self._key_checked = fingerprint

    def forget(self) -> None:
        self._key_checked = None
        super().forget()

    def meta_value(self, key: str) -> str | None:
        found = self.con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchall()
        return str(found[0][0]) if found else None

    def set_meta(self, key: str, value: str) -> None:
        self.con.execute("DELETE FROM meta WHERE key = ?", [key])
        self.con.execute("INSERT INTO meta VALUES (?, ?)", [key, value])

    def key_fingerprint(self) -> str | None:
        return self.meta_value("key_fingerprint")

    def remap_ids(
        self,
        clients: pl.DataFrame,
        dyads: pl.DataFrame,
        flags: pl.DataFrame,
        fingerprint: str,
    ) -> None:
        """Replace client pseudonyms, dyad ids and flag ids (key rotation), in the caller's transaction.

        ``clients``: clinic_id, old, new; ``dyads`` and ``flags``: old, new. The append-only ``reviews``,
        ``case_reviews``, ``audit`` and ``alerts`` keep their rows: old flag ids resolve through ``flag_renames``;
        cases keep their ids, so the alert keys of what was told stay valid.
        """
        con = self.con
        now = _now()
        con.register("client_map", clients.to_arrow())
        con.register("dyad_map", dyads.to_arrow())
        con.register("flag_map", flags.to_arrow())
        for table in ("ratings", "rating_history", "client_refs", "dyad_sessions", "flags", "dyads", "cases"):
            con.execute(
                f"""UPDATE {table} t SET client_id = m.new FROM client_map m
                WHERE t.clinic_id = m.clinic_id AND t.client_id = m.old"""
            )
        for table in ("ratings", "rating_history", "dyad_sessions", "flags", "dyads", "cases", "pending_dyads"):
            con.execute(f"UPDATE {table} t SET dyad_id = m.new FROM dyad_map m WHERE t.dyad_id = m.old")
        con.execute("UPDATE flags t SET flag_id = m.new FROM flag_map m WHERE t.flag_id = m.old")
        self.set_meta(UNDATED_CHANGE, now.isoformat())  # ids no column dates: snapshots are compared whole after it
        # ids renamed by an earlier rotation follow along, so every old id resolves in one step
        con.execute(
            """INSERT INTO flag_renames
            SELECT r.old_flag_id, m.new, ?::TIMESTAMPTZ FROM flag_renames r JOIN flag_map m ON r.new_flag_id = m.old""",
            [now],
        )
        con.execute("INSERT INTO flag_renames SELECT old, new, ?::TIMESTAMPTZ FROM flag_map", [now])
        # a case keeps its id (so its alert keys, and what was told, stay as they are); its flags are named anew
        con.execute(
            """UPDATE cases c SET flag_ids = m.ids FROM (
                SELECT u.case_id, list_sort(list(coalesce(f.new, u.flag_id))) AS ids
                FROM (SELECT case_id, unnest(flag_ids) AS flag_id FROM cases) u
                LEFT JOIN flag_map f ON f.old = u.flag_id GROUP BY u.case_id
            ) m WHERE c.case_id = m.case_id"""
        )
        con.execute(
            """UPDATE quarantine q SET "values" = replace(q."values"::VARCHAR, m.old, m.new)::JSON
            FROM client_map m WHERE q.clinic_id = m.clinic_id AND contains(q."values"::VARCHAR, m.old)"""
        )
        con.execute("DELETE FROM meta WHERE key = 'key_fingerprint'")
        con.execute("INSERT INTO meta VALUES ('key_fingerprint', ?)", [fingerprint])
        self._key_checked = None
        self.audit(
            "alliance", "rekey", "pseudonym key",
            f"{clients.height} clients re-pseudonymised; {flags.height} flag ids renamed (flag_renames)",
            now,
        )  # fmt: skip
        for name in ("client_map", "dyad_map", "flag_map"):
            con.unregister(name)

    def verify(self, snapshots: Path) -> list[str]:
        """Every inconsistency found, one line each: ledger sums, orphans, duplicate keys, snapshot checksums."""
        checks = {
            "exports whose rows_total differs from new + updated + unchanged + quarantined": """
                SELECT file_name FROM exports
                WHERE rows_total <> rows_new + rows_updated + rows_unchanged + rows_quarantined""",
            "exports whose quarantine rows differ from rows_quarantined": """
                SELECT e.file_name FROM exports e LEFT JOIN
                    (SELECT export_id, count(*) AS n FROM quarantine GROUP BY 1) q USING (export_id)
                WHERE coalesce(q.n, 0) <> e.rows_quarantined""",
            "ratings whose export is not in the ledger": """
                SELECT DISTINCT r.export_id FROM ratings r ANTI JOIN exports e USING (export_id)""",
            "ratings stored twice under one natural key": f"""
                SELECT {", ".join(RATING_KEY)} FROM ratings GROUP BY ALL HAVING count(*) > 1""",
            "ratings without a client reference for their clinic": """
                SELECT DISTINCT r.clinic_id, r.client_id FROM ratings r
                ANTI JOIN client_refs c USING (clinic_id, client_id)""",
            "ratings of dyads missing from the dyads table": """
                SELECT DISTINCT dyad_id FROM ratings ANTI JOIN dyads USING (dyad_id)""",
            "flags of unknown dyads": "SELECT flag_id FROM flags ANTI JOIN dyads USING (dyad_id)",
            "flags stored twice": "SELECT flag_id FROM flags GROUP BY 1 HAVING count(*) > 1",
            "reviews of unknown flags": f"""
                SELECT DISTINCT r.flag_id FROM reviews r {CURRENT_FLAG}
                ANTI JOIN flags f ON f.flag_id = {CURRENT_FLAG_ID}""",
            "review audit rows naming unknown flags": f"""
                SELECT DISTINCT r.flag_id FROM (SELECT subject AS flag_id FROM audit WHERE action = 'review') r
                {CURRENT_FLAG} ANTI JOIN flags f ON f.flag_id = {CURRENT_FLAG_ID}""",
            "more ratings than the ledger ever added": """
                SELECT 1 WHERE (SELECT count(*) FROM ratings) <> (SELECT coalesce(sum(rows_new), 0) FROM exports)""",
        }
        problems = []
        for what, sql in checks.items():
            found = self.con.execute(f"SELECT count(*) FROM ({sql})").fetchall()[0][0]
            if found:
                problems.append(f"{found} {what}")
        for name, digest in self.con.execute("SELECT path, sha256 FROM snapshots ORDER BY path").fetchall():
            path = snapshots / name
            if not path.exists():
                problems.append(f"snapshot {name} is missing")
            elif sha256_of(path) != digest:
                problems.append(f"snapshot {name} does not match the checksum recorded when it was published")
        archived = self.con.execute(
            "SELECT file_name, archived_as, sha256 FROM exports WHERE archived_as IS NOT NULL ORDER BY received_at"
        ).fetchall()
        for name, archived_as, digest in archived:
            path = Path(archived_as)
            # a file moved on (a retried rejection) or removed by retention is not checked; a changed one is
            if path.is_file() and sha256_of(path) != digest:
                problems.append(f"archived file {path.name} is not the bytes loaded from {name} (sha256 differs)")
        return problems
