"""Alerts: case messages to supervisors and trend messages to clinic leads, allow-listed and sent via apprise.

A case alert carries clinic, therapist, dyad code, what changed, the case's one-line headline and a link or
command: never a client reference, a name, a note or any other column of the frames it is built from.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import polars as pl

from alliance.clinics import Clinic, Supervisor
from alliance.delivery import AlertMessage
from alliance.errors import AllianceError
from alliance.redaction import plain_text
from transforms.rules import SEVERITIES

log = logging.getLogger("alliance.alerts")

Link = Callable[[dict[str, Any]], str]
Earlier = Mapping[tuple[str, str], str]  # (recipient, case_id) -> date of the last alert about that case

MAX_REASON = 240

# The only case columns an alert may use; everything else in the frame is dropped on entry.
CASE_FIELDS = (
    "case_id", "clinic_id", "therapist_id", "dyad_id", "severity", "headline_rule", "headline_reason", "change",
    "change_session_date", "back_after",
)  # fmt: skip
REQUIRED_CASE_FIELDS = ("case_id", "clinic_id", "therapist_id", "dyad_id", "severity", "headline_reason", "change",
                        "alert_key")  # fmt: skip
LINK_FIELDS = ("case_id", "clinic_id", "therapist_id", "dyad_id", "severity")
TREND_KEY_FIELDS = ("level", "clinic_id", "therapist_id", "instrument", "metric", "week")
TREND_FIELDS = (*TREND_KEY_FIELDS, "value", "ewma", "lower", "upper", "direction")


# --- composing -------------------------------------------------------------------------------------------------


def _one_line(text: object, limit: int = MAX_REASON) -> str:
    return plain_text(str(text), limit)


def _rank(severity: str) -> int:
    if severity not in SEVERITIES:
        raise AllianceError(f"flag severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    return SEVERITIES.index(severity)


def queue_command(clinic_id: str) -> Link:
    """The default link: the CLI command that lists the clinic's open cases.

    Example: ``queue_command("northside")({}) == "alliance queue --clinic northside"``.
    """
    return lambda _row: f"alliance queue --clinic {clinic_id}"


def _qualifying(cases: pl.DataFrame, clinic: Clinic) -> list[dict[str, Any]]:
    """The clinic's cases at or above its minimum severity, reduced to the allow-listed fields, worst first."""
    missing = [c for c in REQUIRED_CASE_FIELDS if c not in cases.columns]
    if missing:
        raise AllianceError(f"case alerts need column(s) {', '.join(missing)}")
    kept = cases.select([c for c in (*CASE_FIELDS, "alert_key") if c in cases.columns])
    kept = kept.filter(pl.col("clinic_id") == clinic.id).unique("alert_key", keep="first", maintain_order=True)
    floor = _rank(clinic.alerts.min_severity)
    rows = [r for r in kept.iter_rows(named=True) if _rank(r["severity"]) >= floor]
    return sorted(rows, key=lambda r: (-_rank(r["severity"]), r["therapist_id"], r["dyad_id"]))


def _what(row: dict[str, Any]) -> str:
    """What happened to the case, in the words of the alert: new, worse since a date, back after repair."""
    when = row.get("change_session_date")
    on = f" on {when}" if when else ""
    if row["change"] == "worse":
        return f"worse since {when}" if when else "worse"
    if row["change"] == "back":
        return ("back after repair" if row.get("back_after") == "left_queue" else "back") + on
    return "new" + on


def _case_line(row: dict[str, Any], link: Link, earlier: str | None) -> str:
    target = _one_line(link({k: row[k] for k in LINK_FIELDS if k in row}))
    updates = f" (updates the alert of {earlier})" if earlier else ""
    # ids come from clinic files: no control characters or chat mentions reach a channel
    return _one_line(
        f"[{row['severity']}] therapist {row['therapist_id']} · dyad {row['dyad_id']} · {_what(row)}: "
        f"{_one_line(row['headline_reason'])}{updates} → {target}",
        4 * MAX_REASON,
    )


def _case_message(
    clinic: Clinic, supervisor: Supervisor, rows: list[dict[str, Any]], link: Link, earlier: Earlier
) -> AlertMessage:
    n = len(rows)
    title = f"Alliance Watch · {clinic.name}: {n} case{'s' if n != 1 else ''} need{'s' if n == 1 else ''} review"
    return AlertMessage(
        kind="rupture",
        clinic_id=clinic.id,
        recipient=supervisor.name,
        urls=tuple(supervisor.urls),
        title=_one_line(title),
        body="\n".join(_case_line(r, link, earlier.get((supervisor.name, r["case_id"]))) for r in rows),
        keys=tuple(str(r["alert_key"]) for r in rows),
    )


