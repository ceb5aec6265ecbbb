"""Courses with the noise real SRS data has: own levels, session-to-session spread, short courses, missed weeks.

Defaults follow published SRS norms (see README, "Sample data"): about 70% of sessions at 36–40 and
about a quarter exactly 40; clients differ in their own level (SD about 2.8, some sit at 30–34 throughout);
a dyad's sessions scatter 1–2 points around its level; median course 8 sessions, a fifth 5 or fewer;
weekly to biweekly with missed weeks; about 5% of sessions unrated; therapists differ by 1–2 points.
All shapes are drawn in SRS points and mapped onto the instrument's scale.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from alliance.samples.trajectories import Scale

REALISTIC_PATTERNS = (
    "stable",
    "sudden_loss",
    "slow_decline",
    "single_low",
    "rupture_repair",
    "dropout_after_decline",
)
LEVEL_MEAN = 37.9  # with the spread below: about 70% of sessions 36–40 and a quarter at 40
LEVEL_SD = 2.8
WITHIN_SD = (1.0, 2.0)
THERAPIST_SD = 0.8  # two therapists typically 1–2 points apart
COURSE_MEDIAN = 8
COURSE_SIGMA = 0.45  # lognormal: about a fifth of courses 5 sessions or fewer
MAX_COURSE = 30
UNRATED_CHANCE = 0.05
MISSED_WEEK_CHANCE = 0.12
CADENCES = (7, 7, 7, 10, 14)
SLOW_EVENT_FALL = 4.0  # a slow decline's event: the session its planted fall first reaches this many points
# fewest sessions a shape needs: a baseline before the event and room after it
MIN_SESSIONS = {
    "stable": 1,
    "sudden_loss": 6,
    "slow_decline": 9,
    "single_low": 5,
    "rupture_repair": 7,
    "dropout_after_decline": 4,
}


@dataclass(frozen=True)
class Course:
    """One dyad's planted course in SRS points: a score per session (None = unrated) and its dates' gaps."""

    scores: list[float | None]
    gaps: list[int]  # days before each session; gaps[0] is the offset from the course start
    event: int | None  # index of the planted event
    level: float  # the client's own usual level
    within_sd: float


def therapist_offset(rng: random.Random) -> float:
    return rng.gauss(0.0, THERAPIST_SD)


def course_length(pattern: str, rng: random.Random) -> int:
    n = round(math.exp(rng.gauss(math.log(COURSE_MEDIAN), COURSE_SIGMA)))
    return max(MIN_SESSIONS[pattern], min(MAX_COURSE, n))


def _gaps(n: int, rng: random.Random) -> list[int]:
    cadence = rng.choice(CADENCES)
    gaps = [0]
    for _ in range(n - 1):
        missed = sum(1 for _ in range(3) if rng.random() < MISSED_WEEK_CHANCE)
        gaps.append(cadence * (1 + missed) + rng.choice((0, 0, 0, -1, 1)))
    return gaps


def _shape(pattern: str, level: float, n: int, rng: random.Random) -> tuple[list[float], int | None]:
    """The noise-free course around ``level`` and the index of its event."""
    means = [level] * n
    if pattern == "sudden_loss":
        event = rng.randint(3, n - 3)
        fall = rng.uniform(6.0, 10.0)
        for i in range(event, n):
            means[i] = level - fall
        return means, event
    if pattern == "slow_decline":
        onset = rng.randint(3, max(3, n - 6))
        rate = rng.uniform(0.9, 1.5)
        steps = rng.randint(5, 9)
        for i in range(onset, n):
            means[i] = level - rate * min(i - onset + 1, steps)
        return means, onset + math.ceil(SLOW_EVENT_FALL / rate) - 1
    if pattern == "single_low":
        event = rng.randint(2, n - 2)
        means[event] = level - rng.uniform(4.0, 7.0)
        return means, event
    if pattern == "rupture_repair":
        event = rng.randint(3, n - 4)
        for i in range(event, event + rng.randint(1, 2)):
            means[i] = level - rng.uniform(8.0, 12.0)
        return means, event
    if pattern == "dropout_after_decline":
        # the course ends one or two sessions into a fall: the client leaves before it can be confirmed
        event = n - rng.randint(1, 2)
        fall = rng.uniform(6.0, 10.0)
        for i in range(event, n):
            means[i] = level - fall * (1 if i == n - 1 else 0.6)
        return means, event
    return means, None


def realistic_course(
    pattern: str, therapist: float, rng: random.Random, noise: float = 1.0, n: int | None = None
) -> Course:
    """A seeded course of one dyad; ``noise`` scales the session-to-session spread (1.0 = 1–2 points)."""
    n = n or course_length(pattern, rng)
    level = min(41.0, rng.gauss(LEVEL_MEAN, LEVEL_SD) + therapist)
    within = rng.uniform(*WITHIN_SD) * noise
    means, event = _shape(pattern, level, n, rng)
    scores: list[float | None] = []
    for i, mean in enumerate(means):
        # the event and the sessions around it are always rated, so every planted shape stays visible
        near_event = event is not None and event - 1 <= i <= event + 2
        if not near_event and i > 0 and rng.random() < UNRATED_CHANCE:
            scores.append(None)
            continue
        scores.append(round(min(40.0, max(0.0, rng.gauss(mean, within))), 1))
    return Course(scores, _gaps(n, rng), event, level, within)


def course_ticks(scale: Scale, scores: list[float | None]) -> list[int | None]:
    """SRS points onto the instrument's ticks (WAI-SR 12–60 keeps the same relative position)."""
    return [None if s is None else scale.clamp(scale.lo + s * scale.unit) for s in scores]
