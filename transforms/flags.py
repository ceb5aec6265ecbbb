"""From session features to findings, and from findings to the flags table: stable ids, one open flag per rule."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import date
from typing import Any

import polars as pl

from alliance.clinics import RuleConfig
from alliance.instruments import instrument
from transforms.advisory import RULES as ADVISORY_RULES
from transforms.advisory import advisories
from transforms.calibration import Calibration
from transforms.expected import ExpectedCurve
from transforms.rules import (
    DECLINE_RULES,
    RULES,
    Episode,
    Series,
    Thresholds,
    escalation,
    risk_score,
    series_episodes,
)
from transforms.screen import SCREENED, possible_rules, thresholds_frame

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
MARK_SCHEMA: dict[str, pl.DataType] = {
    "dyad_id": pl.String(),
    "instrument": pl.String(),
    "session_number": pl.Int32(),
    "session_date": pl.Date(),
    "rules": pl.List(pl.String),
    "risk": pl.Float64(),
}
# an episode's sessions in its series k: evidence from start to last, active from start until stop
SPAN_SCHEMA: dict[str, pl.DataType] = {
    "k": pl.Int64(), "start": pl.Int64(), "last": pl.Int64(), "stop": pl.Int64(), "rule": pl.String(),
}  # fmt: skip
RC_RULES = ("reliable_decrease", "sudden_loss", "declining_trend", "not_on_track")
# a series' findings in the order its rules run (transforms.rules.SERIES_RULES, rules 2 and 3 in their places)
RULE_ORDER = {
    rule: rank
    for rank, rule in enumerate(
        (
            "low_score", "new_low", "drop", "low_item", "reliable_decrease", "sudden_loss", "rupture",
            "declining_trend", "below_expected", "not_on_track", "engagement_gap", "escalation",
        )
    )
}  # fmt: skip


def flag_id(dyad_id: str, instrument_code: str, rule: str, first_date: date, first_session: int) -> str:
    """Stable id of one episode: the same dyad, rule and first session always give the same id."""
    key = f"{dyad_id}|{instrument_code}|{rule}|{first_date.isoformat()}|{first_session}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Scored:
    """Findings of a set of dyads, and their sessions with the rules and risk at each session."""

    findings: pl.DataFrame
    sessions: pl.DataFrame


def _finding(dyad: dict[str, Any], s: Series, e: Episode, cal: Calibration | None) -> dict[str, Any]:
    return {
        "flag_id": flag_id(dyad["dyad_id"], s.instrument.code, e.rule, s.dates[e.start], s.numbers[e.start]),
        "clinic_id": dyad["clinic_id"],
        "therapist_id": dyad["therapist_id"],
        "dyad_id": dyad["dyad_id"],
        "client_id": dyad["client_id"],
        "instrument": s.instrument.code,
        "rule": e.rule,
        "severity": e.severity,
        "ongoing": e.ongoing,
        "outcome": e.outcome,
        "provisional": e.provisional,
        "magnitude": round(e.magnitude, 6),
        "reason": e.reason,
        "evidence": json.dumps(e.evidence, sort_keys=True, default=str),
        "first_session": s.numbers[e.start],
        "first_session_date": s.dates[e.start],
        "last_session": s.numbers[e.last],
        "last_session_date": s.dates[e.last],
        "rc_used": cal.rc if cal and e.rule in RC_RULES else None,
        "calibration_id": cal.calibration_id if cal else None,
    }


def _marks(sessions: pl.DataFrame, episodes: pl.DataFrame) -> pl.DataFrame:
    """Per session of each series (``sessions``: one row per session of series k, at position i): the rules with
    evidence there and the risk of the episodes active there (MARK_SCHEMA), from every episode's span (k, start,
    last, stop, rule) at once."""

    def rules_over(stop: pl.Expr, name: str) -> pl.DataFrame:
        return (
            episodes.select("k", "rule", pl.int_ranges("start", stop).alias("i"))
            .explode("i")
            .drop_nulls("i")  # an episode that ends where it starts is active nowhere
            .group_by("k", "i")
            .agg(pl.col("rule").unique().sort().alias(name))
        )

    active = rules_over(pl.col("stop"), "active").with_columns(pl.col("active").list.join(",").alias("combo"))
    # few distinct sets of rules are active together: each one's risk computed once
    risks = {combo: risk_score(combo.split(",") if combo else []) for combo in active["combo"].unique()}
    risk = pl.col("combo").replace_strict(risks, return_dtype=pl.Float64).alias("risk")
    return (
        sessions.join(rules_over(pl.col("last") + 1, "rules"), on=["k", "i"], how="left")
        .join(active.select("k", "i", risk), on=["k", "i"], how="left")
        .select(
            "dyad_id",
            "instrument",
            "session_number",
            "session_date",
            pl.col("rules").fill_null(pl.lit([], dtype=pl.List(pl.String))),
            pl.col("risk").fill_null(risk_score([])),
        )
        .cast(MARK_SCHEMA)  # type: ignore[arg-type]
    )


def _advisory_findings(
    episodes: pl.DataFrame, sessions: pl.DataFrame, calibrations: dict[str, Calibration]
) -> pl.DataFrame:
    """Findings (FINDING_SCHEMA, with each one's series k and start) of the episodes ``transforms.advisory``
    found, as ``_finding`` writes them."""

    def at(i: str, number: str, day: str) -> pl.DataFrame:
        return sessions.select(
            "k", pl.col("i").alias(i), pl.col("session_number").alias(number), pl.col("session_date").alias(day)
        )

    ids = {code: cal.calibration_id for code, cal in calibrations.items()}
    found = (
        episodes.join(sessions.filter(pl.col("i") == 0).drop("i"), on="k")
        .join(at("start", "first_session", "first_session_date"), on=["k", "start"])
        .join(at("last", "last_session", "last_session_date"), on=["k", "last"])
    )
    day = pl.col("first_session_date").cast(pl.String)
    keys = found.select(pl.format("{}|{}|{}|{}|{}", "dyad_id", "instrument", "rule", day, "first_session")).to_series()
    return found.with_columns(
        flag_id=pl.Series([hashlib.sha256(key.encode()).hexdigest()[:16] for key in keys], dtype=pl.String),
        severity=pl.col("rule").replace_strict({rule: RULES[rule].severity for rule in ADVISORY_RULES}),
        outcome=pl.when("ongoing").then(pl.lit("ongoing")).otherwise(pl.lit("repaired")),
        provisional=pl.lit(False),
        magnitude=pl.Series([round(m, 6) for m in found["magnitude"]], dtype=pl.Float64),
        rc_used=pl.lit(None, dtype=pl.Float64),
        calibration_id=pl.col("instrument").replace_strict(ids, default=None, return_dtype=pl.String),
    ).select(*FINDING_SCHEMA, "k", "start")


def score(
    features: pl.DataFrame,
    configs: dict[str, RuleConfig],
    calibrations: dict[str, Calibration],
    curves: dict[str, ExpectedCurve] | None = None,
) -> Scored:
    """Run every rule over every dyad's series in ``features`` (from ``session_features``), with each
    instrument's reliable change and, when estimated, its expected trajectory. Rules 2 and 3 run over every
    series at once (``transforms.advisory``); a rule the screen rules out on a series (``transforms.screen``) is
    not run there."""
    curves = curves or {}
    thresholds: dict[tuple[str, str], Thresholds] = {}
    for clinic_id, code in features.select("clinic_id", "instrument").unique().iter_rows():
        inst, cal = instrument(code), calibrations.get(code)
        rc, sd = (cal.rc, cal.within_sd) if cal else (None, None)
        config = configs.get(clinic_id, RuleConfig())
        thresholds[(clinic_id, code)] = Thresholds.of(config, inst, rc, sd, curves.get(code))
    series_cols = ["session_date", "session_number", "score", "items", "slope"]
    grouped = possible_rules(features, thresholds_frame(thresholds)).group_by(
        ["dyad_id", "instrument"], maintain_order=True
    ).agg(
        pl.first("clinic_id"), pl.first("client_id"), pl.first("therapist_id"), *series_cols,
        *(pl.col(f"can_{rule}").any() for rule in SCREENED),
    )  # fmt: skip
    sessions = (
        grouped.with_row_index("k")
        .select(
            pl.col("k").cast(pl.Int64), "dyad_id", "instrument", "clinic_id", "client_id", "therapist_id",
            "session_number", "session_date", "score", "items",
        )
        .explode("session_number", "session_date", "score", "items")
        .with_columns(
            pl.int_range(pl.len(), dtype=pl.Int64).over("k").alias("i"), pl.len().over("k").cast(pl.Int64).alias("n")
        )
    )  # fmt: skip
    advisory = advisories(sessions, thresholds)
    findings: list[dict[str, Any]] = []
    spans: list[tuple[int, int, int, int, str]] = []
    by_dyad: dict[str, list[tuple[int, Series, list[Episode], Calibration | None]]] = {}
    dyads: dict[str, dict[str, Any]] = {}
    for k, row in enumerate(grouped.iter_rows(named=True)):
        inst = instrument(row["instrument"])
        s = Series(inst, row["session_date"], row["session_number"], row["score"], row["items"], row["slope"])
        quiet = frozenset(rule for rule in SCREENED if not row[f"can_{rule}"])
        episodes = series_episodes(s, thresholds[(row["clinic_id"], inst.code)], quiet)
        dyads[row["dyad_id"]] = row
        by_dyad.setdefault(row["dyad_id"], []).append((k, s, episodes, calibrations.get(inst.code)))
    for dyad_id, series_list in by_dyad.items():
        dyad = dyads[dyad_id]
        outcome_eps = [e for _, s, eps, _ in series_list if s.instrument.construct == "outcome" for e in eps]
        for k, s, episodes, cal in series_list:
            if s.instrument.construct == "alliance":
                escalated = escalation(s, episodes, outcome_eps)
                if escalated is not None:
                    episodes = [*episodes, escalated]
            findings.extend({**_finding(dyad, s, e, cal), "k": k, "start": e.start} for e in episodes)
            n = len(s.scores)
            spans += [(k, e.start, e.last, n if e.end is None else e.end, e.rule) for e in episodes]
    columns = {name: [f[name] for f in findings] for name in (*FINDING_SCHEMA, "k", "start")}
    found = pl.concat(
        [
            pl.DataFrame(columns, schema={**FINDING_SCHEMA, "k": pl.Int64(), "start": pl.Int64()}),
            _advisory_findings(advisory, sessions, calibrations),
        ]
    )
    # the order the per-dyad rules wrote them in: by dyad, series, rule, then course
    order = pl.col("rule").replace_strict(RULE_ORDER, return_dtype=pl.Int64)
    found = found.sort(pl.col("k").min().over("dyad_id"), "k", order, "start").drop("k", "start")
    marks = _marks(
        sessions, pl.concat([pl.DataFrame(spans, schema=SPAN_SCHEMA, orient="row"), advisory.select(list(SPAN_SCHEMA))])
    )
    joined = features.join(marks, on=["dyad_id", "instrument", "session_date", "session_number"], how="left")
    return Scored(found, joined)


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
    """
    declines = declines or {}
    rows = []
    for row in last_sessions.iter_rows(named=True):
        decline = declines.get(row["dyad_id"])
        if decline is None:
            continue
        config = configs.get(row["clinic_id"], RuleConfig())
        silent = (row["clinic_latest"] - row["last_session_date"]).days
        threshold = silence_threshold(config, row.get("cadence_days"))
        if silent < threshold:
            continue
        ongoing = silent < config.inactive_days
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
                "reason": (
                    f"no session for {silent} days after a decline ({decline}); the clinic's latest session is "
                    f"{row['clinic_latest'].isoformat()}" + ("" if ongoing else "; now counted as closed")
                ),
                "evidence": json.dumps(
                    {
                        "silent_days": silent,
                        "threshold_days": threshold,
                        "gap_days": config.gap_days,
                        "inactive_days": config.inactive_days,
                    }
                ),
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
