"""Alert delivery as plain functions: pending case and trend alerts, sent once per change, never dropped."""

from __future__ import annotations

import contextvars
import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import polars as pl

from alliance.alerts import Earlier, case_messages, trend_key, trend_messages
from alliance.clinics import Clinic
from alliance.delivery import AlertMessage, channel_id, send
from alliance.faults import crash_point
from alliance.instruments import registry
from alliance.settings import Settings
from alliance.storage import Reader, Warehouse
from transforms.trends import EPS, complete_weeks, trend_signals

log = logging.getLogger("alliance.alerts")
Secret = Callable[[str], str | None]
Narrow = Callable[[AlertMessage, list[str]], AlertMessage]


@dataclass
class AlertReport:
    """What one delivery round did: messages sent and failed, cases covered, trend signals found."""

    sent: int = 0
    failed: int = 0
    cases_alerted: int = 0
    trend_signals: int = 0
    failures: list[str] = field(default_factory=list)


def alert_key(case: dict[str, object]) -> str:
    """One key per case state worth telling: a case opened (new or back), and each time it gets worse."""
    state = f"{case['case_id']}|{case['change']}|{case['change_session_date']}|{case['severity']}"
    return hashlib.sha256(state.encode()).hexdigest()[:20]


def _link(settings: Settings) -> Callable[[dict], str]:
    def link(case: dict) -> str:
        if settings.dashboard_url:
            return f"{settings.dashboard_url.rstrip('/')}/?clinic={case['clinic_id']}&case={case['case_id']}"
        return f"alliance queue --clinic {case['clinic_id']}"

    return link


def pending_cases(warehouse: Warehouse, clinic_ids: list[str] | None) -> pl.DataFrame:
    """Open and acknowledged cases with their alert key and the close reason of the dyad's previous case."""
    query = """SELECT c.*, p.close_reason AS back_after FROM cases c
        LEFT JOIN cases p ON p.case_id = c.previous_case_id
        WHERE c.status IN ('open', 'acknowledged')"""
    if warehouse.path.exists():  # the writer's own tables: a file's run alerts before it publishes the snapshots
        with warehouse.writer() as writer:
            cases = writer.frame(query)
    else:
        with warehouse.reader() as reader:
            cases = reader.frame(query)
    if clinic_ids is not None:
        cases = cases.filter(pl.col("clinic_id").is_in(clinic_ids))
    keys = [alert_key(row) for row in cases.iter_rows(named=True)]
    return cases.with_columns(pl.Series("alert_key", keys, dtype=pl.String))


def _earlier(warehouse: Warehouse, case_ids: list[str]) -> Earlier:
    """(recipient, case_id) → the day an alert about the case last reached that recipient."""
    with warehouse.writer() as writer:
        return writer.case_alert_dates(case_ids)


Delivered = set[tuple[str, str, str, str | None]]  # (clinic_id, recipient, alert_key, channel) already sent


def _delivered(warehouse: Warehouse, messages: list[AlertMessage]) -> Delivered:
    wanted = pl.DataFrame(
        [(m.clinic_id, m.recipient, key) for m in messages for key in m.keys],
        schema={"clinic_id": pl.String, "recipient": pl.String, "alert_key": pl.String},
        orient="row",
    ).unique()
    with warehouse.writer() as writer:
        return writer.sent_alerts(wanted)


def _per_channel(messages: list[AlertMessage], delivered: Delivered, narrow: Narrow) -> list[AlertMessage]:
    """One message per channel that still lacks some of its keys, holding only those keys."""
    todo_messages: list[AlertMessage] = []
    for message in messages:
        mine = (message.clinic_id, message.recipient)
        for url in message.urls:
            channel = channel_id(url)
            todo = [
                k for k in message.keys if (*mine, k, channel) not in delivered and (*mine, k, None) not in delivered
            ]
            if not todo:
                continue
            one = replace(message, urls=(url,))
            todo_messages.append(one if len(todo) == len(message.keys) else narrow(one, todo))
    return todo_messages


