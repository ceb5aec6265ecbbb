"""Supervisors' reviews of flags and cases, and the alerts delivered about them."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from alliance.errors import StorageError
from alliance.redaction import plain_text
from alliance.storage.schema import REVIEW_STATUSES
from alliance.storage.session import Session


class ReviewTables(Session):
    """Append-only reviews of flags and cases, and the record of alerts sent."""

    def review_case(self, case_id: str, to_status: str, reviewed_by: str, note: str | None, now: datetime) -> str:
        """Set a case's review status and apply it to the flags behind it (each reviewed, append-only, as if one
        by one); the case review records which flags it covered. Returns the case's previous status."""
        found = self.con.execute(
            "SELECT status, clinic_id, flag_ids FROM cases WHERE case_id = ?", [case_id]
        ).fetchall()
        if not found:
            raise StorageError(f"no case {case_id!r}; list cases with `alliance queue`")
        from_status, clinic_id, flag_ids = found[0]
        if from_status == "closed":
            raise StorageError(f"case {case_id} is closed (its dyad left the queue); a new case opens if it returns")
        if from_status == to_status:
            raise StorageError(f"case {case_id} is already {to_status}")
        covered = []
        for flag_id in flag_ids or []:
            current = self.con.execute("SELECT status FROM flags WHERE flag_id = ?", [flag_id]).fetchall()
            if current and current[0][0] in REVIEW_STATUSES and current[0][0] != to_status:
                self.review(flag_id, to_status, reviewed_by, note, now)
                covered.append(flag_id)
        self.con.execute(
            "INSERT INTO case_reviews VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [case_id, clinic_id, reviewed_by, now, from_status, to_status, covered, note],
        )
        self.audit(reviewed_by, "review_case", case_id, f"{from_status} -> {to_status} ({len(covered)} flag(s))", now)
        self.con.execute("UPDATE cases SET status = ?, updated_at = ? WHERE case_id = ?", [to_status, now, case_id])
        return str(from_status)

    def review(self, flag_id: str, to_status: str, reviewed_by: str, note: str | None, now: datetime) -> str:
        """Record a review action (append-only) and set the flag's status; returns the previous status."""
        found = self.con.execute("SELECT status FROM flags WHERE flag_id = ?", [flag_id]).fetchall()
        if not found:
            raise StorageError(f"no flag {flag_id!r}; list flags with `alliance flags`")
        from_status = found[0][0]
        if from_status == to_status:
            raise StorageError(f"flag {flag_id} is already {to_status}")
        reviewed_by = plain_text(reviewed_by)  # shown in terminals, dashboards and exports of the audit
        self.con.execute(
            "INSERT INTO reviews VALUES (?, ?, ?, ?, ?, ?)", [flag_id, reviewed_by, now, from_status, to_status, note]
        )
        self.audit(reviewed_by, "review", flag_id, f"{from_status} -> {to_status}", now)
        resolved = to_status == "resolved"
        self.con.execute(
            """UPDATE flags SET status = ?, updated_at = ?,
                   resolved_at = CASE WHEN ? THEN ? ELSE NULL END,
                   resolution = CASE WHEN ? THEN 'reviewed' ELSE NULL END
               WHERE flag_id = ?""",
            [to_status, now, resolved, now, resolved, flag_id],
        )
        return str(from_status)

    def sent_alerts(self, wanted: pl.DataFrame) -> set[tuple[str, str, str, str | None]]:
        """Which of these (clinic_id, recipient, alert_key) were already delivered, as (clinic_id, recipient,
        alert_key, channel): one query for a run's messages. A recipient is a name within its clinic ("leads", a
        supervisor's name). A channel of None is a delivery recorded before channels were: it counts for every channel.
        """
        if wanted.is_empty():
            return set()
        self.con.register("wanted_alerts", wanted.select("clinic_id", "recipient", "alert_key").to_arrow())
        try:
            rows = self.con.execute(
                """SELECT DISTINCT a.clinic_id, a.recipient, a.alert_key, a.channel FROM alerts a
                JOIN wanted_alerts w USING (clinic_id, recipient, alert_key) WHERE a.status = 'sent'"""
            ).fetchall()
        finally:
            self.con.unregister("wanted_alerts")
        return {(row[0], row[1], row[2], row[3]) for row in rows}

    def case_alert_dates(self, case_ids: list[str]) -> dict[tuple[str, str], str]:
        """(recipient, case_id) → the day (ISO) an alert about the case last reached that recipient."""
        scope = self._scope("scope_alert_cases", case_ids)
        rows = self.con.execute(
            f"""SELECT recipient, case_id, max(attempted_at)::DATE::VARCHAR FROM alerts
            WHERE status = 'sent' AND case_id IN (SELECT id FROM {scope}) GROUP BY ALL"""
        ).fetchall()
        return {(recipient, case_id): day for recipient, case_id, day in rows}

    def record_alerts(self, rows: pl.DataFrame) -> None:
        """Append delivery outcomes (sent or failed); a failed key is tried again on the next run."""
        if rows.height:
            self.con.register("incoming_alerts", rows.to_arrow())
            self.con.execute("INSERT INTO alerts BY NAME SELECT * FROM incoming_alerts")
            self.con.execute(
                """INSERT INTO audit
                SELECT max(attempted_at), 'alliance', 'alert_' || status, clinic_id || '/' || recipient,
                       kind || ': ' || count(*) || ' key(s)'
                FROM incoming_alerts GROUP BY status, clinic_id, recipient, kind"""
            )
