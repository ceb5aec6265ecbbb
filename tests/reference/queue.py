"""The review queue decided dyad by dyad, as first written, kept as the oracle of transforms.queue.queue_frame
(test_queue_oracle.py)."""

from __future__ import annotations

from typing import Any

import polars as pl

from alliance.clinics import RuleConfig
from transforms.queue import QUEUE_SCHEMA, QueuePolicy, select_by_clinic, standing


def queue_frame(
    flags: pl.DataFrame, last_sessions: pl.DataFrame, configs: dict[str, RuleConfig], policy: QueuePolicy
) -> pl.DataFrame:
    by_dyad: dict[str, list[dict[str, Any]]] = {}
    for row in flags.filter(pl.col("ongoing")).iter_rows(named=True):
        by_dyad.setdefault(row["dyad_id"], []).append(row)
    ids, clinics, standings = [], [], []
    for row in last_sessions.iter_rows(named=True):
        config = configs.get(row["clinic_id"], RuleConfig())
        silent = (row["clinic_latest"] - row["last_session_date"]).days
        ids.append(row["dyad_id"])
        clinics.append(row["clinic_id"])
        standings.append(standing(by_dyad.get(row["dyad_id"], []), silent, row.get("cadence_days"), config))
    chosen = select_by_clinic(policy, clinics, standings)
    return pl.DataFrame(
        {
            "dyad_id": ids,
            "risk_score": [s.risk for s in standings],
            "rules": [list(s.rules) for s in standings],
            "in_queue": chosen,
            "course_open": [s.course_open for s in standings],
        },
        schema=QUEUE_SCHEMA,
    )
