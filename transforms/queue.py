"""The review queue as pure decisions: a dyad's standing from its ongoing findings, and which dyads a policy queues."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from alliance.clinics import RuleConfig
from transforms.rules import RULES, SEVERITIES, risk_score

# rules whose reason describes a fall of the alliance, relative to the dyad's own course
DECLINE_RULES = frozenset({"drop", "reliable_decrease", "sudden_loss", "rupture", "declining_trend"})


@dataclass(frozen=True)
class Standing:
    """Where one dyad stands today: its risk, the rule that heads its queue entry, and whether it is closed."""

    risk: float
    rules: tuple[str, ...]
    headline: str | None
    headline_is_decline: bool
    closed: bool

    @property
    def eligible(self) -> bool:
        return not self.closed and self.headline is not None


def _names_decline(finding: dict[str, Any]) -> bool:
    if finding["rule"] in DECLINE_RULES:
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


def standing(
    findings: Sequence[dict[str, Any]], dates: Sequence[date], clinic_latest: date, config: RuleConfig
) -> Standing:
    """A dyad's standing from its ongoing findings and its session dates, judged on the clinic's latest day."""
    ongoing = [f for f in findings if f["ongoing"]]
    rules = tuple(sorted({f["rule"] for f in ongoing}))
    top = headline(ongoing)
    silent = (clinic_latest - dates[-1]).days if dates else 0
    return Standing(
        risk=risk_score(list(rules)),
        rules=rules,
        headline=top["rule"] if top else None,
        headline_is_decline=bool(top and _names_decline(top)),
        closed=silent >= config.inactive_days,
    )


@dataclass(frozen=True)
class QueuePolicy:
    """Which dyads enter the queue: those at or above ``min_risk``."""

    min_risk: float = 30.0

    def select(self, standings: Sequence[Standing]) -> list[bool]:
        return [s.eligible and s.risk >= self.min_risk for s in standings]