def _covers(supervisor: Supervisor, therapist_id: str) -> bool:
    return not supervisor.therapists or therapist_id in supervisor.therapists


def case_messages(
    cases: pl.DataFrame, clinic: Clinic, link: Link | None = None, earlier: Earlier | None = None
) -> list[AlertMessage]:
    """One message per supervisor, one line per case that is new, worse or back, at or above ``min_severity``.

    ``cases`` has the cases table's columns plus ``alert_key`` (and ``back_after``, the close reason of the
    dyad's previous case); only severity, therapist, dyad, what changed, the headline reason and ``link(row)``
    reach the body, and ``link`` sees only case id, clinic, therapist, dyad and severity. ``earlier`` maps
    (recipient, case_id) to the date of the last alert about that case, which the line says it updates.
    Without ``link`` each line ends with ``alliance queue --clinic <id>``.

    Example: ``case_messages(pending, clinics["northside"])`` → ``[AlertMessage(kind="rupture", …)]``.
    """
    rows = _qualifying(cases, clinic)
    make_link = link or queue_command(clinic.id)
    messages = []
    for supervisor in clinic.alerts.supervisors:
        mine = [r for r in rows if _covers(supervisor, r["therapist_id"])]
        if mine:
            messages.append(_case_message(clinic, supervisor, mine, make_link, earlier or {}))
    orphans = sum(not any(_covers(s, r["therapist_id"]) for s in clinic.alerts.supervisors) for r in rows)
    if orphans:
        log.warning(
            "clinic %s: %d case(s) reach no supervisor (no supervisor lists their therapist)", clinic.id, orphans
        )
    return messages


def trend_key(row: dict[str, Any]) -> str:
    """Stable key of one out-of-control point: the same series, metric and week always give the same key.

    Example: ``trend_key(signal_row)`` → ``"trend:3f9a0c…"`` (16 hex digits).
    """
    week = row["week"].isoformat() if hasattr(row["week"], "isoformat") else str(row["week"])
    parts = [str(row[k] or "") for k in TREND_KEY_FIELDS[:-1]] + [week]
    return "trend:" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _metric_value(metric: str, value: float) -> str:
    return f"{value:.0%}" if metric.endswith("share") else f"{value:.2f}"


def _trend_line(row: dict[str, Any]) -> str:
    where = "clinic" if row["level"] == "clinic" else f"therapist {row['therapist_id']}"
    metric = row["metric"]
    limit, side = (row["lower"], "below the lower") if row["direction"] == "low" else (row["upper"], "above the upper")
    return plain_text(
        f"{where} · {row['instrument']} · {metric} · week of {row['week']}: {_metric_value(metric, row['value'])}, "
        f"EWMA {_metric_value(metric, row['ewma'])} {side} limit {_metric_value(metric, limit)}"
    )


def trend_messages(signals: pl.DataFrame, clinic: Clinic) -> list[AlertMessage]:
    """One message to the clinic's leads listing its out-of-control series (from ``trends.trend_signals``).

    Example: ``trend_messages(signals, clinics["northside"])`` → ``[AlertMessage(kind="trend", recipient="leads")]``.
    """
    missing = [c for c in TREND_FIELDS if c not in signals.columns]
    if missing:
        raise AllianceError(f"trend alerts need signal column(s) {', '.join(missing)}")
    rows = signals.select(TREND_FIELDS).filter(pl.col("clinic_id") == clinic.id)
    if rows.is_empty():
        return []
    if not clinic.alerts.leads:
        log.warning("clinic %s: %d trend signal(s) but no leads URLs configured", clinic.id, rows.height)
        return []
    listed = list(rows.sort(["level", "therapist_id", "instrument", "metric"], nulls_last=False).iter_rows(named=True))
    n = len(listed)
    return [
        AlertMessage(
            kind="trend",
            clinic_id=clinic.id,
            recipient="leads",
            urls=tuple(clinic.alerts.leads),
            title=plain_text(f"Alliance Watch · {clinic.name}: {n} trend{'s' if n != 1 else ''} out of control"),
            body="\n".join(_trend_line(r) for r in listed),
            keys=tuple(trend_key(r) for r in listed),
        )
    ]
