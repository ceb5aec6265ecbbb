"""What every detection rule shares: rule specs and weights, episodes, a dyad's series, thresholds, risk."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from alliance.clinics import RuleConfig
from alliance.instruments import Instrument
from transforms.expected import ExpectedCurve

EPS = 1e-6  # scores carry one decimal; this absorbs float noise at the published boundaries
SEVERITIES = ("advisory", "low", "medium", "high", "critical")
# two-tailed t at alpha .05 by df = n_pre + n_post - 2 (Tang & DeRubeis criterion c)
T_CRITICAL = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}
ALLIANCE_RULES = ("low_score", "new_low", "drop", "reliable_decrease", "sudden_loss", "rupture", "declining_trend")
# rules whose reason describes a fall of the alliance relative to the dyad's own course
DECLINE_RULES = frozenset({"new_low", "reliable_decrease", "sudden_loss", "rupture", "declining_trend"})
# single-session evidence waits for the next session before it counts towards the queue
PENDING_RULES = frozenset({"new_low", "reliable_decrease", "rupture"})


@dataclass(frozen=True)
class RuleSpec:
    severity: str
    weight: float  # share of risk this rule alone carries (risk = 100·(1 − Π(1 − weight)))
    summary: str


RULES: dict[str, RuleSpec] = {
    "low_score": RuleSpec("advisory", 0.04, "total below the instrument's cutoff (SRS < 36): discuss, not queued"),
    "new_low": RuleSpec("medium", 0.30, "below the cutoff for the first time, a reliable change below own level"),
    "drop": RuleSpec("advisory", 0.02, "fell at least 1 point from the last session"),
    "low_item": RuleSpec("advisory", 0.01, "an item below 9 (SRS): practice advice"),
    "reliable_decrease": RuleSpec("medium", 0.20, "fell by at least the reliable change RC"),
    "sudden_loss": RuleSpec("high", 0.55, "sudden alliance loss: a fall ≥ RC, ≥ RC below the pre-loss mean, and c"),
    "rupture": RuleSpec("medium", 0.45, "more than k SD below the dyad's own mean, until repaired"),
    "declining_trend": RuleSpec("medium", 0.30, "least-squares slope over the last W sessions below the threshold"),
    "not_on_track": RuleSpec("low", 0.08, "ORS below the lower band of the expected recovery curve"),
    "below_expected": RuleSpec("advisory", 0.04, "alliance below the band similar clients score at this session"),
    "escalation": RuleSpec("critical", 0.60, "an alliance rule and not-on-track at once"),
    "engagement_gap": RuleSpec("low", 0.12, "N or more session numbers without a rating"),
    "stopped_appearing": RuleSpec("high", 0.40, "no session for two usual intervals after a decline"),
}


@dataclass
class Episode:
    """One stretch of sessions in which a rule holds, from its first to its last evidence."""

    rule: str
    start: int  # index into the series of the first session with evidence
    last: int  # index of the latest session with evidence
    reason: str
    severity: str
    end: int | None = None  # index of the session that ended it; None while ongoing
    outcome: str = "ongoing"  # ongoing | repaired | withdrawn | inactive
    provisional: bool = False
    magnitude: float = 0.0  # how bad, in score points: grows when the episode worsens
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def ongoing(self) -> bool:
        return self.outcome == "ongoing"


@dataclass(frozen=True)
class Series:
    """One dyad's rated sessions of one instrument, in order."""

    instrument: Instrument
    dates: list[date]
    numbers: list[int]
    scores: list[float]
    items: list[list[float] | None]
    slopes: list[float | None]

    def at(self, i: int) -> str:
        return f"session {self.numbers[i]}"

    def points(self, first: int, last: int) -> list[dict[str, Any]]:
        """Evidence: the sessions first..last (clipped) with their scores."""
        lo, hi = max(0, first), min(len(self.scores) - 1, last)
        return [
            {"session": self.numbers[i], "date": self.dates[i].isoformat(), "score": self.scores[i]}
            for i in range(lo, hi + 1)
        ]


@dataclass(frozen=True)
class Thresholds:
    """A clinic's rule settings on one instrument's scale, with the pooled RC and SD."""

    cutoff: float | None
    drop: float
    low_item: float | None
    rc: float | None
    pooled_sd: float | None
    rupture_k: float  # pooled_sd here is the within-dyad SD across clients (see Calibration.within_sd)
    unrepaired_sessions: int
    trend_window: int
    trend_slope: float
    trend_decline: float
    gap_sessions: int
    expected: ExpectedCurve | None = None  # the network's expected trajectory for this instrument

    @classmethod
    def of(
        cls,
        config: RuleConfig,
        inst: Instrument,
        rc: float | None,
        pooled_sd: float | None,
        expected: ExpectedCurve | None = None,
    ) -> Thresholds:
        unit = inst.srs_point
        if inst.construct == "outcome":
            cutoff = config.ors_cutoff if config.ors_cutoff is not None else inst.cutoff
        else:
            cutoff = config.low_cutoff if config.low_cutoff is not None and inst.cutoff is not None else inst.cutoff
        return cls(
            cutoff=cutoff,
            drop=config.drop_points * unit,
            low_item=config.low_item if config.low_item is not None else inst.low_item,
            rc=rc,
            pooled_sd=pooled_sd,
            rupture_k=config.rupture_k,
            unrepaired_sessions=config.unrepaired_sessions,
            trend_window=config.trend_window,
            trend_slope=config.trend_slope * unit,
            trend_decline=config.trend_decline * unit,
            gap_sessions=config.gap_sessions,
            expected=expected,
        )


def _fmt(value: float) -> str:
    return f"{value:.1f}"


def _referenced(
    rule: str,
    s: Series,
    reference_at: Callable[[int], float | None],
    below_by: float,
    describe: Callable[[Episode, float], str],
) -> list[Episode]:
    """Episodes that open where ``reference_at`` gives a level and last while the score stays ``below_by`` under it."""
    episodes: list[Episode] = []
    current: Episode | None = None
    ref = 0.0
    for i, x in enumerate(s.scores):
        if current is not None:
            if ref - x >= below_by - EPS:
                current.last = i
                current.magnitude = max(current.magnitude, ref - x)
                continue
            current.end, current.outcome = i, "repaired"
            current.reason = describe(current, ref) + f"; back to {_fmt(x)} at {s.at(i)}"
            episodes.append(current)
            current = None
        level = reference_at(i)
        if level is not None:
            ref = level
            current = Episode(rule, i, i, "", RULES[rule].severity, magnitude=ref - x)
            current.evidence = {"reference": ref, "threshold": below_by}
    if current is not None:
        current.reason = describe(current, ref)
        episodes.append(current)
    for episode in episodes:
        episode.evidence["sessions"] = s.points(episode.start - 1, episode.last)
    return episodes


def risk_score(rules: list[str]) -> float:
    """Dyad risk 0–100 from its ongoing rules: 100·(1 − Π(1 − weight)); e.g. one sudden loss alone is 55."""
    remaining = 1.0
    for rule in rules:
        remaining *= 1 - RULES[rule].weight
    return round(100 * (1 - remaining), 1)