def _deliver(
    messages: list[AlertMessage],
    secret: Secret | None,
    backoff_s: float,
    report: AlertReport,
    case_of: dict[str, str],
    senders: int = 1,
) -> list[dict[str, object]]:
    """Send each message (``senders`` at once: each mostly waits on its channel) and return what to record."""
    outcomes: list[dict[str, object]] = []
    now = datetime.now(UTC)
    with ThreadPoolExecutor(max(1, min(senders, len(messages))), thread_name_prefix="alliance-alert") as pool:
        # each send in a copy of this thread's context: a secret lookup reads Prefect's settings from it
        futures = [
            pool.submit(contextvars.copy_context().run, send, message, secret=secret, backoff_s=backoff_s)
            for message in messages
        ]
        results = [future.result() for future in futures]
    for message, result in zip(messages, results, strict=True):
        errors = [f"{o.url}: {o.error}" for o in result.outcomes if not o.ok]
        ok = not errors
        report.sent += ok
        report.failed += not ok
        report.failures += [f"{message.clinic_id}/{message.recipient}: {e}" for e in errors if e]
        outcomes += [
            {
                "alert_key": key,
                "kind": message.kind,
                "clinic_id": message.clinic_id,
                "recipient": message.recipient,
                "status": "sent" if ok else "failed",
                "attempted_at": now,
                "error": "; ".join(e for e in errors if e) or None,
                "channel": channel_id(url),
                "case_id": case_of.get(key),
            }
            for url in message.urls
            for key in message.keys
        ]
    return outcomes


TREND_CLINICS = 100  # clinics charted at once: all 1,000 of night 1.0 at once held 4.5 GB


