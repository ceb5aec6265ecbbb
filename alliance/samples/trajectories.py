"""Alliance and outcome trajectories on an instrument's scale, in integer ticks: the planted shapes."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from alliance.instruments import Instrument

Value = float | int | str


@dataclass(frozen=True)
class Scale:
    """An instrument's totals in integer ticks (0.1 for 0–10 lines, 1 for Likert items)."""

    inst: Instrument
    tick: int

    @classmethod
    def of(cls, inst: Instrument) -> Scale:
        return cls(inst, 1 if inst.item_max <= 7 else 10)

    @property
    def lo(self) -> int:
        return round(self.inst.total_min * self.tick)

    @property
    def hi(self) -> int:
        return round(self.inst.total_max * self.tick)

    @property
    def unit(self) -> float:
        """One SRS point expressed on this scale, so every shape reads in SRS terms."""
        return (self.hi - self.lo) / 40

    def value(self, ticks: int) -> Value:
        return ticks if self.tick == 1 else ticks / self.tick

    def clamp(self, ticks: float, lo: float | None = None, hi: float | None = None) -> int:
        low = self.lo if lo is None else max(self.lo, math.ceil(lo))
        high = self.hi if hi is None else min(self.hi, math.floor(hi))
        return min(high, max(low, round(ticks)))


def steady(scale: Scale, base: float, n: int, rng: random.Random) -> list[int]:
    """Ceiling-region scores: 36–40 on SRS, noise sd of about one point."""
    floor = scale.hi - 4 * scale.unit
    return [scale.clamp(rng.gauss(base, 0.8 * scale.unit), lo=floor) for _ in range(n)]


def ceiling_base(scale: Scale, rng: random.Random) -> float:
    return scale.hi - scale.unit * rng.uniform(1.2, 3.6)


def _sudden_loss(scale: Scale, n: int, rng: random.Random) -> tuple[list[int], int]:
    event = rng.randint(3, n - 4)
    totals = steady(scale, ceiling_base(scale, rng), event, rng)
    previous = totals[-1]
    level = scale.clamp(previous * (1 - rng.uniform(0.33, 0.45)))
    # the loss persists: later sessions hover at the new level, never back within 25% of the old score
    ceiling = min(level + 1.5 * scale.unit, previous * 0.7)
    totals.append(level)
    totals += [scale.clamp(rng.gauss(level, 0.6 * scale.unit), hi=ceiling) for _ in range(n - event - 1)]
    return totals, event


def _slow_decline(scale: Scale, n: int, rng: random.Random) -> tuple[list[int], int]:
    event = rng.randint(3, n - 5)
    totals = steady(scale, scale.hi - scale.unit * rng.uniform(1.0, 2.5), event, rng)
    steps = rng.randint(5, 9)
    for i in range(event, n):
        if i - event < steps:
            # about one SRS point a session: a slide that no single session-to-session drop reveals
            totals.append(scale.clamp(totals[-1] - scale.unit * rng.uniform(0.7, 1.3)))
        else:
            totals.append(scale.clamp(rng.gauss(totals[-1], 0.2 * scale.unit), hi=totals[-1] + scale.unit))
    return totals, event


def _single_low(scale: Scale, n: int, rng: random.Random) -> tuple[list[int], int]:
    event = rng.randint(3, n - 3)
    base = ceiling_base(scale, rng)
    totals = steady(scale, base, n, rng)
    below_34 = math.ceil(scale.hi - 6 * scale.unit) - 1
    # deep enough to cross the cutoff, shallow enough (< 8 points) not to read as a rupture
    low = rng.uniform(base - 7.5 * scale.unit, base - 3 * scale.unit)
    totals[event] = min(scale.clamp(low), below_34)
    return totals, event


def _rupture_repair(scale: Scale, n: int, rng: random.Random) -> tuple[list[int], int]:
    length = rng.randint(1, max(1, min(3, n // 5)))
    event = rng.randint(3, n - length - 2)
    base = ceiling_base(scale, rng)
    totals = steady(scale, base, n, rng)
    for i in range(event, event + length):
        totals[i] = scale.clamp(base - scale.unit * rng.uniform(10, 14))
    # the dip must stay at least 8 points below the dyad's own mean, which the dip itself lowers
    for _ in range(50):
        mean = sum(totals) / n
        shallow = [i for i in range(event, event + length) if mean - totals[i] < 8.5 * scale.unit]
        if not shallow:
            break
        for i in shallow:
            totals[i] = scale.clamp(math.floor(mean - 8.5 * scale.unit))
    return totals, event


def _stable(scale: Scale, n: int, rng: random.Random) -> tuple[list[int], int | None]:
    return steady(scale, ceiling_base(scale, rng), n, rng), None


SHAPES: dict[str, Callable[[Scale, int, random.Random], tuple[list[int], int | None]]] = {
    "stable": _stable,
    "sudden_loss": _sudden_loss,
    "slow_decline": _slow_decline,
    "single_low": _single_low,
    "rupture_repair": _rupture_repair,
}


def outcome_walk(scale: Scale, n: int, rng: random.Random) -> list[int]:
    """ORS totals drifting upward from a clinical start, kept in 10–35."""
    lo, hi = 10 * scale.unit, 35 * scale.unit
    level = scale.unit * rng.uniform(12, 24)
    walk = []
    for _ in range(n):
        level = min(hi, max(lo, level + scale.unit * rng.gauss(0.5, 1.2)))
        walk.append(scale.clamp(level))
    return walk


def split_total(scale: Scale, total: int, rng: random.Random, count: int | None = None) -> list[int]:
    """Item ticks within the item range that sum exactly to the total (over `count` items if given)."""
    n = count or len(scale.inst.items)
    item_lo = round(scale.inst.item_min * scale.tick)
    item_hi = round(scale.inst.item_max * scale.tick)
    items = [total // n] * n
    start = rng.randrange(n)
    for k in range(total % n):
        items[(start + k) % n] += 1
    jitter = max(1, scale.tick // 2)
    for _ in range(n // 2):
        give = rng.randrange(n)
        take = (give + 1 + rng.randrange(n - 1)) % n
        amount = min(rng.randint(1, jitter), items[give] - item_lo, item_hi - items[take])
        if amount > 0:
            items[give] -= amount
            items[take] += amount
    return items


def rating(scale: Scale, total: int, rng: random.Random) -> list[Value]:
    """Items then total, in the instrument's own units."""
    return [scale.value(t) for t in [*split_total(scale, total, rng), total]]
