"""The session date format, from the values: refused when day and month cannot be told apart."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

CANDIDATES = (
    "%Y-%m-%d", "%d.%m.%Y", "%d.%m.%y", "%m/%d/%Y", "%d/%m/%Y", "%m/%d/%y", "%d/%m/%y",
    "%Y/%m/%d", "%d-%m-%Y", "%m-%d-%Y", "%Y-%m-%d %H:%M:%S",
)  # fmt: skip
# a few planted or mistyped dates must not hide the format every other row is written in
MIN_SHARE = 0.9


@dataclass(frozen=True)
class DateGuess:
    """The format read from the values; ``ambiguous`` holds both readings when day/month cannot be told."""

    format: str | None
    ambiguous: tuple[str, ...] = ()
    share: float = 0.0


def _fits(value: str, fmt: str) -> bool:
    try:
        datetime.strptime(value, fmt)
    except ValueError:
        return False
    return True


def _swapped(fmt: str) -> str:
    return fmt.replace("%d", "\0").replace("%m", "%d").replace("\0", "%m")


def infer_date_format(values: list[str]) -> DateGuess:
    """The one format that reads (nearly) every value, e.g. ['13.01.2026'] -> '%d.%m.%Y'.

    Example: ``infer_date_format(["01/02/2026"]).ambiguous == ("%m/%d/%Y", "%d/%m/%Y")``.
    """
    if not values:
        return DateGuess(None)
    shares = {fmt: sum(_fits(v, fmt) for v in values) / len(values) for fmt in CANDIDATES}
    best = max(shares.values())
    if best < MIN_SHARE:
        return DateGuess(None, share=best)
    winners = [fmt for fmt, share in shares.items() if share == best]
    fmt = winners[0]
    if _swapped(fmt) in winners and _swapped(fmt) != fmt:
        return DateGuess(None, (fmt, _swapped(fmt)), best)
    return DateGuess(fmt, share=best)
