"""A JSON document's flat session records as first written (isinstance checks, a Python loop over every pair),
kept unchanged as the oracle of ``alliance.readers.json`` (test_json_oracle.py)."""

from __future__ import annotations

import decimal
import math
from collections.abc import Iterator
from typing import Any

from alliance.readers.json import _Collision, _DuplicateKey


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _flatten(node: dict[str, Any], prefix: str, out: dict[str, str | None], skip: str | None = None) -> None:
    for key, value in node.items():
        if key == skip:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _flatten(value, f"{name}.", out)
        elif isinstance(value, list):
            continue
        elif name in out:
            raise _Collision(name)
        else:
            out[name] = _json_text(value)


def _json_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value) and "e" in repr(value):
        return format(decimal.Decimal(repr(value)), "f")
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
    path = records.split(".") if records else []
    return list(_records(document, path, "", {}))