def _by_clinic(frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Each clinic's rows, in their order: one pass, not a filter per clinic of a thousand."""
    if frame.is_empty():
        return {}
    return {str(key[0]): part for key, part in frame.partition_by("clinic_id", as_dict=True).items()}


def deliver_alerts(
    settings: Settings,
    clinics: dict[str, Clinic],
    clinic_ids: list[str] | None = None,
    trends: bool = False,
    secret: Secret | None = None,
    backoff_s: float = 1.0,
) -> AlertReport:
    """Send case alerts for cases that are new, worse or back (and trend alerts when ``trends``); record each.

    Sending happens outside the writer lock; outcomes are recorded after. A crash in between may repeat a
    message on the next run, never drop one; a failed channel is retried on the next run.
    """
    report = AlertReport()
    warehouse = Warehouse.of(settings)
    cases = pending_cases(warehouse, clinic_ids)
    earlier = _earlier(warehouse, cases["case_id"].to_list()) if cases.height else {}
    signals = pl.DataFrame()
    messages: list[AlertMessage] = []
    cases_of = _by_clinic(cases)
    for clinic in (clinics[c] for c in sorted(clinics) if clinic_ids is None or c in clinic_ids):
        messages += case_messages(cases_of.get(clinic.id, cases.clear()), clinic, _link(settings), earlier)
    if trends:
        signals = current_trend_signals(warehouse, settings, clinics)
        report.trend_signals = signals.height
        signals_of = _by_clinic(signals)  # none on an empty network: no trend messages
        for clinic in (clinics[c] for c in sorted(clinics) if c in signals_of):
            messages += trend_messages(signals_of[clinic.id], clinic)
    if not messages:
        return report

    def narrow(message: AlertMessage, keys: list[str]) -> AlertMessage:
        """The same message rebuilt from only the cases or signals this channel has not been told."""
        clinic = clinics[message.clinic_id]
        if message.kind == "rupture":
            todo_cases = cases.filter(pl.col("alert_key").is_in(keys))
            rebuilt = case_messages(todo_cases, clinic, _link(settings), earlier)
        else:
            mine = signals.filter(pl.col("clinic_id") == clinic.id)
            todo = [trend_key(row) in keys for row in mine.iter_rows(named=True)]
            rebuilt = trend_messages(mine.filter(pl.Series(todo, dtype=pl.Boolean)), clinic)
        same = next(m for m in rebuilt if m.recipient == message.recipient)
        return replace(same, urls=message.urls)

    fresh = _per_channel(messages, _delivered(warehouse, messages), narrow)
    case_of = dict(zip(cases["alert_key"].to_list(), cases["case_id"].to_list(), strict=True))
    outcomes = _deliver(fresh, secret, backoff_s, report, case_of, settings.alert_senders)
    crash_point("after_alert_sent")
    sent_cases = {o["alert_key"] for o in outcomes if o["status"] == "sent" and o["kind"] == "rupture"}
    report.cases_alerted = len(sent_cases)
    with warehouse.writer() as writer, writer.transaction():
        writer.record_alerts(pl.DataFrame(outcomes))
    if report.failed:
        log.warning("%d alert message(s) failed; they are retried on the next run", report.failed)
    return report


# The weekly series of transforms.trends (weekly_alliance, weekly_flagged_share) aggregated where the sessions
# are: a clinic's five years are 260 weeks to chart, not every session read into Polars (the trend signals of
# 2.9M sessions 1.8 s → 0.7–0.85 s).
# tests/test_delivery.py checks them against the Polars functions.
WEEKLY_SESSIONS = """
    SELECT clinic_id, therapist_id, dyad_id, instrument, date_trunc('week', session_date)::DATE AS week, score,
           coalesce(risk, 0.0) >= $flagged_from AS flagged
    FROM dyad_sessions WHERE list_contains($clinics, clinic_id) AND list_contains($instruments, instrument)"""
BY_LEVEL = """
    SELECT CASE WHEN grouping(therapist_id) = 1 THEN 'clinic' ELSE 'therapist' END AS level,
           clinic_id, therapist_id, instrument, week, {aggregates}
    FROM {rows} GROUP BY GROUPING SETS ((clinic_id, instrument, week), (clinic_id, therapist_id, instrument, week))"""
WEEKLY_ALLIANCE = BY_LEVEL.format(
    aggregates="avg(score) AS mean_score, count(*) AS n_sessions", rows=f"({WEEKLY_SESSIONS})"
)
WEEKLY_FLAGGED_SHARE = BY_LEVEL.format(
    aggregates="count(*) FILTER (flagged) / count(*) AS flagged_share, count(*) AS n_dyads, "
    "count(*) FILTER (flagged) AS n_flagged",
    rows=f"(SELECT clinic_id, therapist_id, instrument, week, dyad_id, bool_or(flagged) AS flagged "
    f"FROM ({WEEKLY_SESSIONS}) GROUP BY ALL)",
)


def current_trend_signals(warehouse: Warehouse, settings: Settings, clinics: dict[str, Clinic]) -> pl.DataFrame:
    """Out-of-control weekly series at the latest complete week: low mean alliance, high flagged share.

    A week counts once it has ended in the clinic's timezone, and signals only with at least
    ``settings.trend_min_sessions`` sessions (dyads, for the flagged share) behind it. Every series is one clinic's,
    so they are charted ``TREND_CLINICS`` clinics at a time: the memory of those clinics' weeks, not the network's.
    """
    ids = sorted(clinics)
    found = []
    with warehouse.reader() as reader:
        for start in range(0, len(ids), TREND_CLINICS):
            chunk = ids[start : start + TREND_CLINICS]
            weekly, share = weekly_series(reader, chunk, settings.queue_min_risk)
            if weekly.height:
                found.append(_trend_signals({c: clinics[c] for c in chunk}, settings, weekly, share))
    return pl.concat(found, how="diagonal_relaxed") if found else pl.DataFrame()


def weekly_series(reader: Reader, clinic_ids: list[str], threshold: float) -> tuple[pl.DataFrame, pl.DataFrame]:
    """These clinics' ``weekly_alliance`` and ``weekly_flagged_share`` (risk from ``threshold``), summed in SQL."""
    alliance = sorted(code for code, spec in registry().items() if spec.construct == "alliance")
    params = {"clinics": clinic_ids, "instruments": alliance, "flagged_from": threshold - EPS}
    return reader.frame(WEEKLY_ALLIANCE, params), reader.frame(WEEKLY_FLAGGED_SHARE, params)


def _trend_signals(
    clinics: dict[str, Clinic], settings: Settings, weekly: pl.DataFrame, share: pl.DataFrame
) -> pl.DataFrame:
    """The signals of these clinics' weekly series (``weekly_alliance`` and ``weekly_flagged_share`` frames)."""
    today = {clinic_id: datetime.now(clinic.tz).date() for clinic_id, clinic in clinics.items()}
    minimum = settings.trend_min_sessions
    low = trend_signals(complete_weeks(weekly, today), "mean_score", "low", count="n_sessions", min_count=minimum)
    high = trend_signals(complete_weeks(share, today), "flagged_share", "high", count="n_dyads", min_count=minimum)
    return pl.concat([low, high], how="diagonal_relaxed")
