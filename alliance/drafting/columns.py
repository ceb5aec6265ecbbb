"""Vendor column names (English, German) and their values -> canonical fields, each with how sure it is."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from alliance.instruments import registry
from alliance.vocabulary import KEY_NAMES, column_key, is_key, item_of, split_instrument

NUMBER = re.compile(r"^[+-]?[0-9]+(?:[.,][0-9]+)?$")


@dataclass(frozen=True)
class Match:
    """One vendor column's canonical field, how sure the match is, and why (names and ranges, never values)."""

    field: str
    sure: bool
    why: str


@dataclass(frozen=True)
class Mapping:
    """The columns mapped (vendor name -> Match), the instruments they belong to, and the names left out."""

    mapped: dict[str, Match]
    instruments: list[str]
    left_out: list[str] = field(default_factory=list)


def _range(values: list[str], decimal_comma: bool) -> tuple[float, float] | None:
    """Lowest and highest number of a column, when nearly all its values are numbers."""
    numbers = [float(v.replace(",", ".")) for v in values if NUMBER.match(v) and ("," not in v or decimal_comma)]
    if not numbers or len(numbers) < 0.9 * len(values):
        return None
    return min(numbers), max(numbers)


def _fits(span: tuple[float, float] | None, low: float, high: float) -> bool:
    return span is None or (span[0] >= low and span[1] <= high)


def _describe(span: tuple[float, float] | None) -> str:
    return "no numbers to check" if span is None else f"values {span[0]:g}–{span[1]:g}"


def _rating(name: str, span: tuple[float, float] | None, default: str | None) -> Match | None:
    code, rest = split_instrument(column_key(name))
    insts = registry()
    # labels without an instrument prefix: the instrument the value ranges point to, else the 0–10 scales
    choices = [insts[c] for c in ([code] if code else [default] if default else ["SRS", "ORS"])]
    for inst in choices:
        target = item_of(rest, inst)
        if target is None:
            continue
        total = target == inst.total_field
        low, high = (inst.total_min, inst.total_max) if total else (inst.item_min, inst.item_max)
        fits = _fits(span, low, high)
        scale = f"{'total' if total else 'item'} {low:g}–{high:g}"
        why = f'name "{name}", {_describe(span)}' + ("" if fits else f", outside the {inst.code} {scale}")
        return Match(target, bool(code) and fits and span is not None, why)
    return None


def _instrument_by_range(spans: list[tuple[float, float]]) -> str | None:
    """With unprefixed labels: 1–5 items are WAI-SR, 1–7 ARM-5, else the 0–10 scales (SRS)."""
    if not spans:
        return None
    low, high = min(s[0] for s in spans), max(s[1] for s in spans)
    if low >= 1 and high <= 5:
        return "WAI_SR"
    if low >= 1 and high <= 7:
        return "ARM5"
    return None


def map_columns(header: list[str], values: dict[str, list[str]], decimal_comma: bool) -> Mapping:
    """Each vendor column's canonical field, e.g. 'Sitzung' -> session_number (sure: name and whole numbers)."""
    mapped: dict[str, Match] = {}
    left_out: list[str] = []
    spans = {name: _range(values.get(name, []), decimal_comma) for name in header}
    item_spans = [s for n, s in spans.items() if s is not None and s[1] <= 10 and not is_key(n)]
    default = _instrument_by_range(item_spans)
    for name in header:
        if not name.strip():
            continue
        key = column_key(name)
        match = _key_field(name, key, spans[name])
        match = match or _rating(name, spans[name], default)
        if match is None or any(m.field == match.field for m in mapped.values()):
            left_out.append(name)
        else:
            mapped[name] = match
    fields = {m.field for m in mapped.values()}
    instruments = [code for code, inst in registry().items() if fields & {*inst.item_fields, inst.total_field}]
    return Mapping(mapped, instruments, left_out)


def _key_field(name: str, key: str, span: tuple[float, float] | None) -> Match | None:
    if "name" in key.split():
        return None  # a client's or therapist's name: never loaded
    for target, names in KEY_NAMES.items():
        if key in names:
            if target == "session_number":
                whole = span is not None and span[0] >= 0 and span[0] == int(span[0]) and span[1] == int(span[1])
                return Match(target, whole, f'name "{name}"' + (", whole numbers" if whole else ""))
            return Match(target, True, f'name "{name}"')
    return None
