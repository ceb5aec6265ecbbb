"""Alert delivery on the real pipeline: once per change, failures recorded and retried, nothing private sent."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import duckdb
import pytest

from alliance.clinics import load_clinics
from alliance.delivery import AlertMessage, _scrubbed_logs
from alliance.home import init_home
from alliance.samples import SampleSet, add_profiles, generate_sample
from alliance.settings import Settings, load_settings
from flows.alerting import AlertReport, _deliver, deliver_alerts
from flows.pipeline import ingest_file
from flows.reviews import rescore
from tests.conftest import TEST_KEY
from tests.receivers import Hook, Mailbox, free_port


def configure(settings: Settings, smtp: Mailbox, hook: Hook, lakeview_url: str) -> None:
    with settings.clinics_file.open("a", encoding="utf-8") as handle:
        handle.write(
            f"""
[clinics.northside.alerts]
min_severity = "medium"
leads = ["json://127.0.0.1:{hook.port}/leads"]

[[clinics.northside.alerts.supervisors]]
name = "Dr Lee"
urls = ["mailto://127.0.0.1:{smtp.port}/lee@example.org?from=alerts@example.org"]

[clinics.lakeview.alerts]
[[clinics.lakeview.alerts.supervisors]]
name = "Duty"
urls = ["{lakeview_url}"]
"""
        )


@pytest.fixture
def network(tmp_path: Path, smtp: Mailbox, hook: Hook) -> tuple[Settings, SampleSet]:
    settings = load_settings(tmp_path / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(settings.inbox, clinics=4, weeks=20, seed=4, dyads_per_clinic=25, profile="clean")
    add_profiles(settings.clinics_file, sample.profiles)
    configure(settings, smtp, hook, f"json://127.0.0.1:{hook.port}/lakeview")
    return settings, sample


def ingest_all(settings: Settings, sample: SampleSet) -> None:
    for file in sample.files:
        assert ingest_file(file.path, settings).status == "loaded"


def alerts(settings: Settings) -> list[tuple]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        return con.execute("SELECT kind, clinic_id, recipient, status, error FROM alerts ORDER BY ALL").fetchall()


def test_each_flag_change_is_alerted_once(network: tuple[Settings, SampleSet], smtp: Mailbox, hook: Hook) -> None:
    settings, sample = network
    ingest_all(settings, sample)
    clinics = load_clinics(settings.clinics_file)
    first = deliver_alerts(settings, clinics, backoff_s=0.01)
    assert first.failed == 0 and first.sent == 2  # one batch per supervisor: Dr Lee by mail, Duty by webhook
    assert len(smtp.messages) == 1 and [r["path"] for r in hook.requests] == ["/lakeview"]
    assert re.search(r"\d+ cases? needs? review", str(smtp.messages[0]["Subject"]))
    body = smtp.text(0)
    assert re.search(r"\[(medium|high|critical)\] therapist north-t\d+ · dyad d[0-9a-f]{11} · new on 20\d\d-", body)
    assert "alliance queue --clinic northside" in body
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        (told,) = con.execute(
            """SELECT count(*) FROM cases WHERE clinic_id = 'northside' AND status = 'open'
            AND severity IN ('medium', 'high', 'critical')"""
        ).fetchone() or (0,)
    assert told >= 1 and len(body.strip().splitlines()) == told  # one line per case, not per flag
    again = deliver_alerts(settings, clinics, backoff_s=0.01)
    assert (again.sent, again.failed) == (0, 0)
    assert len(smtp.messages) == 1 and len(hook.requests) == 1
    rescore(settings)  # nothing changed: still nothing to tell
    assert deliver_alerts(settings, clinics, backoff_s=0.01).sent == 0
    recorded = alerts(settings)
    assert {(k, c, r, s) for k, c, r, s, _ in recorded} == {
        ("rupture", "northside", "Dr Lee", "sent"),
        ("rupture", "lakeview", "Duty", "sent"),
    }


def test_failed_channel_is_recorded_and_retried_next_run(
    network: tuple[Settings, SampleSet], smtp: Mailbox, hook: Hook
) -> None:
    settings, sample = network
    closed = free_port()
    text = settings.clinics_file.read_text().replace(
        f"json://127.0.0.1:{hook.port}/lakeview", f"json://127.0.0.1:{closed}/x"
    )
    settings.clinics_file.write_text(text)
    ingest_all(settings, sample)  # the load itself never depends on a channel
    report = deliver_alerts(settings, load_clinics(settings.clinics_file), backoff_s=0.01)
    assert report.failed == 1 and report.sent == 1
    failed = [row for row in alerts(settings) if row[3] == "failed"]
    assert failed and all(row[2] == "Duty" and f"127.0.0.1:{closed}" in (row[4] or "") for row in failed)
    assert all("/x" not in (row[4] or "") for row in failed)  # errors carry redacted URLs only
    settings.clinics_file.write_text(
        text.replace(f"json://127.0.0.1:{closed}/x", f"json://127.0.0.1:{hook.port}/lakeview")
    )
    retry = deliver_alerts(settings, load_clinics(settings.clinics_file), backoff_s=0.01)
    assert (retry.sent, retry.failed) == (1, 0)
    assert [r["path"] for r in hook.requests] == ["/lakeview"]
    assert len(smtp.messages) == 1  # Dr Lee was already told


def test_a_partial_failure_resends_only_to_the_channel_that_failed(
    network: tuple[Settings, SampleSet], smtp: Mailbox, hook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, sample = network
    # Dr Lee gets mail and a webhook; the webhook's host comes from the environment, so the channel stays the same
    text = settings.clinics_file.read_text().replace(
        '/lee@example.org?from=alerts@example.org"]',
        '/lee@example.org?from=alerts@example.org", "json://${LEE_HOOK_HOST}/lee"]',
    )
    settings.clinics_file.write_text(text)
    monkeypatch.setenv("LEE_HOOK_HOST", f"127.0.0.1:{free_port()}")  # nothing listens there yet
    ingest_all(settings, sample)
    clinics = load_clinics(settings.clinics_file)
    first = deliver_alerts(settings, clinics, clinic_ids=["northside"], backoff_s=0.01)
    assert (first.sent, first.failed) == (1, 1)
    assert len(smtp.messages) == 1 and hook.requests == []
    monkeypatch.setenv("LEE_HOOK_HOST", f"127.0.0.1:{hook.port}")
    retry = deliver_alerts(settings, clinics, clinic_ids=["northside"], backoff_s=0.01)
    assert (retry.sent, retry.failed) == (1, 0)
    assert [r["path"] for r in hook.requests] == ["/lee"]
    assert len(smtp.messages) == 1  # the mail that arrived is not sent again
    told = set(re.findall(r"dyad (d[0-9a-f]{11})", json.loads(hook.requests[0]["body"])["message"]))
    assert told == set(re.findall(r"dyad (d[0-9a-f]{11})", smtp.text(0)))  # the same flags, on the late channel
    assert deliver_alerts(settings, clinics, clinic_ids=["northside"], backoff_s=0.01).sent == 0


def test_trend_alerts_reach_leads_once_per_week(network: tuple[Settings, SampleSet], hook: Hook) -> None:
    settings, sample = network
    ingest_all(settings, sample)
    clinics = load_clinics(settings.clinics_file)
    report = deliver_alerts(settings, clinics, trends=True, backoff_s=0.01)
    leads = [r for r in hook.requests if r["path"] == "/leads"]
    northside_signals = [row for row in alerts(settings) if row[0] == "trend"]
    assert northside_signals and report.trend_signals >= len(northside_signals)
    assert len(leads) == 1 and "Alliance Watch" in json.loads(leads[0]["body"])["title"]
    assert {row[2] for row in northside_signals} == {"leads"}
    deliver_alerts(settings, clinics, trends=True, backoff_s=0.01)
    assert [r for r in hook.requests if r["path"] == "/leads"] == leads


def test_no_client_data_in_any_alert_payload_or_log(
    network: tuple[Settings, SampleSet], smtp: Mailbox, hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    settings, sample = network
    caplog.set_level(logging.DEBUG)
    ingest_all(settings, sample)
    deliver_alerts(settings, load_clinics(settings.clinics_file), trends=True, backoff_s=0.01)
    assert smtp.messages and hook.requests
    sent = "\n".join([smtp.text(i) + str(m["Subject"]) for i, m in enumerate(smtp.messages)] + [
        r["body"].decode("utf-8", "replace") + r["path"] for r in hook.requests
    ])  # fmt: skip
    logs = caplog.text
    refs = {d.client_ref for d in sample.dyads}
    for where, text in (("alert payloads", sent), ("logs", logs)):
        leaked = [c for c in sample.canaries if re.search(rf"{re.escape(c)}\b", text)]
        assert not leaked, f"canaries in {where}: {leaked[:3]}"
        assert not [r for r in refs if re.search(rf"\b{re.escape(r)}\b", text)], where
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        client_ids = {r[0] for r in con.execute("SELECT client_id FROM ratings").fetchall()}
    assert not [c for c in client_ids if c in sent]  # not even pseudonyms: the dyad code is enough


def test_two_clinics_alerting_the_same_recipient_name_are_each_told_once(
    network: tuple[Settings, SampleSet], hook: Hook
) -> None:
    """Recipients are names within a clinic ("leads", a supervisor's name): two clinics' messages to "leads" in
    one run are looked up each against its own deliveries, so a re-run repeats neither."""
    settings, sample = network
    text = settings.clinics_file.read_text(encoding="utf-8")
    for clinic in ("lakeview", "rheinpark"):
        header = f"[clinics.{clinic}.alerts]\n"
        line = f'leads = ["json://127.0.0.1:{hook.port}/{clinic}-leads"]\n'
        text = text.replace(header, header + line) if header in text else text + f"\n{header}{line}"
    settings.clinics_file.write_text(text, encoding="utf-8")
    ingest_all(settings, sample)
    clinics = load_clinics(settings.clinics_file)
    deliver_alerts(settings, clinics, trends=True, backoff_s=0.01)
    first = [r["path"] for r in hook.requests if r["path"].endswith("leads")]
    assert len(first) >= 2 and len(set(first)) == len(first)  # several clinics' leads, once each
    deliver_alerts(settings, clinics, trends=True, backoff_s=0.01)
    assert [r["path"] for r in hook.requests if r["path"].endswith("leads")] == first


def test_trend_alerts_of_a_network_without_sessions_are_none(tmp_path: Path, hook: Hook) -> None:
    settings = load_settings(tmp_path / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(tmp_path / "drop", clinics=2, weeks=8, seed=4, dyads_per_clinic=3)
    add_profiles(settings.clinics_file, sample.profiles)
    report = deliver_alerts(settings, load_clinics(settings.clinics_file), trends=True, backoff_s=0.01)
    assert (report.sent, report.failed, report.trend_signals) == (0, 0, 0) and hook.requests == []


def test_trend_signals_charted_a_clinic_at_a_time_are_those_of_one_pass(
    network: tuple[Settings, SampleSet], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every weekly series is one clinic's: charting clinics one at a time (memory that of a clinic) finds the
    signals charting them all at once finds."""
    from polars.testing import assert_frame_equal

    from alliance.storage import Warehouse
    from flows import alerting

    settings, sample = network
    ingest_all(settings, sample)
    clinics = load_clinics(settings.clinics_file)
    signalling = {
        c: clinics[c] for c in alerting.current_trend_signals(Warehouse.of(settings), settings, clinics)["clinic_id"]
    }
    assert len(signalling) >= 2  # so that every chunk, the last one too, has signals to lose
    together = alerting.current_trend_signals(Warehouse.of(settings), settings, signalling)
    monkeypatch.setattr(alerting, "TREND_CLINICS", 1)
    apart = alerting.current_trend_signals(Warehouse.of(settings), settings, signalling)
    assert_frame_equal(apart.sort(apart.columns), together.sort(together.columns))


@pytest.mark.parametrize("profile", ["clean", "realistic"])
def test_trend_signals_from_weeks_summed_in_the_warehouse_are_those_of_the_polars_series(
    tmp_path: Path, profile: str
) -> None:
    """The oracle: transforms.trends' weekly series over every session read into Polars give the same weeks and
    the same signals as the warehouse's weekly sums (means equal to float rounding, counts exactly)."""
    from polars.testing import assert_frame_equal

    from alliance.storage import Warehouse
    from flows import alerting
    from transforms.trends import weekly_alliance, weekly_flagged_share

    settings = load_settings(tmp_path / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(settings.inbox, clinics=3, weeks=30, seed=11, dyads_per_clinic=20, profile=profile)
    add_profiles(settings.clinics_file, sample.profiles)
    ingest_all(settings, sample)
    clinics = load_clinics(settings.clinics_file)
    with Warehouse.of(settings).reader() as reader:
        sessions = reader.frame(
            "SELECT clinic_id, therapist_id, dyad_id, instrument, session_date, score, risk FROM dyad_sessions"
        )
        summed = alerting.weekly_series(reader, sorted(clinics), settings.queue_min_risk)
    expected = weekly_alliance(sessions), weekly_flagged_share(sessions, settings.queue_min_risk)
    for got, want in zip(summed, expected, strict=True):
        assert want.height > 100
        assert_frame_equal(got.sort(got.columns), want.sort(want.columns), check_exact=False, rel_tol=1e-12)
    signals = alerting.current_trend_signals(Warehouse.of(settings), settings, clinics)
    oracle = alerting._trend_signals(clinics, settings, *expected)
    assert_frame_equal(signals.sort(signals.columns), oracle.sort(oracle.columns))


def _messages(hook: Hook, count: int) -> list[AlertMessage]:
    return [
        AlertMessage("rupture", "northside", f"Supervisor {i}", (hook.url(path=f"/m{i}"),), "t", "b", (f"k{i}",))
        for i in range(count)
    ]


@pytest.mark.parametrize("senders", [1, 3])
def test_messages_are_sent_side_by_side_and_recorded_in_order(hook: Hook, senders: int) -> None:
    """Each message waits on its channel (here 0.2 s): ``alert_senders`` of them wait together, no more."""
    hook.delay_s = 0.2
    messages = _messages(hook, 6)
    report = AlertReport()
    outcomes = _deliver(messages, None, 0.001, report, {}, senders)
    assert (report.sent, report.failed) == (6, 0)
    assert [o["recipient"] for o in outcomes] == [m.recipient for m in messages]  # recorded in message order
    assert sorted(r["path"] for r in hook.requests) == sorted(f"/m{i}" for i in range(6))
    assert hook.most_at_once == 1 if senders == 1 else 2 <= hook.most_at_once <= senders


def test_a_send_keeps_its_secrets_hidden_while_others_start_and_end() -> None:
    """Sends run on threads: one filter stays on the third-party loggers, and each send's secrets stay hidden until
    that send ends, whatever the others do (a filter removed while a record walks the list could be skipped)."""
    shown: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            shown.append(record.getMessage())

    # the logger's own handler and level: whatever logging setup an earlier test (Prefect's) left in place
    apprise_log, keep = logging.getLogger("apprise"), Keep()
    level, disabled = apprise_log.level, apprise_log.disabled
    apprise_log.addHandler(keep)
    apprise_log.setLevel(logging.DEBUG)
    apprise_log.disabled = False
    filters = list(apprise_log.filters)
    try:
        with _scrubbed_logs(["tok-CANARY-first-0123456789"]):
            with _scrubbed_logs(["tok-CANARY-second-0123456789", "tok-CANARY-first-0123456789"]):
                assert apprise_log.filters == filters  # a send adds no filter: the one filter knows its secrets
                apprise_log.debug("posting to /h/tok-CANARY-second-0123456789")
            apprise_log.debug("posting to /h/tok-CANARY-first-0123456789")  # the other send ended: still hidden
        apprise_log.debug("after every send: tok-CANARY-first-0123456789")  # nothing is hidden once no send holds it
    finally:
        apprise_log.removeHandler(keep)
        apprise_log.setLevel(level)
        apprise_log.disabled = disabled
    assert shown == ["posting to /h/***", "posting to /h/***", "after every send: tok-CANARY-first-0123456789"]
    assert apprise_log.filters == filters and filters  # installed once, never added or removed per send
