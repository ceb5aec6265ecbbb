"""Detection rules (domain.md 1–9) over one dyad's sessions: each rule yields episodes with a one-line reason.

Rules 5–7, judged against the dyad's own earlier sessions, live in ``transforms.declines``; all are applied here.
Rules 2 (drop) and 3 (low item) run over every series at once, in ``transforms.advisory``.
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
    _runs,
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


def low_score(s: Series, th: Thresholds) -> list[Episode]:
    """Rule 1: total below the cutoff (36.0 no flag, 35.9 flag); open until a session is back at or above it."""
    if th.cutoff is None or s.instrument.construct != "alliance":
        return []
    cutoff, x = th.cutoff, s.scores
    return _runs(
        "low_score",
        s,
        [v < cutoff - EPS for v in x],
        lambda a, b: (
            f"{s.instrument.code} {_fmt(min(x[a : b + 1]))} at {s.at(a + x[a : b + 1].index(min(x[a : b + 1])))} "
            f"is below the cutoff {cutoff:g}" + (f" ({b - a + 1} sessions in a row)" if b > a else "") + ": discuss"
        ),
        lambda a, b: cutoff - min(x[a : b + 1]),
        {"cutoff": cutoff},
    )


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


def not_on_track(s: Series, th: Thresholds) -> list[Episode]:
    """Rule 8: from the third session on, ORS below the lower band of the expected recovery curve for its
    intake and session (OQ-Analyst's not-on-track signal); without a curve, below the cutoff with no reliable
    improvement since intake."""
    if s.instrument.construct != "outcome" or not s.scores:
        return []
    x = s.scores
    curve = th.expected
    if curve is not None:
        bands = curve.course(x[0], len(x))
        holds = [i >= 2 and (b := bands[i]) is not None and x[i] < b.lower - EPS for i in range(len(x))]

        def describe(a: int, last: int) -> str:
            band = bands[last]
            assert band is not None
            return (
                f"{s.instrument.code} {_fmt(x[last])} at {s.at(last)} is below the expected recovery band "
                f"(lower {_fmt(band.lower)}, expected {_fmt(band.expected)} for clients starting near {_fmt(x[0])})"
            )

        return _runs(
            "not_on_track",
            s,
            holds,
            describe,
            lambda a, last: max(band.lower - x[i] for i in range(a, last + 1) if (band := bands[i]) is not None),
            {"curve": curve.curve_id, "intake": x[0]},
        )
    if th.cutoff is None:
        return []
    cutoff = th.cutoff
    improvement = th.rc if th.rc is not None else 5.0 * s.instrument.srs_point
    holds = [i >= 2 and x[i] < cutoff - EPS and x[i] - x[0] < improvement - EPS for i in range(len(x))]
    return _runs(
        "not_on_track",
        s,
        holds,
        lambda a, b: (
            f"{s.instrument.code} {_fmt(x[b])} at {s.at(b)} below the cutoff {cutoff:g} with no reliable "
            f"improvement since intake ({_fmt(x[0])})"
        ),
        lambda a, b: cutoff - min(x[a : b + 1]),
        {"cutoff": cutoff, "intake": x[0]},
    )


def below_expected(s: Series, th: Thresholds) -> list[Episode]:
    """Alliance below the lower band of what similar clients scored at this session (advisory evidence)."""
    curve = th.expected
    if curve is None or s.instrument.construct != "alliance" or not s.scores:
        return []
    x = s.scores
    bands = curve.course(x[0], len(x))
    holds = [i >= 1 and (b := bands[i]) is not None and x[i] < b.lower - EPS for i in range(len(x))]

    def describe(a: int, last: int) -> str:
        band = bands[last]
        assert band is not None
        return (
            f"{s.instrument.code} {_fmt(x[last])} at {s.at(last)} is below the band clients starting near "
            f"{_fmt(x[0])} score at this session (lower {_fmt(band.lower)}, expected {_fmt(band.expected)})"
        )

    def depth(a: int, last: int) -> float:
        return max(band.lower - x[i] for i in range(a, last + 1) if (band := bands[i]) is not None)

    return _runs("below_expected", s, holds, describe, depth, {"curve": curve.curve_id})


def session_gap(s: Series, th: Thresholds) -> list[Episode]:
    """Rule 9a: N or more session numbers without a rating; ends once a later session is rated."""
    gaps = [i > 0 and s.numbers[i] - s.numbers[i - 1] - 1 >= th.gap_sessions for i in range(len(s.numbers))]
    return _runs(
        "engagement_gap",
        s,
        gaps,
        lambda a, b: (
            f"{s.numbers[b] - s.numbers[b - 1] - 1} sessions without a rating between sessions "
            f"{s.numbers[b - 1]} and {s.numbers[b]}"
        ),
        lambda a, b: float(s.numbers[b] - s.numbers[b - 1] - 1),
        {"gap_sessions": th.gap_sessions},
    )


SERIES_RULES: tuple[Callable[[Series, Thresholds], list[Episode]], ...] = (
    low_score,
    new_low,
    reliable_decrease,
    sudden_loss,
    rupture,
    declining_trend,
    below_expected,
    not_on_track,
    session_gap,
)


OUTCOME_RULES: tuple[Callable[[Series, Thresholds], list[Episode]], ...] = (not_on_track,)
SEVERE_RC = 2.0  # a fall of this many reliable changes below the recent level queues at once


def series_episodes(s: Series, th: Thresholds, quiet: frozenset[str] = frozenset()) -> list[Episode]:
    """Every applicable rule's episodes on one series: alliance rules on alliance instruments, rule 8 on outcome.
    The rules named in ``quiet`` are known to find nothing here (``transforms.screen``) and are not run."""
    rules = OUTCOME_RULES if s.instrument.construct == "outcome" else SERIES_RULES
    found = [
        episode
        for rule in rules
        if (rule is not not_on_track or s.instrument.construct == "outcome") and rule.__name__ not in quiet
        for episode in rule(s, th)
    ]
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


def escalation(alliance: Series, found: list[Episode], outcome_found: list[Episode]) -> Episode | None:
    """Rule 8 escalation: a confirmed alliance decline and not-on-track both ongoing (OQ-Analyst's alliance check)."""
    alliance_now = [e for e in found if e.ongoing and e.rule in DECLINE_RULES and not e.provisional]
    outcome_now = [e for e in outcome_found if e.ongoing and e.rule == "not_on_track"]
    if not alliance_now or not outcome_now:
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
