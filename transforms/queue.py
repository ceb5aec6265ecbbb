"""The review queue as pure decisions: a dyad's standing from its ongoing findings, and which dyads a policy queues.

A dyad is queued for its confirmed evidence of decline, not for a low level alone: advisory and provisional
findings are shown but carry little or no risk. A course that has ended (no session for ``course_end_days``
beyond its usual interval) leaves the queue, unless it ended right after a decline (``stopped_appearing``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from alliance.clinics import RuleConfig
from transforms.rules import DECLINE_RULES, RULES, SEVERITIES, risk_score

DAY_SETTINGS = ("course_end_days", "inactive_days", "gap_days")  # a clinic's rules that count days of silence
QUEUE_SCHEMA: dict[str, pl.DataType] = {
    "dyad_id": pl.String(),
    "risk_score": pl.Float64(),
    "rules": pl.List(pl.String()),
    "in_queue": pl.Boolean(),
    "course_open": pl.Boolean(),
}


@dataclass(frozen=True)
class Standing:
    """Where one dyad stands today: its risk, the rule that heads its queue entry, and whether its course ended."""

    risk: float
    rules: tuple[str, ...]
    headline: str | None
    headline_is_decline: bool
    course_open: bool
    closed: bool

    @property
    def eligible(self) -> bool:
        return not self.closed and self.headline is not None


def names_decline(finding: dict[str, Any]) -> bool:
    """Whether a finding's reason is about a fall of the alliance (escalation and silence cite theirs)."""
    if finding["rule"] in DECLINE_RULES or finding["rule"] == "stopped_appearing":
        return True
    evidence = json.loads(finding.get("evidence") or "{}")
    return bool(set(evidence.get("alliance_rules", [])) & DECLINE_RULES)


