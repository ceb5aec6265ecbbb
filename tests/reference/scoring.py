"""Scoring as first written: each series' per-session marks and findings built in Python loops, kept unchanged as
the oracle of transforms.findings.score (test_rules_oracle.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import polars as pl

from alliance.clinics import RuleConfig
from alliance.instruments import instrument
from tests.reference.rules import Episode, Series, Thresholds, escalation, risk_score, series_episodes
from transforms.calibration import Calibration
from transforms.expected import ExpectedCurve
from transforms.findings import MARK_SCHEMA, Scored
from transforms.flags import FINDING_SCHEMA, RC_RULES, flag_id


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


def _session_marks(n: int, episodes: list[Episode]) -> tuple[list[list[str]], list[float]]:
    """Per session: rules with evidence there, and the risk of the episodes active at that session."""
    marks: list[list[str]] = [[] for _ in range(n)]
    active: list[list[str]] = [[] for _ in range(n)]
    for e in episodes:
        for i in range(e.start, e.last + 1):
            marks[i].append(e.rule)
        for i in range(e.start, (e.end if e.end is not None else n)):
            active[i].append(e.rule)
    return [sorted(set(m)) for m in marks], [risk_score(sorted(set(a))) for a in active]


def score(
    features: pl.DataFrame,
    configs: dict[str, RuleConfig],
    calibrations: dict[str, Calibration],
    curves: dict[str, ExpectedCurve] | None = None,
    episodes_of: Callable[[Series, Thresholds], list[Episode]] = series_episodes,
) -> Scored:
    """Run every rule over every dyad's series in ``features`` (from ``session_features``), with each
    instrument's reliable change and, when estimated, its expected trajectory. ``episodes_of`` is the rule set
    (the tests pass the reference rules as the oracle)."""
    curves = curves or {}
    series_cols = ["session_date", "session_number", "score", "items", "slope"]
    grouped = features.group_by(["dyad_id", "instrument"], maintain_order=True).agg(
        pl.first("clinic_id"), pl.first("client_id"), pl.first("therapist_id"), *series_cols
    )
    findings: list[dict[str, Any]] = []
    marks: dict[str, list[Any]] = {name: [] for name in MARK_SCHEMA}
    by_dyad: dict[str, list[tuple[Series, list[Episode], Calibration | None]]] = {}
    dyads: dict[str, dict[str, Any]] = {}
    for row in grouped.iter_rows(named=True):
        inst = instrument(row["instrument"])
        cal = calibrations.get(inst.code)
        rc, sd = (cal.rc, cal.within_sd) if cal else (None, None)
        config = configs.get(row["clinic_id"], RuleConfig())
        s = Series(inst, row["session_date"], row["session_number"], row["score"], row["items"], row["slope"])
        episodes = episodes_of(s, Thresholds.of(config, inst, rc, sd, curves.get(inst.code)))
        dyads[row["dyad_id"]] = row
        by_dyad.setdefault(row["dyad_id"], []).append((s, episodes, cal))
    for dyad_id, series_list in by_dyad.items():
        dyad = dyads[dyad_id]
        outcome_eps = [e for s, eps, _ in series_list if s.instrument.construct == "outcome" for e in eps]
        for s, episodes, cal in series_list:
            if s.instrument.construct == "alliance":
                escalated = escalation(s, episodes, outcome_eps)
                if escalated is not None:
                    episodes = [*episodes, escalated]
            findings.extend(_finding(dyad, s, e, cal) for e in episodes)
            rules_at, risk_at = _session_marks(len(s.scores), episodes)
            n = len(s.scores)
            marks["dyad_id"].extend([dyad_id] * n)
            marks["instrument"].extend([s.instrument.code] * n)
            marks["session_number"].extend(s.numbers)
            marks["session_date"].extend(s.dates)
            marks["rules"].extend(rules_at)
            marks["risk"].extend(risk_at)
    session_marks = pl.DataFrame(marks, schema=MARK_SCHEMA)
    sessions = features.join(session_marks, on=["dyad_id", "instrument", "session_date", "session_number"], how="left")
    columns = {name: [f[name] for f in findings] for name in FINDING_SCHEMA}
    return Scored(pl.DataFrame(columns, schema=FINDING_SCHEMA), sessions)
