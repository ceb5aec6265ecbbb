"""JSON and NDJSON exports: session records found along the profile's records path, nested objects flattened."""

from __future__ import annotations

import decimal
import json
import math
from collections.abc import Iterator, Sequence
from typing import Any

import polars as pl

from alliance.clinics import ExportProfile, normalise_column
from alliance.errors import ExportRejected
from alliance.readers.frames import SOURCE_LINE
from alliance.readers.limits import ReadLimits, too_many_rows
from alliance.redaction import engine_problem, value_kind


class _DuplicateKey(ValueError):
    pass


class _Collision(ValueError):
    """Two fields flatten to one dotted name (its args: the name, made of JSON keys)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: a key given twice in one object is ambiguous, not 'the last one wins'."""
    obj = dict(pairs)  # built in C; a key given twice shows as fewer keys than pairs
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _value in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _flatten(node: dict[str, Any], prefix: str, out: dict[str, str | None], skip: str | None = None) -> None:
    # a session's values are mostly text and numbers: their types are told apart first (a document's slowest part)
    for key, value in node.items():
        if key == skip:
            continue
        name = prefix + key
        kind = type(value)
        if kind is str:
            text: str | None = value
        elif kind is dict:
            _flatten(value, name + ".", out)
            continue
        elif kind is list:
            continue  # lists off the record path are not session fields
        else:
            text = _json_text(value)
        if name in out:
            raise _Collision(name)
        out[name] = text


def _json_text(value: Any) -> str | None:
    """A JSON scalar as text; a number keeps its value in plain digits (1e30 is a whole number, not '1e+30')."""
    if value is None:
        return None
    if type(value) is float:
        text = repr(value)
        return format(decimal.Decimal(text), "f") if "e" in text and math.isfinite(value) else text
    return str(value)


def _records(node: Any, path: list[str], prefix: str, inherited: dict[str, str | None]) -> Iterator[dict]:
    if isinstance(node, list):
        for item in node:
            yield from _records(item, path, prefix, inherited)
        return
    if not isinstance(node, dict):
        raise ValueError(f"expected an object at {prefix.rstrip('.') or 'the top level'}")
    if not path:
        leaf = dict(inherited)
        _flatten(node, prefix, leaf)
        yield leaf
        return
    head = path[0]
    if head not in node:
        raise ValueError(f"no key {prefix}{head!r} on the records path")
    fields = dict(inherited)
    _flatten(node, prefix, fields, skip=head)
    yield from _records(node[head], path[1:], f"{prefix}{head}.", fields)


def json_records(document: Any, records: str | None) -> list[dict[str, str | None]]:
    """Flat session records of a JSON document: nested objects become dotted names, parents carried down."""
    path = records.split(".") if records else []
    return list(_records(document, path, "", {}))


def _frame_of_records(rows: list[dict[str, str | None]], lines: list[int], file_name: str) -> pl.DataFrame:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    names.pop(SOURCE_LINE, None)  # a vendor field of that name is not ours; the line number is
    try:
        # built with the line numbers, so records without any field still count as rows
        return pl.DataFrame(
            {**{name: [row.get(name) for row in rows] for name in names}, SOURCE_LINE: lines},
            schema={**dict.fromkeys(names, pl.String), SOURCE_LINE: pl.Int64},
        )
    except UnicodeEncodeError:
        raise ExportRejected(
            file_name, "contains an escaped character that is not valid Unicode (a lone surrogate such as \\ud800)"
        ) from None


def _key_label(exc: ValueError, known: Sequence[str]) -> str:
    """A JSON key as a message may show it: named when the profile names it, else only its kind.

    JSON keyed by client name is common, so a key the profile does not know is never quoted.
    """
    key = str(exc.args[0]) if exc.args else ""
    return repr(key) if normalise_column(key) in {normalise_column(k) for k in known} else f"({value_kind(key)})"


def _json_problem(exc: ValueError | RecursionError, where: str, path: Sequence[str] = ()) -> str:
    if isinstance(exc, RecursionError):
        return f"{where}JSON nested too deeply"
    if isinstance(exc, _DuplicateKey):
        # JSON keyed by client name is common: the key is described, never quoted
        return f"{where}a JSON object has the key {_key_label(exc, path)} twice: which value to use is ambiguous"
    if isinstance(exc, _Collision):
        return f"{where}two fields flatten to the same name {_key_label(exc, path)} (a key with a dot in it?)"
    return f"{where}unexpected JSON shape: {engine_problem(exc, path)}"


def read_json_text(text: str, profile: ExportProfile, file_name: str, limits: ReadLimits | None = None) -> pl.DataFrame:
    """All-string frame of a JSON document's session records; source_line is the record's ordinal."""
    limits = limits or ReadLimits()
    try:
        document = json.loads(text, object_pairs_hook=_unique_keys)
        rows = json_records(document, profile.records)
    except json.JSONDecodeError as exc:
        raise ExportRejected(file_name, f"not valid JSON at line {exc.lineno}, column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise ExportRejected(file_name, _json_problem(exc, "", _profile_keys(profile))) from None
    if len(rows) > limits.max_rows:
        raise too_many_rows(file_name, len(rows), limits, unit="records")
    return _frame_of_records(rows, list(range(1, len(rows) + 1)), file_name)


def read_ndjson_text(
    text: str, profile: ExportProfile, file_name: str, limits: ReadLimits | None = None
) -> pl.DataFrame:
    """All-string frame of newline-delimited JSON; source_line is the file line of each object."""
    limits = limits or ReadLimits()
    rows: list[dict[str, str | None]] = []
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            found = json_records(json.loads(line, object_pairs_hook=_unique_keys), profile.records)
        except json.JSONDecodeError as exc:
            raise ExportRejected(file_name, f"not valid JSON at line {number}, column {exc.colno}") from None
        except (ValueError, RecursionError) as exc:
            raise ExportRejected(file_name, _json_problem(exc, f"line {number}: ", _profile_keys(profile))) from None
        rows.extend(found)
        lines.extend([number] * len(found))
    if len(rows) > limits.max_rows:
        raise too_many_rows(file_name, len(rows), limits, unit="records")
    return _frame_of_records(rows, lines, file_name)


def _profile_keys(profile: ExportProfile) -> list[str]:
    """Keys named in the profile (records path, mapped columns): configuration, so messages may name them."""
    parts = profile.records.split(".") if profile.records else []
    return [*parts, *(".".join(parts[: i + 1]) for i in range(len(parts))), *profile.columns]
