"""Cases: one item per dyad at risk, for people to work on, with the dyad's flags as its evidence.

A case opens when a dyad enters the review queue and closes when it leaves it (its risk fell, or its course
ended); a dyad that comes back later gets a new case, marked "back". While open, a case follows its dyad:
the headline is the most severe ongoing finding, the rules behind it are listed, and it is "worse" when its
severity rises or a rule joins it. Review statuses (open, acknowledged, resolved) are the supervisor's; a
resolved case that gets worse is open again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import polars as pl

from transforms.queue import headline
from transforms.rules import SEVERITIES

CASE_STATUSES = ("open", "acknowledged", "resolved", "closed")
CHANGES = ("new", "worse", "back")
CASE_SCHEMA: dict[str, pl.DataType] = {
    "case_id": pl.String(),
    "dyad_id": pl.String(),
    "clinic_id": pl.String(),
    "therapist_id": pl.String(),
    "client_id": pl.String(),
    "status": pl.String(),
    "severity": pl.String(),
    "risk_score": pl.Float64(),
    "headline_rule": pl.String(),
    "headline_reason": pl.String(),
    "rules": pl.List(pl.String()),
    "flag_ids": pl.List(pl.String()),
    "opened_session_date": pl.Date(),
    "last_session_date": pl.Date(),
    "change": pl.String(),
    "change_session_date": pl.Date(),
    "previous_case_id": pl.String(),
    "close_reason": pl.String(),
    "opened_at": pl.Datetime("us", "UTC"),
    "changed_at": pl.Datetime("us", "UTC"),
    "updated_at": pl.Datetime("us", "UTC"),
    "closed_at": pl.Datetime("us", "UTC"),
}
CHANGE_SCHEMA: dict[str, pl.DataType] = {"case_id": pl.String(), "change": pl.String()}


@dataclass(frozen=True)
class CaseUpdate:
    """The new state of every case that changed, and what happened to each (new, worse, back, closed)."""

    cases: pl.DataFrame
    changes: pl.DataFrame


def case_id(dyad_id: str, opened_session_date: date) -> str:
    """Stable id of the case a dyad opened at a session date.

    Example: ``case_id("d57b470729bd", date(2026, 11, 3))`` → 16 hex digits.
    """
    return hashlib.sha256(f"case|{dyad_id}|{opened_session_date.isoformat()}".encode()).hexdigest()[:16]


def _rank(severity: str | None) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


def _evidence(flags: Sequence[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[str], list[str]]:
    """The headline finding, the confirmed rules and the flag ids behind a case."""
    confirmed = [f for f in flags if f["ongoing"] and not f["provisional"]]
    top = headline(confirmed)
    rules = sorted({f["rule"] for f in confirmed})
    return top, rules, sorted(f["flag_id"] for f in confirmed)


def _open(
    dyad: dict[str, Any], flags: list[dict[str, Any]], earlier: list[dict[str, Any]], now: datetime
) -> dict[str, Any]:
    top, rules, flag_ids = _evidence(flags)
    opened_on = dyad["last_session_date"]
    previous = max(earlier, key=lambda c: c["opened_session_date"]) if earlier else None
    return {
        "case_id": case_id(dyad["dyad_id"], opened_on),
        "dyad_id": dyad["dyad_id"],
        "clinic_id": dyad["clinic_id"],
        "therapist_id": dyad["therapist_id"],
        "client_id": dyad["client_id"],
        "status": "open",
        "severity": top["severity"] if top else "advisory",
        "risk_score": dyad["risk_score"],
        "headline_rule": top["rule"] if top else None,
        "headline_reason": top["reason"] if top else None,
        "rules": rules,
        "flag_ids": flag_ids,
        "opened_session_date": opened_on,
        "last_session_date": dyad["last_session_date"],
        "change": "back" if previous else "new",
        "change_session_date": top["last_session_date"] if top else opened_on,
        "previous_case_id": previous["case_id"] if previous else None,
        "close_reason": None,
        "opened_at": now,
        "changed_at": now,
        "updated_at": now,
        "closed_at": None,
    }


def _follow(
    case: dict[str, Any], dyad: dict[str, Any], flags: list[dict[str, Any]], now: datetime
) -> tuple[dict[str, Any], str | None]:
    """An open case brought up to date with its dyad; the change worth telling, if any."""
    top, rules, flag_ids = _evidence(flags)
    severity = top["severity"] if top else case["severity"]
    joined = set(rules) - set(case["rules"] or [])
    worse = _rank(severity) > _rank(case["severity"]) or bool(joined)
    updated = {
        **case,
        "severity": severity,
        "risk_score": dyad["risk_score"],
        "headline_rule": top["rule"] if top else case["headline_rule"],
        "headline_reason": top["reason"] if top else case["headline_reason"],
        "rules": rules,
        "flag_ids": flag_ids,
        "last_session_date": dyad["last_session_date"],
    }
    if worse:
        cause = [f for f in flags if f["ongoing"] and f["rule"] in joined] or ([top] if top else [])
        dates = [f["last_session_date"] for f in cause if f["last_session_date"] is not None]
        updated |= {
            "change": "worse",
            "change_session_date": max(dates, default=dyad["last_session_date"]),
            "changed_at": now,
            "status": "open" if case["status"] == "resolved" else case["status"],
        }
    changed = any(updated[k] != case[k] for k in updated if k not in ("updated_at",))
    if changed:
        updated["updated_at"] = now
    return updated, ("worse" if worse else ("updated" if changed else None))


def _close(case: dict[str, Any], dyad: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    ended = dyad is None or not dyad["course_open"]
    return {
        **case,
        "status": "closed",
        "close_reason": "course_ended" if ended else "left_queue",
        "closed_at": now,
        "updated_at": now,
    }


def update_cases(previous: pl.DataFrame, dyads: pl.DataFrame, flags: pl.DataFrame, now: datetime) -> CaseUpdate:
    """Open, follow and close the cases of these dyads; returns only the cases that changed.

    ``previous``: the dyads' cases so far (CASE_SCHEMA); ``dyads``: dyad_id, clinic_id, therapist_id,
    client_id, in_queue, course_open, risk_score, last_session_date; ``flags``: the dyads' flags (any status).

    Example: a dyad entering the queue with a sudden loss → one case, status open, change "new",
    headline_rule "sudden_loss".
    """
    # only a dyad in the queue or with a live case can open, follow or close one: the rest are skipped unread
    with_live_case = previous.filter(pl.col("status") != "closed")["dyad_id"]
    relevant = pl.concat([dyads.filter("in_queue")["dyad_id"], with_live_case]).unique().implode()
    dyads = dyads.filter(pl.col("dyad_id").is_in(relevant))
    previous = previous.filter(pl.col("dyad_id").is_in(relevant))
    flags = flags.filter(pl.col("dyad_id").is_in(relevant))
    return decide_cases(previous, dyads, flags, now)


def decide_cases(previous: pl.DataFrame, dyads: pl.DataFrame, flags: pl.DataFrame, now: datetime) -> CaseUpdate:
    """``update_cases`` over every dyad given, one by one, without skipping any (the tests' oracle)."""
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
