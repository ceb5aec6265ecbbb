"""Rules 5–7 (domain.md): a sudden loss, a rupture and a declining trend, each judged against the dyad's own
earlier sessions rather than a fixed cutoff."""

from __future__ import annotations

import math
import statistics

from transforms import exact
from transforms.episodes import EPS, RULES, T_CRITICAL, Episode, Series, Thresholds, _fmt, _referenced


def _pooled_sd(pre: list[float], post: list[float]) -> float:
    spread = (len(pre) - 1) * exact.variance(pre) + (len(post) - 1) * exact.variance(post)
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
        if not (fall >= rc - EPS and exact.mean(pre) - x[n] >= rc - EPS):
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
            met = exact.mean(pre) - exact.mean(post) > t * pooled + EPS
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
        pre_mean = exact.mean(pre)
        current = episode
        episodes.append(episode)
    for episode in episodes:
        episode.evidence.setdefault("sessions", s.points(episode.start - 3, episode.last))
    return episodes


OWN_SD_SESSIONS = 5  # prior sessions before a dyad's own SD is trusted next to the pooled one
FALL_BEFORE_SD = 1.5


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
    pooled = th.pooled_sd or 0.0
    for i, (mean, sd) in enumerate(exact.prefix_moments(x)):
        own = sd if sd is not None and i >= OWN_SD_SESSIONS else 0.0
        means.append(mean if mean is not None else 0.0)
        sds.append(max(own, pooled) if i >= 2 else 0.0)

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

    start = exact.mean(x[:3]) if len(x) > 5 else 0.0

    def held_low(i: int) -> float | None:
        # a slide too noisy for the slope: the last two sessions both below the first three's mean and
        # on average a reliable change below it
        if th.rc is None or i < 5:
            return None
        recent = x[i - 1 : i + 1]
        return start if max(recent) < start - EPS and start - exact.mean(recent) >= th.rc - EPS else None

    def starts(i: int) -> float | None:
        # two steep windows in a row: one noisy window at the ceiling is not a slide
        if i < w or not (steep(i) and steep(i - 1)):
            return held_low(i)
        level = before(i)
        return level if level - exact.mean(x[i - 1 : i + 1]) >= th.trend_decline - EPS else held_low(i)

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
