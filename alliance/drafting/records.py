"""JSON and NDJSON exports: where the session records are, and names to match their fields by.

The records path is the list of objects holding the most records (``clients.sessions``); each field is matched by
its name within its own object (``srs.goals``, ``client_ref``), or with its object's name when that says more
(``number`` in ``sessions`` reads as ``session number``). A document keyed by its data (an object whose many keys
all hold objects, e.g. one per client name) has no names to show, and is refused.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from alliance.errors import ExportRejected
from alliance.readers import decode, json_records
from alliance.vocabulary import field_named

MAX_SAMPLE_RECORDS = 5000
KEYED_BY_DATA = 30  # an object with more keys than this, all holding objects or lists, is a map of records


def _record_lists(node: Any, path: tuple[str, ...], found: Counter[tuple[str, ...]], file_name: str) -> None:
    """Count the objects in every list of objects, by the keys leading to it."""
    if isinstance(node, list):
        objects = [item for item in node if isinstance(item, dict)]
        if objects:
            found[path] += len(objects)
        for item in objects[:MAX_SAMPLE_RECORDS]:
            _record_lists(item, path, found, file_name)
    elif isinstance(node, dict):
        nested = {k: v for k, v in node.items() if isinstance(v, (dict, list))}
        if len(node) > KEYED_BY_DATA and len(nested) == len(node):
            raise ExportRejected(
                file_name,
                f"an object with {len(node)} keys that all hold records: the document is keyed by its data "
                "(client names?), which a profile cannot map; export a list of records instead",
            )
        for key, value in nested.items():
            _record_lists(value, (*path, key), found, file_name)


def _label(name: str, records: str | None) -> str:
    """A field's name within its own object, or with its object's name when only that names one of our fields."""
    parts = name.split(".")
    record_parts = records.split(".") if records else []
    depth = next((i for i in range(len(record_parts), -1, -1) if parts[:i] == record_parts[:i]), 0)
    own = " ".join(parts[depth:])
    if field_named(own) or depth == 0:
        return own
    parent = record_parts[depth - 1]
    with_parent = f"{parent.removesuffix('s')} {own}"
    return with_parent if field_named(with_parent) else own


def sniff_records(path: Path, data: bytes) -> tuple[str | None, list[str], dict[str, list[str]], dict[str, str]]:
    """(records path, field names, sample values per field, label per field) of a JSON or NDJSON export."""
    text = decode(data, "auto", path.name)
    ndjson = path.suffix.lower() in (".ndjson", ".jsonl")
    try:
        documents = [json.loads(line) for line in text.splitlines() if line.strip()] if ndjson else [json.loads(text)]
    except json.JSONDecodeError as exc:
        raise ExportRejected(path.name, f"not valid JSON at line {exc.lineno}, column {exc.colno}") from None
    found: Counter[tuple[str, ...]] = Counter()
    for document in documents[:MAX_SAMPLE_RECORDS]:
        _record_lists(document, (), found, path.name)
    if not found and ndjson:
        records = None  # each line is one record
    elif not found:
        raise ExportRejected(path.name, "no list of records in the document")
    else:
        most = max(found.values())
        deepest = max((p for p, n in found.items() if n == most), key=lambda p: len(p))
        records = ".".join(deepest) or None
    rows: list[dict[str, str | None]] = []
    try:
        for document in documents:
            rows += json_records(document, records)
            if len(rows) >= MAX_SAMPLE_RECORDS:
                break
    except (ValueError, RecursionError) as exc:
        raise ExportRejected(path.name, f"records cannot be read along {records!r} ({type(exc).__name__})") from None
    names = list(dict.fromkeys(name for row in rows for name in row))
    values = {name: [str(row[name]).strip() for row in rows if row.get(name) not in (None, "")] for name in names}
    labels: dict[str, str] = {}
    for name in names:
        label = _label(name, records)
        labels[name] = label if label not in labels.values() else name
    return records, names, values, labels
