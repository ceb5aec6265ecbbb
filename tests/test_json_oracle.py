"""The JSON reader's records and duplicate-key check equal the first, plain implementation
(tests/reference/json_records.py): on a generated vendor export and on random documents, errors included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from alliance.readers.json import _unique_keys, json_records
from tests.reference import json_records as reference

KEYS = st.sampled_from(["a", "b", "a.b", "sessions", "srs", "x", "date", "b.c"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e30, 1e-7, 2.5e-5, -0.0, 9.2, 37.3]),
    st.text(max_size=6),
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=30,
)
PATHS = st.sampled_from([None, "", "sessions", "a.sessions", "sessions.srs", "b"])


def outcome(read: Any, document: Any, path: str | None) -> Any:
    """The records, or the kind and message of the error (the readers turn both into their rejection)."""
    try:
        return read(document, path)
    except ValueError as exc:
        return type(exc).__name__, str(exc)


@hypothesis_settings(max_examples=400, deadline=None)
@given(DOCUMENTS, PATHS)
def test_random_documents_give_the_same_records_and_errors(document: Any, path: str | None) -> None:
    assert outcome(json_records, document, path) == outcome(reference.json_records, document, path)


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(KEYS, SCALARS), max_size=6))
def test_duplicate_keys_are_found_as_before(pairs: list[tuple[str, Any]]) -> None:
    def build(hook: Any) -> Any:
        try:
            return hook(list(pairs))
        except ValueError as exc:
            return type(exc).__name__, exc.args

    assert build(_unique_keys) == build(reference.unique_keys)


def test_a_vendor_export_gives_the_same_records(tmp_path: Path) -> None:
    """A nested export as the generator writes them: clients with sessions with instrument objects."""
    clients = [
        {
            "client_ref": f"L-{c}",
            "name": "Chloé Sánchez",
            "therapist": f"t{c % 3}",
            "sessions": [
                {"date": f"2024-0{1 + s % 9}-1{s}", "number": s, "srs": {"relationship": 9.2, "total": 37.3 - s},
                 "ors": None, "note": "", "flagged": s % 2 == 0, "weight": 1e-7 * s}
                for s in range(1, 8)
            ],
        }
        for c in range(40)
    ]  # fmt: skip
    text = json.dumps({"export": {"clinic": "Lakeview", "generated": "2026-12-07"}, "clients": clients})
    document = json.loads(text, object_pairs_hook=_unique_keys)
    rows = json_records(document, "clients.sessions")
    assert len(rows) == 280 and rows[0]["clients.sessions.srs.total"] == "36.3"
    assert rows[1]["clients.sessions.weight"] == "0.0000002" and rows[0]["clients.sessions.flagged"] == "False"
    assert rows == reference.json_records(json.loads(text, object_pairs_hook=reference.unique_keys), "clients.sessions")
