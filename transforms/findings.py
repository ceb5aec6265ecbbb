"""From session features to findings: every rule over every dyad's series, and the rules and risk at each session.

A scoring runs in three steps, so that the Python part can be shared out over processes (``flows/scorers.py``):
``courses`` groups the sessions into series, screens them and runs rules 1, 8, 9a and the expected band over every
series at once (``transforms.runs``); ``per_dyad`` runs the per-series rules on the series the screen lets them run
on; ``scored`` adds rules 2 and 3, run over every series at once (``transforms.advisory``), and puts the findings in
the order the rules wrote them and the rules and risk on each session.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import polars as pl

from alliance.clinics import RuleConfig
from alliance.instruments import instrument
from transforms.advisory import advisories
from transforms.calibration import Calibration
from transforms.expected import ExpectedCurve
from transforms.flags import FINDING_SCHEMA, RC_RULES, flag_id
from transforms.rules import RULES, Episode, Series, Thresholds, escalation, risk_score, series_episodes
from transforms.runs import session_runs
from transforms.screen import SCREENED, possible_rules, thresholds_frame

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
# findings with the series k and first session they belong to, which put them in order
FOUND_SCHEMA: dict[str, pl.DataType] = {**FINDING_SCHEMA, "k": pl.Int64(), "start": pl.Int64()}
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
SERIES_COLUMNS = ["session_date", "session_number", "score", "items", "slope"]


@dataclass(frozen=True)
class Scored:
    """Findings of a set of dyads, and their sessions with the rules and risk at each session."""

    findings: pl.DataFrame
    sessions: pl.DataFrame


@dataclass(frozen=True)
class Courses:
    """A scoring's series: ``grouped`` one row per (dyad, instrument) series k, with its sessions as lists, the
    screen's verdicts and whether its dyad is now off track (an ongoing not-on-track episode); ``screened`` the
    rows of ``grouped`` the per-series rules could find something on; ``sessions`` one row per session of series
    k, at position i of n; ``runs`` the episodes of ``transforms.runs``; and each (clinic, instrument)'s
    thresholds."""

    features: pl.DataFrame
    grouped: pl.DataFrame
    screened: pl.DataFrame
    sessions: pl.DataFrame
    runs: pl.DataFrame
    thresholds: dict[tuple[str, str], Thresholds]
    calibrations: dict[str, Calibration]


@dataclass(frozen=True)
class Found:
    """Findings (FOUND_SCHEMA) and their episodes' spans (SPAN_SCHEMA) of the per-series rules on some dyads."""

    findings: pl.DataFrame
    spans: pl.DataFrame


def score(
    features: pl.DataFrame,
    configs: dict[str, RuleConfig],
    calibrations: dict[str, Calibration],
    curves: dict[str, ExpectedCurve] | None = None,
) -> Scored:
    """Run every rule over every dyad's series in ``features`` (from ``session_features``), with each
    instrument's reliable change and, when estimated, its expected trajectory."""
    c = courses(features, configs, calibrations, curves or {})
    return scored(c, [per_dyad(c.screened, c.thresholds, calibrations)])


def courses(
    features: pl.DataFrame,
    configs: dict[str, RuleConfig],
    calibrations: dict[str, Calibration],
    curves: dict[str, ExpectedCurve],
) -> Courses:
    """``features`` grouped into series, each (clinic, instrument)'s thresholds built once, and the screen's
    verdicts on where each rule could fire (``transforms.screen``)."""
    thresholds: dict[tuple[str, str], Thresholds] = {}
    for clinic_id, code in features.select("clinic_id", "instrument").unique().iter_rows():
        inst, cal = instrument(code), calibrations.get(code)
        rc, sd = (cal.rc, cal.within_sd) if cal else (None, None)
        config = configs.get(clinic_id, RuleConfig())
        thresholds[(clinic_id, code)] = Thresholds.of(config, inst, rc, sd, curves.get(code))
    grouped = (
        possible_rules(features, thresholds_frame(thresholds))
        .group_by(["dyad_id", "instrument"], maintain_order=True)
        .agg(
            pl.first("clinic_id"), pl.first("client_id"), pl.first("therapist_id"), *SERIES_COLUMNS,
            *(pl.col(f"can_{rule}").any() for rule in SCREENED),
        )
        .with_row_index("k")
        .with_columns(pl.col("k").cast(pl.Int64))
    )  # fmt: skip
    sessions = (
        grouped.select("k", "dyad_id", "instrument", "clinic_id", "session_number", "session_date", "score", "items")
        .explode("session_number", "session_date", "score", "items")
        .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("k").alias("i"), pl.len().over("k").alias("n"))
        .cast({"n": pl.Int64})
    )
    runs = session_runs(sessions, thresholds)
    # rule 8's escalation reads only whether the dyad is off track now
    off_track = runs.filter((pl.col("rule") == "not_on_track") & pl.col("ongoing")).select("k")
    off_track_dyads = grouped.join(off_track, on="k", how="semi")["dyad_id"]
    grouped = grouped.with_columns(pl.col("dyad_id").is_in(off_track_dyads.implode()).alias("off_track"))
    # the per-series rules are the screened ones, on alliance courses: the rest run in transforms.runs
    alliance = sorted({code for _, code in thresholds if instrument(code).construct != "outcome"})
    could = pl.any_horizontal(pl.col(f"can_{rule}") for rule in SCREENED)
    screened = grouped.filter(pl.col("instrument").is_in(alliance) & could)
    return Courses(features, grouped, screened, sessions, runs, thresholds, calibrations)


