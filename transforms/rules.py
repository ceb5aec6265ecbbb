"""Detection rules (domain.md 1–9) over one dyad's sessions: each rule yields episodes with a one-line reason.

Rules 5–7, judged against the dyad's own earlier sessions, live in ``transforms.declines``; all are applied here.
Rules 2 (drop) and 3 (low item) run over every series at once, in ``transforms.advisory``; rules 1 (low score),
8 (not on track), 9a (engagement gap) and the expected band in ``transforms.runs``.
"""

from __future__ import annotations

from collections.abc import Callable

from transforms import exact
from transforms.declines import declining_trend, rupture, sudden_loss, theil_sen
from transforms.episodes import (
    ALLIANCE_RULES,
    DECLINE_RULES,
    EPS,
    PENDING_RULES,
    RULES,
    SEVERITIES,
    T_CRITICAL,
    Episode,
    RuleSpec,
    Series,
    Thresholds,
    _fmt,
    _referenced,
    risk_score,
)

__all__ = [
    "ALLIANCE_RULES",
    "DECLINE_RULES",
    "EPS",
    "PENDING_RULES",
    "RULES",
    "SEVERITIES",
    "T_CRITICAL",
    "Episode",
    "RuleSpec",
    "Series",
    "Thresholds",
    "declining_trend",
    "risk_score",
    "rupture",
    "sudden_loss",
    "theil_sen",
]


def reliable_decrease(s: Series, th: Thresholds) -> list[Episode]:
    """Rule 4: Δ ≤ −RC; open while the score stays a reliable change below the level it fell from."""
    if th.rc is None:
        return []
    rc, x = th.rc, s.scores

    def describe(e: Episode, ref: float) -> str:
        return (
            f"{s.instrument.code} fell {_fmt(ref - x[e.start])} points from {_fmt(ref)} to {_fmt(x[e.start])} "
            f"at {s.at(e.start)}, beyond the reliable change {_fmt(rc)}"
        )

    episodes = _referenced(
        "reliable_decrease", s, lambda i: x[i - 1] if i > 0 and x[i - 1] - x[i] >= rc - EPS else None, rc, describe
    )
    for episode in episodes:
        episode.evidence["rc"] = rc
    return episodes


def new_low(s: Series, th: Thresholds) -> list[Episode]:
    """A low score that is new for this client: below the cutoff after at least two sessions at or above it,
    and a reliable change below the mean of those sessions; open while the score stays below the cutoff."""
    if th.cutoff is None or th.rc is None or s.instrument.construct != "alliance":
        return []
    cutoff, rc, x = th.cutoff, th.rc, s.scores

    def opens(i: int) -> bool:
        prior = x[:i]
        return (
            len(prior) >= 2
            and x[i] < cutoff - EPS
            and min(prior) >= cutoff - EPS
            and exact.mean(prior) - x[i] >= rc - EPS
        )

    episodes: list[Episode] = []
    for i in range(len(x)):
        if not opens(i):
            continue
        level = exact.mean(x[:i])
        j = i
        while j + 1 < len(x) and x[j + 1] < cutoff - EPS:
            j += 1
        episode = Episode("new_low", i, j, "", RULES["new_low"].severity, magnitude=level - min(x[i : j + 1]))
        episode.reason = (
            f"{s.instrument.code} {_fmt(x[i])} at {s.at(i)} is below the cutoff {cutoff:g} for the first time, "
            f"{_fmt(level - x[i])} points below the client's own level {_fmt(level)}"
        )
        episode.evidence = {"cutoff": cutoff, "rc": rc, "level": level, "sessions": s.points(i - 1, j)}
        if j + 1 < len(x):
            episode.end, episode.outcome = j + 1, "repaired"
            episode.reason += f"; {s.at(j + 1)} back at or above the cutoff"
        episodes.append(episode)
        break  # only the first low of a course is new for the client
    return episodes


# rules 1 (low score), 8 (not on track), 9a (engagement gap) and the expected band run in transforms.runs
SERIES_RULES: tuple[Callable[[Series, Thresholds], list[Episode]], ...] = (
    new_low,
    reliable_decrease,
    sudden_loss,
    rupture,
    declining_trend,
)
SEVERE_RC = 2.0  # a fall of this many reliable changes below the recent level queues at once


def series_episodes(s: Series, th: Thresholds, quiet: frozenset[str] = frozenset()) -> list[Episode]:
    """The per-series rules' episodes on one alliance series. The rules named in ``quiet`` are known to find nothing
    here (``transforms.screen``) and are not run."""
    found = [episode for rule in SERIES_RULES if rule.__name__ not in quiet for episode in rule(s, th)]
    last = len(s.scores) - 1
    recent = s.scores[max(0, last - 3) : last]
    # a fall of twice the reliable change below the recent level is no session-to-session noise
    severe = bool(th.rc and recent and exact.mean(recent) - s.scores[last] >= SEVERE_RC * th.rc - EPS)
    for episode in found:
        # one session of evidence at the latest session: shown, but queued only once the next session agrees
        single = episode.start == episode.last == last and not episode.evidence.get("fell_before")
        if episode.rule in PENDING_RULES and episode.ongoing and single and not severe:
            episode.provisional = True
    return found


def escalation(alliance: Series, found: list[Episode], off_track: bool) -> Episode | None:
    """Rule 8 escalation: a confirmed alliance decline ongoing while the dyad is ``off_track`` (an ongoing
    not-on-track episode; OQ-Analyst's alliance check)."""
    alliance_now = [e for e in found if e.ongoing and e.rule in DECLINE_RULES and not e.provisional]
    if not alliance_now or not off_track:
        return None
    worst = max(alliance_now, key=lambda e: (RULES[e.rule].weight, e.magnitude))
    last = len(alliance.scores) - 1
    episode = Episode(
        "escalation",
        min(e.start for e in alliance_now),
        last,
        f"alliance ({worst.rule.replace('_', ' ')}) and outcome (not on track) both flagged at {alliance.at(last)}",
        RULES["escalation"].severity,
        magnitude=worst.magnitude,
    )
    episode.evidence = {
        "alliance_rules": sorted({e.rule for e in alliance_now}),
        "sessions": alliance.points(last, last),
    }
    return episode
