"""Each dyad's last session as first written, with window functions, kept unchanged as the oracle of
``ScoringTables.last_sessions`` (test_last_sessions.py)."""

from __future__ import annotations

import polars as pl

from alliance.storage import Writer


def last_sessions(writer: Writer, clinic_ids: list[str] | None) -> pl.DataFrame:
    """Per dyad: its latest rated session (alliance instruments first), its clinic's latest session date and
    its usual interval (median days between sessions; NULL with one session)."""
    where = "TRUE" if clinic_ids is None else f"clinic_id IN (SELECT id FROM {writer._scope('ref_last', clinic_ids)})"
    return writer.frame(
        f"""
        WITH r AS (SELECT * FROM ratings WHERE {where}),
        gaps AS (
            SELECT dyad_id,
                   session_date - lag(session_date) OVER (PARTITION BY dyad_id ORDER BY session_date) AS gap
            FROM (SELECT DISTINCT dyad_id, session_date FROM r)
        ),
        cadence AS (SELECT dyad_id, median(gap)::DOUBLE AS cadence_days FROM gaps WHERE gap IS NOT NULL GROUP BY 1)
        SELECT clinic_id, therapist_id, dyad_id, client_id, instrument,
               session_number AS last_session, session_date AS last_session_date,
               max(session_date) OVER (PARTITION BY clinic_id) AS clinic_latest, c.cadence_days
        FROM r LEFT JOIN cadence c USING (dyad_id)
        QUALIFY row_number() OVER (PARTITION BY dyad_id ORDER BY session_date DESC, session_number DESC,
                                   instrument IN ('ORS') ASC, instrument) = 1
        """
    )
