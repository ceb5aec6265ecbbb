"""The per-dyad rules as first written, kept unchanged as the oracle of transforms.rules (test_rules_oracle.py)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

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
    "risk_score",
]


def _runs(
    rule: str,
    s: Series,
    holds: list[bool],
    describe: Callable[[int, int], str],
    magnitude: Callable[[int, int], float],
    evidence: dict[str, Any],
) -> list[Episode]:
    """Episodes as maximal runs of consecutive sessions where ``holds``; a run ends at the first session without."""
    episodes = []
    i, n = 0, len(holds)
    while i < n:
        if not holds[i]:
            i += 1
            continue
        j = i
        while j + 1 < n and holds[j + 1]:
            j += 1
        episode = Episode(rule, i, j, describe(i, j), RULES[rule].severity, magnitude=magnitude(i, j))
        episode.evidence = {**evidence, "sessions": s.points(i - 1, j)}
        if j + 1 < n:
            episode.end, episode.outcome = j + 1, "repaired"
            episode.reason += f"; {s.at(j + 1)} recovered"
        episodes.append(episode)
        i = j + 1
    return episodes


def drop(s: Series, th: Thresholds) -> list[Episode]:
    """Rule 2: Δ ≤ −1 from the last session; open until the score is back within 1 point of where it fell from."""
    x = s.scores

    def describe(e: Episode, ref: float) -> str:
        return f"{s.instrument.code} fell from {_fmt(ref)} to {_fmt(x[e.start])} at {s.at(e.start)}"

    return _referenced(
        "drop", s, lambda i: x[i - 1] if i > 0 and x[i] - x[i - 1] <= -th.drop + EPS else None, th.drop, describe
    )


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
            and statistics.mean(prior) - x[i] >= rc - EPS
        )

    episodes: list[Episode] = []
    for i in range(len(x)):
        if not opens(i):
            continue
        level = statistics.mean(x[:i])
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


def low_item(s: Series, th: Thresholds) -> list[Episode]:
    """Rule 3 (advisory): any item below the practice threshold (SRS < 9)."""
    if th.low_item is None or s.instrument.construct != "alliance":
        return []
    limit = th.low_item
    names = s.instrument.items

    def lows(i: int) -> list[str]:
        values = s.items[i] or []
        return [n for n, v in zip(names, values, strict=False) if v is not None and v < limit - EPS]

    flags = [bool(lows(i)) for i in range(len(s.scores))]
    return _runs(
        "low_item",
        s,
        flags,
        lambda a, b: f"{s.instrument.code} item(s) {', '.join(lows(b) or lows(a))} below {limit:g} at {s.at(b)}",
        lambda a, b: max(limit - min(v for v in (s.items[i] or [limit]) if v is not None) for i in range(a, b + 1)),
        {"low_item": limit},
    )


def _pooled_sd(pre: list[float], post: list[float]) -> float:
    spread = (len(pre) - 1) * statistics.variance(pre) + (len(post) - 1) * statistics.variance(post)
    return math.sqrt(spread / (len(pre) + len(post) - 2))


def sudden_loss(s: Series, th: Thresholds) -> list[Episode]:
    """Rule 5: Tang & DeRubeis sudden-gain criteria reversed; provisional on (a)+(b) until later sessions arrive.

    (a) the fall from the previous session is at least RC; (b) the score is at least RC below the mean of
    the (up to) three sessions before it — Tang & DeRubeis's "25% of the pre-gain score" asks 9–10 points
    at the SRS ceiling, more than most real losses; (c) the t-test of three sessions before against after.
    """
    if th.rc is None:
        return []
    rc, x = th.rc, s.scores
    episodes: list[Episode] = []
    current: Episode | None = None
    pre_mean = 0.0
    for n in range(1, len(x)):
        if current is not None:
            if pre_mean - x[n] >= rc - EPS:
                current.last = n
                current.magnitude = max(current.magnitude, pre_mean - x[n])
                continue
            current.end, current.outcome = n, "repaired"
            current.reason += f"; repaired: back to {_fmt(x[n])} at {s.at(n)}"
            current = None
            continue
        fall = x[n - 1] - x[n]
        pre, post = x[max(0, n - 3) : n], x[n : n + 3]
        # (b) on a 0–40 ceiling scale: a reliable change below the pre-loss level, not a quarter of the score
        if not (fall >= rc - EPS and statistics.mean(pre) - x[n] >= rc - EPS):
            continue
        criteria = {"a": True, "b": True}
        head = f"{s.instrument.code} fell from {_fmt(x[n - 1])} to {_fmt(x[n])} at {s.at(n)}: sudden loss"
        episode = Episode("sudden_loss", n, n, "", RULES["sudden_loss"].severity, magnitude=fall)
        episode.evidence = {"rc": rc, "pre": pre, "post": post}
        if len(post) < 2:
            episode.provisional = True
            episode.reason = f"{head}, provisional (criteria a+b met; c needs the next sessions)"
        elif len(pre) < 2:
            episode.reason = f"{head}, criteria a+b met (c skipped: fewer than 2 sessions before)"
        else:
            t = T_CRITICAL[len(pre) + len(post) - 2]
            pooled = _pooled_sd(pre, post)
            met = statistics.mean(pre) - statistics.mean(post) > t * pooled + EPS
            criteria["c"] = met
            episode.evidence.update({"t": t, "pooled_sd": pooled})
            if not met:
                episode.end, episode.outcome = n + len(post) - 1, "withdrawn"
                episode.reason = f"{head} withdrawn: criterion c not met once later sessions arrived"
                episode.evidence.update({"criteria": criteria, "sessions": s.points(n - 3, n + 2)})
                episodes.append(episode)
                continue
            episode.reason = f"{head}, 3 criteria met"
        episode.evidence["criteria"] = criteria
        pre_mean = statistics.mean(pre)
        current = episode
        episodes.append(episode)
    for episode in episodes:
        episode.evidence.setdefault("sessions", s.points(episode.start - 3, episode.last))
    return episodes


OWN_SD_SESSIONS = 5  # prior sessions before a dyad's own SD is trusted next to the pooled one
FALL_BEFORE_SD = 1.5
SEVERE_RC = 2.0


def rupture(s: Series, th: Thresholds) -> list[Episode]:
    """Rule 6: a session more than k·SD below the mean of the dyad's earlier sessions; repaired on a return
    to within one SD of that mean.

    SD is the pooled within-dyad SD until the dyad has OWN_SD_SESSIONS earlier sessions, then the larger of
    its own and the pooled one, so a rupture can fire from the third session on.
    """
    x = s.scores
    if s.instrument.construct != "alliance":
        return []
    means: list[float] = []
    sds: list[float] = []
    for i in range(len(x)):
        prior = x[:i]
        pooled = th.pooled_sd or 0.0
        own = statistics.stdev(prior) if len(prior) >= OWN_SD_SESSIONS else 0.0
        means.append(statistics.mean(prior) if prior else 0.0)
        sds.append(max(own, pooled) if len(prior) >= 2 else 0.0)

    def opens(i: int) -> float | None:
        if sds[i] <= 0:
            return None
        return means[i] - sds[i] if x[i] < means[i] - th.rupture_k * sds[i] - EPS else None

    def describe(e: Episode, _ref: float) -> str:
        mean, sd = means[e.start], sds[e.start]
        return (
            f"{s.instrument.code} {_fmt(x[e.start])} at {s.at(e.start)} is {(mean - x[e.start]) / sd:.1f} SD "
            f"below the dyad's earlier mean {_fmt(mean)}: rupture"
        )

    # open while more than float noise below mean − SD (_referenced subtracts EPS): a score at it is a return
    episodes = _referenced("rupture", s, opens, 2 * EPS, describe)
    for episode in episodes:
        mean, sd = means[episode.start], sds[episode.start]
        episode.evidence.update({"mean": mean, "sd": sd, "k": th.rupture_k, "baseline": mean})
        # deep enough to be a reliable change below the earlier mean, not only k pooled SDs
        episode.evidence["reliable"] = th.rc is not None and mean - x[episode.last] >= th.rc - EPS
        # the session before already sat 1.5 SD low: a fall over two sessions, confirmed as it stands
        if episode.start >= 1 and x[episode.start - 1] < mean - FALL_BEFORE_SD * sd - EPS:
            episode.evidence["fell_before"] = True
        unrepaired = len(x) - episode.start
        if episode.ongoing:
            episode.reason += f", unrepaired for {unrepaired} session{'s' if unrepaired > 1 else ''}"
            if unrepaired >= th.unrepaired_sessions:
                episode.severity = "high"
        else:
            episode.reason = episode.reason.replace("; back to", ", repaired: back to")
    return episodes


def theil_sen(values: list[float]) -> float:
    """Median of pairwise slopes (Theil 1950, Sen 1968): one outlying session cannot tilt it."""
    slopes = [(values[j] - values[i]) / (j - i) for i in range(len(values)) for j in range(i + 1, len(values))]
    return statistics.median(slopes) if slopes else 0.0


def declining_trend(s: Series, th: Thresholds) -> list[Episode]:
    """Rule 7: the Theil–Sen slope over the last W sessions at or below the threshold in two windows running,
    and the last two sessions' mean at least ``trend_decline`` below the level before the windows (the
    median of up to three sessions), so one noisy session neither makes nor hides a slide."""
    x, w = s.scores, th.trend_window
    rc = th.rc if th.rc is not None else th.trend_decline
    slopes = [theil_sen(x[i - w + 1 : i + 1]) if i >= w - 1 else None for i in range(len(x))]

    def steep(i: int) -> bool:
        slope = slopes[i] if i >= 0 else None
        return slope is not None and slope <= th.trend_slope + EPS

    def before(i: int) -> float:
        return statistics.median(x[max(0, i - w - 2) : i - w + 1])

    def held_low(i: int) -> float | None:
        # a slide too noisy for the slope: the last two sessions both below the first three's mean and
        # on average a reliable change below it
        if th.rc is None or i < 5:
            return None
        start, recent = statistics.mean(x[:3]), x[i - 1 : i + 1]
        return start if max(recent) < start - EPS and start - statistics.mean(recent) >= th.rc - EPS else None

    def starts(i: int) -> float | None:
        # two steep windows in a row: one noisy window at the ceiling is not a slide
        if i < w or not (steep(i) and steep(i - 1)):
            return held_low(i)
        level = before(i)
        return level if level - statistics.mean(x[i - 1 : i + 1]) >= th.trend_decline - EPS else held_low(i)

    def describe(e: Episode, ref: float) -> str:
        slope = slopes[e.start] or 0.0
        first = e.start - w
        return (
            f"{s.instrument.code} declining {abs(slope):.1f} points a session over sessions "
            f"{s.numbers[first]}–{s.numbers[e.start]} ({_fmt(ref)} → {_fmt(x[e.start])})"
        )

    episodes = _referenced("declining_trend", s, starts, min(rc, th.trend_decline), describe)
    for episode in episodes:
        episode.evidence["slope"] = slopes[episode.start]
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
        bands = [curve.at(x[0], i + 1) for i in range(len(x))]
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
    bands = [curve.at(x[0], i + 1) for i in range(len(x))]
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
    drop,
    low_item,
    reliable_decrease,
    sudden_loss,
    rupture,
    declining_trend,
    below_expected,
    not_on_track,
    session_gap,
)


OUTCOME_RULES: tuple[Callable[[Series, Thresholds], list[Episode]], ...] = (not_on_track,)


def series_episodes(s: Series, th: Thresholds) -> list[Episode]:
    """Every applicable rule's episodes on one series: alliance rules on alliance instruments, rule 8 on outcome."""
    rules = OUTCOME_RULES if s.instrument.construct == "outcome" else SERIES_RULES
    found = [
        episode
        for rule in rules
        if rule is not not_on_track or s.instrument.construct == "outcome"
        for episode in rule(s, th)
    ]
    last = len(s.scores) - 1
    recent = s.scores[max(0, last - 3) : last]
    # a fall of twice the reliable change below the recent level is no session-to-session noise
    severe = bool(th.rc and recent and statistics.mean(recent) - s.scores[last] >= SEVERE_RC * th.rc - EPS)
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
