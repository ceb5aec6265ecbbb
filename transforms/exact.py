"""Means and standard deviations of scores, exact and correctly rounded, without ``statistics``' Fractions.

``statistics.mean`` and ``statistics.stdev`` round the exact rational result once, so any exact method gives the
same float; these do it in integers (every float is an integer over a power of two), and give the mean and SD of
every prefix of a course in one pass instead of one pass per prefix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

_SQRT_BITS = 2 * 53 + 3  # enough bits to round a square root to odd, then to nearest (as ``statistics`` does)


def _scaled(values: Sequence[float]) -> tuple[list[int], int]:
    """Integers a_i and one denominator D (a power of two) with values[i] == a_i / D exactly."""
    ratios = [float(v).as_integer_ratio() for v in values]
    denominator = max((d for _, d in ratios), default=1)
    return [n * (denominator // d) for n, d in ratios], denominator


def _sqrt_of_fraction(n: int, m: int) -> float:
    """√(n/m) correctly rounded: an integer square root rounded to odd at 109 bits, then one float rounding."""
    q = (n.bit_length() - m.bit_length() - _SQRT_BITS) // 2
    if q >= 0:
        num, den = n, m << 2 * q
    else:
        num, den = n << -2 * q, m
    root = math.isqrt(num // den)
    root |= root * root * den != num
    return root << q if q >= 0 else root / (1 << -q)


def _variance(k: int, total: int, squares: int, denominator: int) -> tuple[int, int]:
    # sample variance of k values with sums total/D and squares/D²: (k·Σa² − (Σa)²) / (k(k−1)D²), exactly
    return k * squares - total * total, k * (k - 1) * denominator * denominator


def _sd(k: int, total: int, squares: int, denominator: int) -> float:
    n, m = _variance(k, total, squares, denominator)
    g = math.gcd(n, m)
    return float(_sqrt_of_fraction(n // g, m // g))


def mean(values: Sequence[float]) -> float:
    """The mean, equal to ``statistics.mean`` on floats."""
    if not values:
        raise ValueError("mean of no values")
    scaled, denominator = _scaled(values)
    return sum(scaled) / (len(scaled) * denominator)  # int / int rounds once, correctly


def stdev(values: Sequence[float]) -> float:
    """The sample standard deviation, equal to ``statistics.stdev`` on floats."""
    if len(values) < 2:
        raise ValueError("stdev needs at least two values")
    scaled, denominator = _scaled(values)
    return _sd(len(scaled), sum(scaled), sum(a * a for a in scaled), denominator)


def variance(values: Sequence[float]) -> float:
    """The sample variance, equal to ``statistics.variance`` on floats."""
    if len(values) < 2:
        raise ValueError("variance needs at least two values")
    scaled, denominator = _scaled(values)
    n, m = _variance(len(scaled), sum(scaled), sum(a * a for a in scaled), denominator)
    return n / m  # int / int rounds once, correctly


def prefix_moments(values: Sequence[float]) -> list[tuple[float | None, float | None]]:
    """For each i, the mean and sample SD of values[:i] (None where there are too few values)."""
    scaled, denominator = _scaled(values)
    out: list[tuple[float | None, float | None]] = []
    total = squares = 0
    for k, a in enumerate(scaled):
        out.append((total / (k * denominator) if k else None, _sd(k, total, squares, denominator) if k >= 2 else None))
        total += a
        squares += a * a
    return out
