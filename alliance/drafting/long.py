"""Telling a long (tidy) export from a wide one: which columns name the measure and the item, which holds the score."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from alliance.instruments import registry
from alliance.vocabulary import column_key, is_key, item_of, split_instrument

MEASURE_COLUMNS = ("measure", "instrument", "scale", "questionnaire", "form", "fragebogen", "messinstrument", "skala")
ITEM_COLUMNS = ("item", "question", "frage", "item label", "item name")
SCORE_COLUMNS = ("score", "value", "wert", "rating", "punkte", "punktwert", "total", "summe", "result", "ergebnis")
NUMBER = re.compile(r"^[+-]?[0-9]+(?:[.,][0-9]+)?$")
LABEL_SHARE = 0.9  # a column is a label column when this share of its values are labels we know


@dataclass(frozen=True)
class LongRoles:
    """The long layout's columns, the instruments its labels name, and how many labels were not recognised."""

    measure: str | None
    item: str | None
    score: str
    instruments: list[str]
    unknown_labels: int  # distinct measure or item labels not recognised: counted, never printed


def _instrument(label: str) -> str | None:
    code, rest = split_instrument(column_key(label))
    return code if code and not rest else None


def _item(label: str) -> bool:
    _code, rest = split_instrument(column_key(label))
    return any(item_of(rest, inst) is not None for inst in registry().values())


def _item_word(label: str) -> bool:
    """An item label in words ('Goals & Topics', 'Q7'): a bare number is a score, unless the column's name says."""
    return not NUMBER.match(label.strip()) and _item(label)


def _share(values: list[str], known: Callable[[str], object]) -> float:
    return sum(1 for v in values if known(v)) / len(values) if values else 0.0


def _numeric(values: list[str]) -> bool:
    return bool(values) and all(v.replace(",", ".").replace(".", "", 1).lstrip("+-").isdigit() for v in values)


def long_roles(header: list[str], values: dict[str, list[str]]) -> LongRoles | None:
    """The measure, item and score columns of a long export; None for a wide one.

    A measure column is named like one ('Measure', 'Instrument', 'Fragebogen') or holds instrument names
    ('SRS', 'WAI-SR'); an item column is named 'Item' ('Frage') or holds item labels ('Goals & Topics',
    'Ziele und Themen'); the score is the column named 'Score' ('Wert', 'Punkte'), else the numeric one left.
    """
    candidates = [n for n in header if n.strip() and not is_key(n)]
    measure = next((n for n in candidates if column_key(n) in MEASURE_COLUMNS), None) or next(
        (
            n
            for n in candidates
            if not _numeric(values.get(n, [])) and _share(values.get(n, []), _instrument) >= LABEL_SHARE
        ),
        None,
    )
    item = next((n for n in candidates if column_key(n) in ITEM_COLUMNS and n != measure), None) or next(
        (n for n in candidates if n != measure and _share(values.get(n, []), _item_word) >= LABEL_SHARE),
        None,
    )
    if measure is None and item is None:
        return None
    rest = [n for n in candidates if n not in (measure, item)]
    score = next((n for n in rest if column_key(n) in SCORE_COLUMNS), None) or next(
        (n for n in rest if _numeric(values.get(n, []))), None
    )
    if score is None:
        return None
    measures = set(values.get(measure, [])) if measure else set()
    items = set(values.get(item, [])) if item else set()
    named = {code for code in map(_instrument, measures) if code}
    instruments = [code for code in registry() if code in named]
    unknown = sum(1 for m in measures if _instrument(m) is None) + sum(1 for i in items if not _item(i))
    return LongRoles(measure, item, score, instruments, unknown)
