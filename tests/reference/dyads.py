"""The dyads summary's course as first written: one aggregation over every rating of a clinic (the summary was
rebuilt whole for each clinic settled), with the last session and usual interval by the window functions of
tests/reference/sessions.py. Kept unchanged as the oracle of ``ScoringTables.refresh_courses``
(test_last_sessions.py)."""

from __future__ import annotations

import polars as pl

from alliance.storage import Writer
from tests.reference.sessions import last_sessions

COURSE_COLUMNS = (
    "dyad_id", "clinic_id", "therapist_id", "client_id", "instruments", "sessions", "first_session_date",
    "last_session_date", "last_session", "last_instrument", "cadence_days",
)  # fmt: skip


def courses(writer: Writer) -> pl.DataFrame:
    """Every rated dyad's course, in dyad order."""
    summary = writer.frame(
        """SELECT r.dyad_id, any_value(r.clinic_id) AS clinic_id, any_value(r.therapist_id) AS therapist_id,
               any_value(r.client_id) AS client_id, list_sort(list_distinct(list(r.instrument))) AS instruments,
               count(DISTINCT (r.session_date, r.session_number))::INTEGER AS sessions,
               min(r.session_date) AS first_session_date, max(r.session_date) AS last_session_date
        FROM ratings r GROUP BY r.dyad_id"""
    )
    last = last_sessions(writer, None).select(
        "dyad_id", "last_session", pl.col("instrument").alias("last_instrument"), "cadence_days"
    )
    return summary.join(last, on="dyad_id").select(COURSE_COLUMNS).sort("dyad_id")