def per_dyad(
    grouped: pl.DataFrame, thresholds: dict[tuple[str, str], Thresholds], calibrations: dict[str, Calibration]
) -> Found:
    """The per-series rules on ``grouped``'s series (rows of ``Courses.screened``, every such series of a dyad),
    each rule the screen ruled out on a series left out there, and rule 8's escalation of a dyad off track."""
    findings: list[dict[str, Any]] = []
    spans: list[tuple[int, int, int, int, str]] = []
    by_dyad: dict[str, list[tuple[int, Series, list[Episode], Calibration | None]]] = {}
    dyads: dict[str, dict[str, Any]] = {}
    for row in grouped.iter_rows(named=True):
        inst = instrument(row["instrument"])
        s = Series(inst, row["session_date"], row["session_number"], row["score"], row["items"], row["slope"])
        quiet = frozenset(rule for rule in SCREENED if not row[f"can_{rule}"])
        episodes = series_episodes(s, thresholds[(row["clinic_id"], inst.code)], quiet)
        dyads[row["dyad_id"]] = row
        by_dyad.setdefault(row["dyad_id"], []).append((row["k"], s, episodes, calibrations.get(inst.code)))
    for dyad_id, series_list in by_dyad.items():
        dyad = dyads[dyad_id]
        for k, s, episodes, cal in series_list:
            if s.instrument.construct == "alliance":
                escalated = escalation(s, episodes, dyad["off_track"])
                if escalated is not None:
                    episodes = [*episodes, escalated]
            findings.extend({**_finding(dyad, s, e, cal), "k": k, "start": e.start} for e in episodes)
            n = len(s.scores)
            spans += [(k, e.start, e.last, n if e.end is None else e.end, e.rule) for e in episodes]
    columns = {name: [f[name] for f in findings] for name in FOUND_SCHEMA}
    return Found(pl.DataFrame(columns, schema=FOUND_SCHEMA), pl.DataFrame(spans, schema=SPAN_SCHEMA, orient="row"))


def scored(c: Courses, found: list[Found], advisory: pl.DataFrame | None = None) -> Scored:
    """The findings of ``found`` (the per-series rules on ``c.screened``, in any number of parts), of rules 2 and
    3 (``advisory``, from ``advisories`` when not given) and of ``c.runs``, in the order the per-dyad rules wrote
    them (by dyad, series, rule, then course); and each session with the rules marked there and its risk."""
    if advisory is None:
        advisory = advisories(c.sessions, c.thresholds)
    advisory = pl.concat([advisory, c.runs])
    findings = pl.concat([*(f.findings for f in found), _advisory_findings(advisory, c)])
    order = pl.col("rule").replace_strict(RULE_ORDER, return_dtype=pl.Int64)
    findings = findings.sort(pl.col("k").min().over("dyad_id"), "k", order, "start").drop("k", "start")
    marks = _marks(c.sessions, pl.concat([*(f.spans for f in found), advisory.select(list(SPAN_SCHEMA))]))
    sessions = c.features.join(marks, on=["dyad_id", "instrument", "session_date", "session_number"], how="left")
    return Scored(findings, sessions)


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


def _advisory_findings(episodes: pl.DataFrame, c: Courses) -> pl.DataFrame:
    """Findings (FINDING_SCHEMA, with each one's series k and start) of the episodes ``transforms.advisory`` and
    ``transforms.runs`` found, as ``_finding`` writes them."""

    def at(i: str, number: str, day: str) -> pl.DataFrame:
        return c.sessions.select(
            "k", pl.col("i").alias(i), pl.col("session_number").alias(number), pl.col("session_date").alias(day)
        )

    ids = {code: cal.calibration_id for code, cal in c.calibrations.items()}
    rcs = {code: cal.rc for code, cal in c.calibrations.items()}
    found = (
        episodes.join(c.grouped.select("k", "dyad_id", "instrument", "clinic_id", "client_id", "therapist_id"), on="k")
        .join(at("start", "first_session", "first_session_date"), on=["k", "start"])
        .join(at("last", "last_session", "last_session_date"), on=["k", "last"])
    )
    keys = found.select("dyad_id", "instrument", "rule", "first_session_date", "first_session").iter_rows()
    return found.with_columns(
        flag_id=pl.Series([flag_id(*key) for key in keys], dtype=pl.String),
        severity=pl.col("rule").replace_strict({rule: spec.severity for rule, spec in RULES.items()}),
        outcome=pl.when("ongoing").then(pl.lit("ongoing")).otherwise(pl.lit("repaired")),
        provisional=pl.lit(False),
        magnitude=pl.Series([round(m, 6) for m in found["magnitude"]], dtype=pl.Float64),
        rc_used=pl.when(pl.col("rule").is_in(RC_RULES)).then(
            pl.col("instrument").replace_strict(rcs, default=None, return_dtype=pl.Float64)
        ),
        calibration_id=pl.col("instrument").replace_strict(ids, default=None, return_dtype=pl.String),
    ).select(*FINDING_SCHEMA, "k", "start")


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
