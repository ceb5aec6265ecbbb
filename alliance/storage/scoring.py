"""What scoring reads and writes: ratings, calibrations, expected trajectories, flags, dyads and cases."""

from __future__ import annotations

from typing import Any

import polars as pl

from alliance.storage.schema import COURSES
from alliance.storage.session import Session

STANDING = ("risk_score", "ongoing_rules", "in_queue", "course_open")  # what settling decides of each dyad


class ScoringTables(Session):
    """Scoring's reads of ratings and its writes of scored sessions, flags, dyads, cases and runs."""

    def _within(self, column: str, name: str, ids: list[str] | None) -> str:
        """A condition keeping the rows whose ``column`` is one of ``ids`` (registered as ``name``; all when None)."""
        return "TRUE" if ids is None else f"{column} IN (SELECT id FROM {self._scope(name, ids)})"

    def ratings_of(self, dyad_ids: list[str] | None) -> pl.DataFrame:
        """Every rating of the given dyads (all dyads when None), for scoring."""
        columns = "dyad_id, clinic_id, client_id, therapist_id, instrument, session_date, session_number, items, total"
        if dyad_ids is None:
            return self.frame(f"SELECT {columns} FROM ratings")
        scope = self._scope("scope_dyads", dyad_ids)
        return self.frame(f"SELECT {columns} FROM ratings SEMI JOIN {scope} s ON ratings.dyad_id = s.id")

    def course_ratings(self) -> pl.DataFrame:
        """Every rating's dyad, instrument, session and total, without items or ids: what a re-estimation
        reads (at the full-scale backfill's 10M ratings it took 12.8 s where every column took 23.4 s)."""
        return self.frame("SELECT dyad_id, instrument, session_date, session_number, total FROM ratings")

    # the current calibration and expected trajectories, read once per writer session (a batch's files share
    # it); dropped when this session saves new ones or rolls back (Session.forget)
    _calibrations: pl.DataFrame | None = None
    _expected: pl.DataFrame | None = None

    def current_calibrations(self) -> pl.DataFrame:
        """The latest calibration of each instrument."""
        if self._calibrations is None:
            self._calibrations = self.frame(
                """SELECT * FROM calibrations
                QUALIFY row_number() OVER (PARTITION BY instrument ORDER BY estimated_at DESC) = 1"""
            )
        return self._calibrations

    def current_expected(self) -> pl.DataFrame:
        """The latest expected trajectory of each instrument (one row per intake band and session)."""
        if self._expected is None:
            self._expected = self.frame(
                """SELECT * EXCLUDE (estimated_at) FROM expected_trajectories
                QUALIFY estimated_at = max(estimated_at) OVER (PARTITION BY instrument)"""
            )
        return self._expected

    def save_expected(self, curves: pl.DataFrame) -> None:
        self._expected = None
        self.con.register("incoming_expected", curves.to_arrow())
        self.con.execute("INSERT INTO expected_trajectories BY NAME SELECT * FROM incoming_expected")

    def save_calibrations(self, calibrations: pl.DataFrame) -> None:
        self._calibrations = None
        self.con.register("incoming_calibrations", calibrations.to_arrow())
        self.con.execute("INSERT INTO calibrations BY NAME SELECT * FROM incoming_calibrations")

    def forget(self) -> None:
        self._calibrations, self._expected = None, None
        super().forget()

    def flags_of(
        self,
        dyad_ids: list[str] | None = None,
        clinic_ids: list[str] | None = None,
        rule: str | None = None,
        except_rule: str | None = None,
        ongoing: bool = False,
    ) -> pl.DataFrame:
        """Flags in a scoring scope: of some dyads or clinics, optionally of one rule or all but one, or only
        the ongoing ones."""
        where, params = ["ongoing" if ongoing else "TRUE"], []
        if dyad_ids is not None:
            where.append(self._within("dyad_id", "scope_flag_dyads", dyad_ids))
        if clinic_ids is not None:
            where.append(self._within("clinic_id", "scope_flag_clinics", clinic_ids))
        if rule is not None:
            where.append("rule = ?")
            params.append(rule)
        if except_rule is not None:
            where.append("rule <> ?")
            params.append(except_rule)
        return self.frame(
            f"SELECT * EXCLUDE (evidence), evidence::VARCHAR AS evidence FROM flags WHERE {' AND '.join(where)}", params
        )

    def replace_flags(self, flags: pl.DataFrame) -> None:
        """Write the new state of these flags (by flag_id)."""
        if flags.is_empty():
            return
        self.con.register("incoming_flags", flags.to_arrow())
        self.con.execute("DELETE FROM flags WHERE flag_id IN (SELECT flag_id FROM incoming_flags)")
        self.con.execute("INSERT INTO flags BY NAME SELECT * FROM incoming_flags")

    def replace_dyad_sessions(self, dyad_ids: list[str] | None, sessions: pl.DataFrame) -> None:
        """Replace the scored sessions of these dyads (of every dyad when None)."""
        if dyad_ids is None:
            self.con.execute("DELETE FROM dyad_sessions")
        else:
            scope = self._scope("scope_session_dyads", dyad_ids)
            self.con.execute(f"DELETE FROM dyad_sessions WHERE dyad_id IN (SELECT id FROM {scope})")
        if sessions.height:
            self.con.register("incoming_sessions", sessions.to_arrow())
            self.con.execute("INSERT INTO dyad_sessions BY NAME SELECT * FROM incoming_sessions")

    def last_sessions(self, clinic_ids: list[str] | None) -> pl.DataFrame:
        """Per dyad: its latest rated session (alliance instruments first), its clinic's latest session date and
        its usual interval (median days between sessions; NULL with one session), as the dyads summary holds
        them (``refresh_courses``); tests/reference/sessions.py keeps the window form over ratings as the oracle."""
        where = self._within("clinic_id", "scope_last", clinic_ids)
        return self.frame(
            f"""
            SELECT clinic_id, therapist_id, dyad_id, client_id, last_instrument AS instrument, last_session,
                   last_session_date, max(last_session_date) OVER (PARTITION BY clinic_id) AS clinic_latest,
                   cadence_days
            FROM dyads WHERE {where}
            ORDER BY clinic_id, dyad_id  -- the queue breaks ties in this order: the same every run
            """
        )

    def refresh_courses(self, clinic_ids: list[str] | None, dyad_ids: list[str] | None) -> None:
        """Rebuild the dyads summary's rows of these dyads (every dyad when None) in these clinics (all when None)
        from their ratings: their course (``COURSES``), with no standing until ``set_standing`` decides it.

        Only the dyads whose ratings changed: at history 0.1's 2.9M ratings, aggregating every rating of the
        swept clinics took 0.6 s a night, growing with the history."""
        where = ["TRUE"]
        if clinic_ids is not None:
            where.append(self._within("clinic_id", "scope_course_clinics", clinic_ids))
        if dyad_ids is not None:
            where.append(self._within("dyad_id", "scope_course_dyads", dyad_ids))
        rows = " AND ".join(where)
        self.con.execute(f"DELETE FROM dyads WHERE {rows}")
        self.con.execute(
            f"""INSERT INTO dyads BY NAME
            SELECT *, 0.0 AS risk_score, []::VARCHAR[] AS ongoing_rules, false AS in_queue, true AS course_open
            FROM ({COURSES.format(where=rows)})"""
        )

    def set_standing(
        self, clinic_ids: list[str] | None, standing: pl.DataFrame, queue_min_risk: float, queue_setting: str
    ) -> None:
        """Set the standing (risk, ongoing rules, queue membership, open course) of the dyads of these clinics
        (all when None) that ``standing`` holds, and their flags' risk; only rows that change are written.

        ``standing`` holds one row per dyad (dyad_id, risk_score, rules, in_queue, course_open), as
        ``transforms.queue.queue_frame`` decides it; a dyad missing from it keeps its standing (one settled for
        good). The threshold and the setting's wording are kept for readers.
        """
        where = self._within("d.clinic_id", "scope_dyads_cl", clinic_ids)
        self.con.register("incoming_standing", standing.to_arrow())
        changed = " OR ".join(f"dyads.{c} IS DISTINCT FROM n.{c}" for c in STANDING)
        self.con.execute(
            f"""
            UPDATE dyads SET {", ".join(f"{c} = n.{c}" for c in STANDING)}
            FROM (
                SELECT d.dyad_id, k.risk_score, k.rules AS ongoing_rules, k.in_queue, k.course_open
                FROM dyads d JOIN incoming_standing k USING (dyad_id) WHERE {where}
            ) n
            WHERE dyads.dyad_id = n.dyad_id AND ({changed})
            """
        )
        self.con.execute(
            f"UPDATE flags SET risk_score = d.risk_score FROM dyads d WHERE flags.dyad_id = d.dyad_id AND {where} "
            "AND flags.risk_score IS DISTINCT FROM d.risk_score"
        )
        self.con.execute("DELETE FROM meta WHERE key IN ('queue_min_risk', 'queue_setting')")
        self.con.execute("INSERT INTO meta VALUES ('queue_min_risk', ?)", [str(queue_min_risk)])
        self.con.execute("INSERT INTO meta VALUES ('queue_setting', ?)", [queue_setting])

    def clinics_held(self) -> list[str]:
        """Every clinic with ratings, flags, dyads or cases, in order: what settling the whole network covers."""
        rows = self.con.execute(
            "SELECT clinic_id FROM ratings UNION SELECT clinic_id FROM flags UNION SELECT clinic_id FROM dyads "
            "UNION SELECT clinic_id FROM cases ORDER BY 1"
        ).fetchall()
        return [str(clinic_id) for (clinic_id,) in rows]

    def dyads_per_clinic(self) -> dict[str, int]:
        """Each clinic's rated dyads: what settling a clinic holds in memory grows with."""
        rows = self.con.execute("SELECT clinic_id, count(DISTINCT dyad_id) FROM ratings GROUP BY 1").fetchall()
        return {str(clinic_id): int(n) for clinic_id, n in rows}

    def dyads_with_open_ended_silences(self, clinic_ids: list[str] | None) -> list[str]:
        """The dyads of these clinics (all when None) with a silence that ended while its flag is open or
        acknowledged (a supervisor reopened it): settling them resolves it again."""
        where = self._within("clinic_id", "scope_ended", clinic_ids)
        return self.frame(
            f"""SELECT DISTINCT dyad_id FROM flags WHERE rule = 'stopped_appearing' AND NOT ongoing
            AND status IN ('open', 'acknowledged') AND {where}"""
        )["dyad_id"].to_list()

    def dyads_rated_in(self, clinic_ids: list[str]) -> list[str]:
        """Every rated dyad of these clinics."""
        if not clinic_ids:
            return []
        where = self._within("clinic_id", "scope_rated_clinics", clinic_ids)
        return self.frame(f"SELECT DISTINCT dyad_id FROM ratings WHERE {where}")["dyad_id"].to_list()

    def dyads_of(self, clinic_ids: list[str] | None) -> pl.DataFrame:
        """The dyads summary of these clinics (all when None)."""
        return self.frame(f"SELECT * FROM dyads WHERE {self._within('clinic_id', 'scope_dy', clinic_ids)}")

    def cases_of(self, clinic_ids: list[str] | None) -> pl.DataFrame:
        """Every case (any status) of these clinics (all when None)."""
        return self.frame(f"SELECT * FROM cases WHERE {self._within('clinic_id', 'scope_cs', clinic_ids)}")

    def replace_cases(self, cases: pl.DataFrame) -> None:
        """Write the new state of these cases (by case_id)."""
        if cases.is_empty():
            return
        self.con.register("incoming_cases", cases.to_arrow())
        self.con.execute("DELETE FROM cases WHERE case_id IN (SELECT case_id FROM incoming_cases)")
        self.con.execute("INSERT INTO cases BY NAME SELECT * FROM incoming_cases")

    def mark_pending(self, loads: list[tuple[str, str, list[str]]]) -> None:
        """Dyads the files of a batch loaded, as (export_id, clinic_id, dyad_ids) a file, left for the batch's end
        to score in one pass (inside ``transaction()``): one statement for the batch."""
        pending = pl.DataFrame(
            [(dyad_id, clinic_id, export_id) for export_id, clinic_id, dyad_ids in loads for dyad_id in dyad_ids],
            schema={"dyad_id": pl.String, "clinic_id": pl.String, "export_id": pl.String},
            orient="row",
        )
        if pending.height:
            self.con.register("incoming_pending", pending.to_arrow())
            self.con.execute("INSERT INTO pending_dyads BY NAME SELECT * FROM incoming_pending")
            self.con.unregister("incoming_pending")

    def pending_dyads(self) -> pl.DataFrame:
        """(dyad_id, clinic_id) of every dyad loaded and not yet scored: a batch's, or one cut short."""
        return self.frame("SELECT DISTINCT dyad_id, clinic_id FROM pending_dyads ORDER BY dyad_id")

    def clear_pending(self) -> None:
        """Every pending dyad scored (inside the scoring's ``transaction()``)."""
        self.con.execute("DELETE FROM pending_dyads")

    def record_scoring_run(self, run: dict[str, Any]) -> None:
        columns = ", ".join(run)
        self.con.execute(
            f"INSERT INTO scoring_runs ({columns}) VALUES ({', '.join('?' for _ in run)})", list(run.values())
        )