def headline(findings: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The finding a queue entry leads with: most severe, then heaviest, then latest (as the queue view ranks)."""
    if not findings:
        return None
    return max(
        findings,
        key=lambda f: (SEVERITIES.index(f["severity"]), RULES[f["rule"]].weight, f["last_session_date"]),
    )


def course_ended(silent_days: int, cadence_days: float | None, config: RuleConfig) -> bool:
    """No session for ``course_end_days`` beyond the dyad's usual interval (weekly when unknown)."""
    usual = cadence_days if cadence_days and cadence_days > 0 else 7.0
    return silent_days > usual + config.course_end_days


def standing(
    findings: Sequence[dict[str, Any]], silent_days: int, cadence_days: float | None, config: RuleConfig
) -> Standing:
    """A dyad's standing from its findings and how long it has been silent (relative to its clinic's latest day)."""
    confirmed = [f for f in findings if f["ongoing"] and not f["provisional"]]
    rules = tuple(sorted({f["rule"] for f in confirmed}))
    top = headline(confirmed)
    ended = course_ended(silent_days, cadence_days, config)
    dropped_out = "stopped_appearing" in rules  # only raised after a decline; it closes itself at inactive_days
    return Standing(
        risk=risk_score(list(rules)),
        rules=rules,
        headline=top["rule"] if top else None,
        headline_is_decline=bool(top and names_decline(top)),
        course_open=not ended,
        closed=(ended and not dropped_out) or silent_days >= config.inactive_days,
    )


def _rule_settings(last_sessions: pl.DataFrame, configs: dict[str, RuleConfig]) -> pl.DataFrame:
    """The day counts of each clinic's rules that decide when a course ends and a silence closes."""
    clinic_ids = last_sessions["clinic_id"].unique().to_list()
    rules = [configs.get(cid, RuleConfig()) for cid in clinic_ids]
    return pl.DataFrame(
        {"clinic_id": clinic_ids, **{name: [getattr(c, name) for c in rules] for name in DAY_SETTINGS}},
        schema={"clinic_id": pl.String, **dict.fromkeys(DAY_SETTINGS, pl.Int64)},
    )


def _ended(silent: pl.Expr, cadence: pl.Expr) -> pl.Expr:
    """``course_ended`` over frames: no session for ``course_end_days`` beyond the usual interval."""
    usual = pl.when(cadence > 0).then(cadence).otherwise(7.0)
    return silent > usual + pl.col("course_end_days")


def settled_for_good(
    last_sessions: pl.DataFrame, configs: dict[str, RuleConfig], rated: Sequence[str] | None
) -> pl.Series:
    """Per row of ``last_sessions``: whether settling the dyad again can change nothing, so a settle may skip it.

    Its course had ended, it was out of the queue and its silence closed (``inactive_days``, ``gap_days``) by its
    clinic's latest day at the clinic's last settle: from then on its standing and findings depend on its own
    ratings and flags alone, which change only when it is rated again (``rated``, every dyad when None). That
    day is at least the latest session of the dyads not rated since: any clinic whose ratings changed is settled
    in the same run (or its dyads are all counted as rated).
    """
    if rated is None or last_sessions.is_empty():
        return pl.Series("settled", [False] * last_sessions.height, dtype=pl.Boolean)
    unrated = ~pl.col("dyad_id").is_in(pl.Series(list(rated), dtype=pl.String).implode())
    known = pl.col("last_session_date").filter(unrated).max().over("clinic_id")  # the clinic's day, at least
    silent = (known - pl.col("last_session_date")).dt.total_days()
    closed_for_good = silent >= pl.max_horizontal("inactive_days", "gap_days")
    settled = unrated & closed_for_good & _ended(silent, pl.col("cadence_days"))
    frame = last_sessions.join(
        _rule_settings(last_sessions, configs), on="clinic_id", how="left", maintain_order="left"
    )
    return frame.select(settled.fill_null(False).alias("settled"))["settled"]


@dataclass(frozen=True)
class QueuePolicy:
    """Which dyads enter the queue: risk at or above ``min_risk``, and at most ``target_share`` of open dyads
    (highest risk first) when a share is set."""

    min_risk: float = 30.0
    target_share: float | None = None

    def select(self, standings: Sequence[Standing]) -> list[bool]:
        chosen = [s.eligible and s.risk >= self.min_risk - 1e-9 for s in standings]
        if self.target_share is None:
            return chosen
        room = math.floor(self.target_share * sum(s.course_open for s in standings) + 1e-9)
        ranked = sorted((i for i, c in enumerate(chosen) if c), key=lambda i: -standings[i].risk)
        keep = set(ranked[:room])
        return [i in keep for i in range(len(standings))]

    def describe(self) -> str:
        share = f", at most {self.target_share:.0%} of open dyads" if self.target_share is not None else ""
        return f"risk ≥ {self.min_risk:g}{share}"


def select_by_clinic(policy: QueuePolicy, clinic_ids: Sequence[str], standings: Sequence[Standing]) -> list[bool]:
    """The policy applied to each clinic's dyads on their own: a target share is a share of that clinic's caseload."""
    chosen = [False] * len(standings)
    groups: dict[str, list[int]] = {}
    for i, clinic_id in enumerate(clinic_ids):
        groups.setdefault(clinic_id, []).append(i)
    for members in groups.values():
        for i, queued in zip(members, policy.select([standings[i] for i in members]), strict=True):
            chosen[i] = queued
    return chosen


def queue_frame(
    flags: pl.DataFrame, last_sessions: pl.DataFrame, configs: dict[str, RuleConfig], policy: QueuePolicy
) -> pl.DataFrame:
    """Per dyad of ``last_sessions``: risk, confirmed rules, queue membership and whether its course is open.

    ``flags``: the dyads' findings (ongoing or not, any review status); ``last_sessions``: one row per dyad
    with last_session_date, clinic_latest and cadence_days (as ``Writer.last_sessions`` returns). The same
    decisions as ``standing`` and ``QueuePolicy.select`` dyad by dyad, over all dyads at once.
    """
    confirmed = (
        flags.filter(pl.col("ongoing") & ~pl.col("provisional"))
        .group_by("dyad_id")
        .agg(pl.col("rule").unique().sort().alias("rules"))
    )
    # a risk per combination of rules, by risk_score itself: the same rounding, and few combinations
    combos = confirmed.select(pl.col("rules").list.join("|").unique().alias("combo"))
    risks = combos.with_columns(
        pl.Series("risk_score", [risk_score(c.split("|")) for c in combos["combo"]], dtype=pl.Float64)
    )
    silent = (pl.col("clinic_latest") - pl.col("last_session_date")).dt.total_days()
    cadence = pl.col("cadence_days") if "cadence_days" in last_sessions.columns else pl.lit(None, pl.Float64)
    ended = _ended(silent, cadence)
    dropped_out = pl.col("rules").list.contains("stopped_appearing")
    frame = (
        last_sessions.with_row_index("position")
        .join(confirmed, on="dyad_id", how="left")
        .join(_rule_settings(last_sessions, configs), on="clinic_id", how="left")
        .with_columns(pl.col("rules").fill_null(pl.lit([], pl.List(pl.String))))
        .with_columns(pl.col("rules").list.join("|").alias("combo"))
        .join(risks, on="combo", how="left")
        .with_columns(
            pl.col("risk_score").fill_null(0.0),
            (~ended).alias("course_open"),
            ((ended & ~dropped_out) | (silent >= pl.col("inactive_days"))).alias("closed"),
        )
        .with_columns(
            (
                ~pl.col("closed") & (pl.col("rules").list.len() > 0) & (pl.col("risk_score") >= policy.min_risk - 1e-9)
            ).alias("in_queue")
        )
        .sort("position")
    )
    if policy.target_share is not None:
        room = (policy.target_share * pl.col("course_open").sum().over("clinic_id") + 1e-9).floor()
        kept = (
            frame.with_columns(room.alias("room"))
            .filter("in_queue")
            .sort(["risk_score", "position"], descending=[True, False])  # the highest risks, earlier dyads first
            .filter(pl.int_range(pl.len()).over("clinic_id") < pl.col("room"))
        )
        frame = frame.with_columns(pl.col("position").is_in(kept["position"].implode()).alias("in_queue"))
    return frame.select(list(QUEUE_SCHEMA)).cast(QUEUE_SCHEMA)  # type: ignore[arg-type]


OPTION_RISKS = (20.0, 30.0, 40.0, 55.0)
OPTION_SHARES = (0.10, 0.12, 0.15)


def compare_policies(
    flags: pl.DataFrame, last_sessions: pl.DataFrame, configs: dict[str, RuleConfig], policies: Sequence[QueuePolicy]
) -> pl.DataFrame:
    """What each queue setting would give: queued dyads, their share of open dyads, and the declines that head them."""
    by_dyad: dict[str, list[dict[str, Any]]] = {}
    for row in flags.filter(pl.col("ongoing")).iter_rows(named=True):
        by_dyad.setdefault(row["dyad_id"], []).append(row)
    clinics, standings = [], []
    for row in last_sessions.iter_rows(named=True):
        config = configs.get(row["clinic_id"], RuleConfig())
        silent = (row["clinic_latest"] - row["last_session_date"]).days
        clinics.append(row["clinic_id"])
        standings.append(standing(by_dyad.get(row["dyad_id"], []), silent, row.get("cadence_days"), config))
    open_dyads = sum(s.course_open for s in standings)
    rows = []
    for policy in policies:
        chosen = [s for s, c in zip(standings, select_by_clinic(policy, clinics, standings), strict=True) if c]
        heads: dict[str, int] = {}
        for s in chosen:
            heads[s.headline or ""] = heads.get(s.headline or "", 0) + 1
        rows.append(
            {
                "setting": policy.describe(),
                "queued": len(chosen),
                "open_dyads": open_dyads,
                "share_of_open": round(len(chosen) / open_dyads, 4) if open_dyads else 0.0,
                "headlines": ", ".join(f"{rule} {n}" for rule, n in sorted(heads.items(), key=lambda kv: -kv[1])),
            }
        )
    return pl.DataFrame(
        rows,
        schema={
            "setting": pl.String,
            "queued": pl.Int64,
            "open_dyads": pl.Int64,
            "share_of_open": pl.Float64,
            "headlines": pl.String,
        },
    )


def policy_options(current: QueuePolicy) -> list[QueuePolicy]:
    """The current setting first, then risk thresholds and target shares to compare it with."""
    options = [current]
    options += [QueuePolicy(r) for r in OPTION_RISKS if QueuePolicy(r) != current]
    options += [QueuePolicy(current.min_risk, share) for share in OPTION_SHARES]
    return [o for i, o in enumerate(options) if o not in options[:i]]
