"""The instrument registry, read from instruments.toml: items, ranges, scoring and subscales."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

from alliance.errors import ConfigError

REGISTRY_FILE = Path(__file__).with_name("instruments.toml")


@dataclass(frozen=True)
class Instrument:
    """One rating instrument, e.g. SRS: 4 items of 0–10 summed to 0–40."""

    code: str
    name: str
    construct: Literal["alliance", "outcome"]
    items: tuple[str, ...]
    item_min: float
    item_max: float
    score: Literal["sum", "mean"] = "sum"
    decimals: int = 2
    reverse: tuple[str, ...] = ()
    subscales: dict[str, tuple[str, ...]] = field(default_factory=dict)
    cutoff: float | None = None
    low_item: float | None = None
    source: str = ""

    @property
    def total_min(self) -> float:
        return self.item_min * len(self.items) if self.score == "sum" else self.item_min

    @property
    def total_max(self) -> float:
        return self.item_max * len(self.items) if self.score == "sum" else self.item_max

    @property
    def srs_point(self) -> float:
        """One SRS point (of a 0–40 range) on this instrument's total scale, for rescaling thresholds."""
        return (self.total_max - self.total_min) / 40

    @property
    def prefix(self) -> str:
        return self.code.lower()

    def item_field(self, item: str) -> str:
        """Canonical column of one item, e.g. ``srs_goals``."""
        return f"{self.prefix}_{item}"

    @property
    def item_fields(self) -> list[str]:
        return [self.item_field(i) for i in self.items]

    @property
    def total_field(self) -> str:
        return f"{self.prefix}_total"


@cache
def registry() -> dict[str, Instrument]:
    """All instruments by code, e.g. ``registry()["SRS"].total_max == 40``."""
    raw = tomllib.loads(REGISTRY_FILE.read_text(encoding="utf-8"))
    out: dict[str, Instrument] = {}
    for code, spec in raw.items():
        try:
            out[code] = Instrument(
                code=code,
                name=spec["name"],
                construct=spec["construct"],
                items=tuple(spec["items"]),
                item_min=float(spec["item_min"]),
                item_max=float(spec["item_max"]),
                score=spec.get("score", "sum"),
                decimals=int(spec.get("decimals", 2)),
                reverse=tuple(spec.get("reverse", ())),
                subscales={k: tuple(v) for k, v in spec.get("subscales", {}).items()},
                cutoff=spec.get("cutoff"),
                low_item=spec.get("low_item"),
                source=spec.get("source", ""),
            )
        except KeyError as missing:
            raise ConfigError(f"{REGISTRY_FILE.name}: instrument {code} lacks key {missing}") from None
    return out


def instrument(code: str) -> Instrument:
    """One instrument by code (case-insensitive)."""
    found = registry().get(code.upper())
    if found is None:
        raise ConfigError(f"unknown instrument {code!r}; known: {', '.join(registry())}")
    return found
