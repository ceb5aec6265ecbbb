"""Findings and flags: their schema and stable ids, silence after a decline (rule 9b), and each dyad's risk."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import date, timedelta

import polars as pl

from alliance.clinics import RuleConfig
from transforms.rules import DECLINE_RULES, RULES, risk_score

EPS = 1e-6
FINDING_SCHEMA: dict[str, pl.DataType] = {
    "flag_id": pl.String(),
    "clinic_id": pl.String(),
    "therapist_id": pl.String(),
    "dyad_id": pl.String(),
    "client_id": pl.String(),
    "instrument": pl.String(),
    "rule": pl.String(),
    "severity": pl.String(),
    "ongoing": pl.Boolean(),
    "outcome": pl.String(),
    "provisional": pl.Boolean(),
    "magnitude": pl.Float64(),
    "reason": pl.String(),
    "evidence": pl.String(),
    "first_session": pl.Int32(),
    "first_session_date": pl.Date(),
    "last_session": pl.Int32(),
    "last_session_date": pl.Date(),
    "rc_used": pl.Float64(),
    "calibration_id": pl.String(),
}
FLAG_SCHEMA: dict[str, pl.DataType] = {
    **FINDING_SCHEMA,
    "status": pl.String(),
    "risk_score": pl.Float64(),
    "first_flagged_at": pl.Datetime("us", "UTC"),
    "updated_at": pl.Datetime("us", "UTC"),
    "worsened_at": pl.Datetime("us", "UTC"),
    "resolved_at": pl.Datetime("us", "UTC"),
    "resolution": pl.String(),
}
RC_RULES = ("reliable_decrease", "sudden_loss", "declining_trend", "not_on_track")


def flag_id(dyad_id: str, instrument_code: str, rule: str, first_date: date, first_session: int) -> str:
    """Stable id of one episode: the same dyad, rule and first session always give the same id."""
    key = f"{dyad_id}|{instrument_code}|{rule}|{first_date.isoformat()}|{first_session}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def silence_threshold(config: RuleConfig, cadence_days: float | None) -> int:
    """Days without a session that count as stopped appearing: 1.5 usual intervals, at most ``gap_days``."""
    usual = cadence_days if cadence_days and cadence_days > 0 else 7.0
    return min(config.gap_days, max(7, math.ceil(config.silence_intervals * usual - 1e-9)))


def stopped_appearing(
    last_sessions: pl.DataFrame, configs: dict[str, RuleConfig], declines: dict[str, str] | None = None
) -> pl.DataFrame:
    """Rule 9b: a dyad silent for 1.5 of its usual intervals after a decline; closed after inactive_days.

    Input: one row per dyad (clinic_id, therapist_id, dyad_id, client_id, instrument, last_session,
    last_session_date, clinic_latest, optional cadence_days); ``declines`` maps a dyad to the reason of the
    decline its last session showed. A course that ends without a decline is no finding: it leaves the
    queue (see transforms.queue). Output: findings (ongoing, or outcome 'inactive').

    A closed finding keeps the figures of the day it closed: otherwise every dyad that ever stopped appearing
    would be rewritten each night, as its clinic's latest session moves on.
    """
    declines = declines or {}
    rows = []
    # only the dyads whose last session showed a decline: a few of a clinic's, whose dyads grow with its history
    after_decline = last_sessions.filter(pl.col("dyad_id").is_in(pl.Series(list(declines), dtype=pl.String).implode()))
    for row in after_decline.iter_rows(named=True):
        decline = declines[row["dyad_id"]]
        config = configs.get(row["clinic_id"], RuleConfig())
        silent = (row["clinic_latest"] - row["last_session_date"]).days
        threshold = silence_threshold(config, row.get("cadence_days"))
        if silent < threshold:
            continue
        ongoing = silent < config.inactive_days
        closing: dict[str, str] = {}
        if ongoing:
            reason = (
                f"no session for {silent} days after a decline ({decline}); the clinic's latest session is "
                f"{row['clinic_latest'].isoformat()}"
            )
        else:
            silent = max(threshold, config.inactive_days)  # the day it closed (its first, under a short inactive_days)
            closing["closed_on"] = (row["last_session_date"] + timedelta(days=silent)).isoformat()
            reason = (
                f"no session for {silent} days after a decline ({decline}), up to {closing['closed_on']}; "
                "now counted as closed"
            )
        evidence = {
            "silent_days": silent,
            "threshold_days": threshold,
            "gap_days": config.gap_days,
            "inactive_days": config.inactive_days,
            **closing,
        }
        rows.append(
            {
                "flag_id": flag_id(
                    row["dyad_id"],
                    row["instrument"],
                    "stopped_appearing",
                    row["last_session_date"],
                    row["last_session"],
                ),
                "clinic_id": row["clinic_id"],
                "therapist_id": row["therapist_id"],
                "dyad_id": row["dyad_id"],
                "client_id": row["client_id"],
                "instrument": row["instrument"],
                "rule": "stopped_appearing",
                "severity": RULES["stopped_appearing"].severity,
                "ongoing": ongoing,
                "outcome": "ongoing" if ongoing else "inactive",
                "provisional": False,
                "magnitude": float(silent),
                "reason": reason,
                "evidence": json.dumps(evidence),
                "first_session": row["last_session"],
                "first_session_date": row["last_session_date"],
                "last_session": row["last_session"],
                "last_session_date": row["last_session_date"],
                "rc_used": None,
                "calibration_id": None,
            }
        )
    return pl.DataFrame(rows, schema=FINDING_SCHEMA)


def declines_at_last_session(findings: pl.DataFrame) -> dict[str, str]:
    """Per dyad, the reason of an ongoing decline below its own level (confirmed or not): what silence after it means.

    A fall from the previous session alone (reliable_decrease) is left out: after one high session it is noise.
    """
    below_level = sorted(DECLINE_RULES - {"reliable_decrease"})
    ongoing = findings.filter(pl.col("ongoing") & pl.col("rule").is_in(below_level))
    # a rupture counts once it is a reliable change below the earlier mean (k pooled SDs can be less)
    shallow = (pl.col("rule") == "rupture") & ~pl.col("evidence").str.contains('"reliable": true', literal=True)
    ongoing = ongoing.filter(~shallow)
    # the deepest confirmed decline; at equal depth the weightier rule, then the flag id: never the row order,
    # which the warehouse does not keep, so the same flags always give silence the same reason
    weight = pl.col("rule").replace_strict({rule: spec.weight for rule, spec in RULES.items()}, default=0.0)
    ranked = ongoing.sort(
        ["dyad_id", "provisional", "magnitude", weight, "flag_id"], descending=[False, False, True, True, False]
    )
    return {row["dyad_id"]: row["reason"] for row in ranked.unique("dyad_id", keep="first").iter_rows(named=True)}


def dyad_risk(flags: pl.DataFrame) -> pl.DataFrame:
    """Risk per dyad from its ongoing confirmed findings, any review status: (dyad_id, risk_score, rules)."""
    confirmed = flags.filter(pl.col("ongoing") & ~pl.col("provisional"))
    ongoing = confirmed.group_by("dyad_id").agg(pl.col("rule").unique().sort().alias("rules"))
    return ongoing.with_columns(pl.col("rules").map_elements(risk_score, return_dtype=pl.Float64).alias("risk_score"))
