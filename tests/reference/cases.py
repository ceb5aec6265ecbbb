"""Cases updated by reading every dyad, flag and case of the scope, as first written, kept as the oracle of
transforms.cases.update_cases (which skips the dyads that can neither hold nor get a case; test_cases.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import polars as pl

from transforms.cases import CASE_SCHEMA, CHANGE_SCHEMA, CaseUpdate, _close, _follow, _open


def update_cases(previous: pl.DataFrame, dyads: pl.DataFrame, flags: pl.DataFrame, now: datetime) -> CaseUpdate:
    by_dyad: dict[str, list[dict[str, Any]]] = {}
    for row in flags.iter_rows(named=True):
        by_dyad.setdefault(row["dyad_id"], []).append(row)
    cases_of: dict[str, list[dict[str, Any]]] = {}
    for row in previous.iter_rows(named=True):
        cases_of.setdefault(row["dyad_id"], []).append(row)
    dyad_rows = {row["dyad_id"]: row for row in dyads.iter_rows(named=True)}
    out: list[dict[str, Any]] = []
    changes: list[tuple[str, str]] = []
    for dyad_id in sorted(set(dyad_rows) | set(cases_of)):
        dyad = dyad_rows.get(dyad_id)
        history = cases_of.get(dyad_id, [])
        live = next((c for c in history if c["status"] != "closed"), None)
        queued = dyad is not None and dyad["in_queue"]
        if queued and live is None:
            assert dyad is not None
            case = _open(dyad, by_dyad.get(dyad_id, []), history, now)
            out.append(case)
            changes.append((case["case_id"], case["change"]))
        elif queued and live is not None:
            assert dyad is not None
            case, change = _follow(live, dyad, by_dyad.get(dyad_id, []), now)
            if change is not None:
                out.append(case)
            if change == "worse":
                changes.append((case["case_id"], "worse"))
        elif live is not None:
            out.append(_close(live, dyad, now))
            changes.append((live["case_id"], "closed"))
    return CaseUpdate(
        pl.DataFrame(out, schema=CASE_SCHEMA),
        pl.DataFrame(changes, schema=CHANGE_SCHEMA, orient="row"),
    )
