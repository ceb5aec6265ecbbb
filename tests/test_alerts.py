"""Alerts through real receivers: a local SMTP server and a local HTTP webhook, no mocks."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import date
from typing import Any
from urllib.parse import parse_qs

import polars as pl
import pytest

from alliance.alerts import case_messages, trend_key, trend_messages
from alliance.clinics import AlertConfig, Clinic, ExportProfile, Supervisor
from alliance.delivery import AlertMessage, SendResult, redact, resolve_url, send
from alliance.errors import ConfigError
from tests.receivers import PASSWORD, Hook, Mailbox, free_port

CANARIES = ("CANARY-northside-1", "CANARY-northside-2", "CANARY-northside-3", "CANARY-northside-4")


def fast_send(msg: AlertMessage) -> SendResult:
    """Two attempts, a millisecond apart, short timeouts: failures stay fast."""
    return send(msg, attempts=2, backoff_s=0.001, timeout_s=5.0)


# --- frames and clinics ----------------------------------------------------------------------------------------

PROFILE = ExportProfile(
    instruments=["SRS"],
    columns={
        "Client": "client_ref",
        "Therapist": "therapist_id",
        "Date": "session_date",
        "Session": "session_number",
        "SRS": "srs_total",
    },
)


def clinic(supervisors: list[Supervisor], leads: list[str] | None = None, min_severity: str = "medium") -> Clinic:
    alerts = AlertConfig(min_severity=min_severity, supervisors=supervisors, leads=leads or [])  # type: ignore[arg-type]
    return Clinic(id="northside", name="Northside Counseling Center", export=PROFILE, alerts=alerts)


def cases(rows: list[tuple[str, str, str, str, str]], clinic_id: str = "northside") -> pl.DataFrame:
    """Case rows (therapist, dyad, headline rule, severity, headline reason) with columns a caller must never send."""
    return pl.DataFrame(
        {
            "case_id": [f"c{i}" for i in range(len(rows))],
            "clinic_id": [clinic_id] * len(rows),
            "therapist_id": [r[0] for r in rows],
            "dyad_id": [r[1] for r in rows],
            "client_id": [CANARIES[0]] * len(rows),
            "client_ref": [CANARIES[1]] * len(rows),
            "headline_rule": [r[2] for r in rows],
            "severity": [r[3] for r in rows],
            "status": ["open"] * len(rows),
            "headline_reason": [r[4] for r in rows],
            "evidence": [json.dumps({"sessions": [1, 2], "who": CANARIES[2]})] * len(rows),
            "note": [CANARIES[3]] * len(rows),
            "change": ["new"] * len(rows),
            "change_session_date": [date(2026, 3, 2)] * len(rows),
            "alert_key": [f"key-{r[1]}" for r in rows],
        }
    )


CASES = [
    ("t1", "dy-a1", "sudden_loss", "high", "SRS fell from 38.0 to 27.0 at session 6 (2026-03-02): sudden loss"),
    ("t1", "dy-a2", "new_low", "medium", "SRS 33.5 at session 4 (2026-03-02) is the lowest of this client"),
    ("t2", "dy-b1", "rupture", "high", "SRS 29.0 at session 7 (2026-03-03) is 2.4 SD below the dyad's mean 37.1"),
    ("t2", "dy-b2", "low_item", "advisory", "SRS item(s) goals below 9 at session 3 (2026-03-03)"),
    ("t2", "dy-b3", "drop", "low", "SRS fell from 38.0 to 37.0 at session 5 (2026-03-03)"),
]


def mailto(box: Mailbox, to: str = "sup@example.org", auth: str = "") -> str:
    return f"mailto://{auth}127.0.0.1:{box.port}/{to}?from=alerts@example.org"


# --- URLs and secrets ------------------------------------------------------------------------------------------


def test_placeholders_resolve_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_TOKEN", "tok123")
    monkeypatch.setenv("SMTP_PW", "p@ss/w:rd")
    assert resolve_url("json://hooks.example.org/h/${HOOK_TOKEN}") == "json://hooks.example.org/h/tok123"
    # characters that would change the URL's structure are percent-encoded (apprise decodes them)
    assert resolve_url("mailto://u:${SMTP_PW}@mail.example.org") == "mailto://u:p%40ss%2Fw%3Ard@mail.example.org"
    monkeypatch.setenv("LEADS_URL", "json://hooks.example.org/x?a=1")
    assert resolve_url("${LEADS_URL}") == "json://hooks.example.org/x?a=1"  # a whole secret URL is kept as is


def test_placeholders_fall_back_to_the_secret_callback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HOOK_TOKEN", raising=False)
    store = {"HOOK_TOKEN": "from-store"}
    assert resolve_url("json://h.example.org/${HOOK_TOKEN}", store.get) == "json://h.example.org/from-store"
    monkeypatch.setenv("HOOK_TOKEN", "from-env")
    assert resolve_url("json://h.example.org/${HOOK_TOKEN}", store.get) == "json://h.example.org/from-env"


def test_a_missing_variable_is_named_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)

    def failing_store(name: str) -> str:
        raise ValueError(f"no block {name}")

    empty: dict[str, str] = {}
    secrets: list[Callable[[str], str | None] | None] = [None, empty.get, failing_store]
    for secret in secrets:
        with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE") as info:
            resolve_url("json://user@private-host.example.org/p/${NOT_SET_ANYWHERE}", secret)
        assert "private-host" not in str(info.value)


def test_malformed_placeholders_are_refused() -> None:
    with pytest.raises(ConfigError, match="malformed placeholder"):
        resolve_url("json://h.example.org/${lower_case}")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("json://user:pw@hooks.example.org:8443/t/KEY?token=abc", "json://hooks.example.org:8443"),
        ("mailto://alerts:${SMTP_PW}@mail.example.org?to=sup@example.org", "mailto://mail.example.org"),
        ("mailtos://127.0.0.1:2525?from=a@example.org", "mailtos://127.0.0.1:2525"),
        ("tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/987", "tgram://***"),
        ("discord://4174216298/JHMHI8qBe7bk2ZwO5U711o3dV_js", "discord://***"),
        ("${LEADS_WEBHOOK}", "${LEADS_WEBHOOK}"),
        ("not a url with s3cret", "***"),
    ],
)
def test_redact_keeps_scheme_and_host_only(url: str, shown: str) -> None:
    assert redact(url) == shown


# --- sending through real receivers ----------------------------------------------------------------------------


def message(urls: list[str], body: str = "[high] therapist t1 · dyad dy-a1 · rupture: why → how") -> AlertMessage:
    return AlertMessage("rupture", "northside", "Dr Rivera", tuple(urls), "Alliance Watch · test", body, ("k1",))


def test_mail_reaches_a_local_smtp_server(smtp: Mailbox) -> None:
    result = fast_send(message([mailto(smtp)], body="line one\nline two"))
    assert result.ok and result.outcomes[0].attempts == 1
    assert result.outcomes[0].url == f"mailto://127.0.0.1:{smtp.port}"
    received = smtp.messages[0]
    assert received["Subject"] == "Alliance Watch · test"
    assert received["To"] == "sup@example.org"
    assert smtp.text().splitlines() == ["line one", "line two"]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_login_uses_the_password_from_the_environment(
    smtp_auth: Mailbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("AW_SMTP_PASSWORD", PASSWORD)
    result = fast_send(message([mailto(smtp_auth, auth="alerts:${AW_SMTP_PASSWORD}@")]))
    assert result.ok
    assert [p for _, p in smtp_auth.logins] == [PASSWORD]  # '@', '/', ':' survived the trip
    assert PASSWORD not in caplog.text and "CANARY-secret" not in caplog.text
    assert "CANARY-secret" not in repr(result)


def test_json_webhook_receives_title_and_body(hook: Hook) -> None:
    result = fast_send(message([hook.url(path="/alerts/in")]))
    assert result.ok
    (request,) = hook.requests
    assert request["path"] == "/alerts/in"
    payload = json.loads(request["body"])
    assert payload["title"] == "Alliance Watch · test"
    assert payload["message"] == "[high] therapist t1 · dyad dy-a1 · rupture: why → how"
    assert payload["type"] == "info"


def test_form_webhook_receives_title_and_body(hook: Hook) -> None:
    result = fast_send(message([hook.url("form")]))
    assert result.ok
    fields = parse_qs(hook.requests[0]["body"].decode())
    assert fields["title"] == ["Alliance Watch · test"]
    assert "dyad dy-a1" in fields["message"][0]


def test_a_failed_delivery_is_retried(hook: Hook) -> None:
    hook.fail_first = 1
    result = fast_send(message([hook.url()]))
    assert result.ok and result.outcomes[0].attempts == 2
    assert len(hook.requests) == 2


def test_failures_after_retries_never_reveal_secrets(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, hook: Hook
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("AW_SMTP_PASSWORD", PASSWORD)
    monkeypatch.setenv("AW_HOOK_TOKEN", "tok-CANARY-path-0123456789")
    closed = free_port()
    urls = [
        f"json://alerts:${{AW_SMTP_PASSWORD}}@127.0.0.1:{closed}/hook/${{AW_HOOK_TOKEN}}",
        f"mailto://alerts:${{AW_SMTP_PASSWORD}}@127.0.0.1:{closed}?from=a@example.org&to=b@example.org",
        hook.url(path="/h/${AW_HOOK_TOKEN}"),  # this one works: its path token must not reach the logs either
    ]
    result = send(message(urls), attempts=3, backoff_s=0.001, timeout_s=2.0)
    assert [o.ok for o in result.outcomes] == [False, False, True]
    assert [o.attempts for o in result.outcomes] == [3, 3, 1]
    assert all(o.error for o in result.outcomes[:2])
    assert result.outcomes[0].url == f"json://127.0.0.1:{closed}"
    shown = repr(result) + caplog.text + "".join(r.getMessage() for r in caplog.records)
    for secret in (PASSWORD, "CANARY-secret", "CANARY-path", "pa%3Ass"):
        assert secret not in shown
    assert hook.requests[0]["path"] == "/h/tok-CANARY-path-0123456789"  # the receiver did get the real token


def test_a_missing_secret_fails_that_channel_only(monkeypatch: pytest.MonkeyPatch, hook: Hook) -> None:
    monkeypatch.delenv("AW_MISSING", raising=False)
    result = fast_send(message([hook.url(path="/x/${AW_MISSING}"), hook.url()]))
    assert [o.ok for o in result.outcomes] == [False, True]
    assert result.outcomes[0].attempts == 0
    assert "AW_MISSING" in (result.outcomes[0].error or "")
    assert not result.ok


def test_send_logs_only_ids_counts_and_redacted_urls(hook: Hook, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="alliance.alerts")
    fast_send(message([hook.url(path="/secret-path-segment")], body="BODY-MUST-NOT-BE-LOGGED"))
    ours = " ".join(r.getMessage() for r in caplog.records if r.name == "alliance.alerts")
    assert "northside" in ours and "Dr Rivera" in ours
    assert "BODY-MUST-NOT-BE-LOGGED" not in ours and "secret-path-segment" not in ours


# --- rupture messages ------------------------------------------------------------------------------------------


def received_text(smtp: Mailbox, hook: Hook) -> str:
    """Everything both receivers got, raw and decoded."""
    raw = b"".join(smtp.raw) + b"".join(
        r["body"] + r["path"].encode() + str(r["headers"]).encode() for r in hook.requests
    )
    decoded = [str(m["Subject"]) + smtp.text(i) for i, m in enumerate(smtp.messages)]
    decoded += [json.dumps(json.loads(r["body"]), ensure_ascii=False) for r in hook.requests]
    return raw.decode("utf-8", "replace") + "\n".join(decoded)


def test_canaries_in_other_columns_never_reach_a_receiver(smtp: Mailbox, hook: Hook) -> None:
    seen: list[dict[str, Any]] = []

    def link(row: dict[str, Any]) -> str:
        seen.append(row)
        return f"https://watch.example.org/?case={row['case_id']}"

    rivera = Supervisor(name="Dr Rivera", urls=[mailto(smtp), hook.url()])
    messages = case_messages(cases(CASES), clinic([rivera], min_severity="advisory"), link)
    results = [fast_send(m) for m in messages]
    assert all(r.ok for r in results)
    assert len(smtp.messages) == 1 and len(hook.requests) == 1
    everything = received_text(smtp, hook)
    assert "CANARY" not in everything
    assert all(set(row) <= {"case_id", "clinic_id", "therapist_id", "dyad_id", "severity"} for row in seen)
    for therapist, dyad, _rule, severity, reason in CASES:
        line = f"[{severity}] therapist {therapist} · dyad {dyad} · new on 2026-03-02: {reason}"
        assert line in smtp.text() and line in json.loads(hook.requests[0]["body"])["message"]
    assert "https://watch.example.org/?case=c0" in smtp.text()
    assert smtp.messages[0]["Subject"] == "Alliance Watch · Northside Counseling Center: 5 cases need review"


def test_one_line_per_case_says_what_changed_and_what_it_updates() -> None:
    rows = cases(CASES[:3]).with_columns(
        pl.Series("change", ["worse", "back", "back"]),
        pl.Series("back_after", [None, "left_queue", "course_ended"]),
    )
    sup = Supervisor(name="S", urls=["json://s.example.org/h"])
    (msg,) = case_messages(rows, clinic([sup]), earlier={("S", "c0"): "2026-02-23", ("other", "c1"): "2026-02-01"})
    lines = msg.body.splitlines()
    assert len(lines) == 3  # one line per case
    assert "· dyad dy-a1 · worse since 2026-03-02: SRS fell" in lines[0]
    assert "(updates the alert of 2026-02-23) → alliance queue --clinic northside" in lines[0]
    assert "· dyad dy-b1 · back on 2026-03-02: SRS 29.0" in lines[1]  # its course had ended, then resumed
    assert "· dyad dy-a2 · back after repair on 2026-03-02:" in lines[2] and "updates" not in lines[2]


def test_default_link_is_the_queue_command(hook: Hook) -> None:
    (msg,) = case_messages(cases(CASES[:1]), clinic([Supervisor(name="S", urls=[hook.url()])]))
    assert msg.title == "Alliance Watch · Northside Counseling Center: 1 case needs review"
    assert msg.body.endswith("→ alliance queue --clinic northside")
    assert msg.keys == ("key-dy-a1",)


def test_supervisors_get_the_cases_of_their_own_therapists() -> None:
    a = Supervisor(name="A", urls=["json://a.example.org/h"], therapists=["t1"])
    b = Supervisor(name="B", urls=["json://b.example.org/h"], therapists=["t2"])
    everyone = Supervisor(name="Director", urls=["json://d.example.org/h"])
    messages = {m.recipient: m for m in case_messages(cases(CASES), clinic([a, b, everyone]))}
    assert set(messages["A"].keys) == {"key-dy-a1", "key-dy-a2"}
    assert set(messages["B"].keys) == {"key-dy-b1"}  # advisory and low fall under min_severity medium
    assert set(messages["Director"].keys) == set(messages["A"].keys) | set(messages["B"].keys)
    assert "dy-b" not in messages["A"].body and "dy-a" not in messages["B"].body
    assert messages["A"].urls == ("json://a.example.org/h",)
    # worst first
    assert messages["A"].body.splitlines()[0].startswith("[high]")


def test_min_severity_filters_and_nothing_qualifying_means_no_message() -> None:
    sup = Supervisor(name="S", urls=["json://s.example.org/h"])
    quiet = [f for f in CASES if f[3] in ("advisory", "low")]
    assert case_messages(cases(quiet), clinic([sup])) == []
    assert len(case_messages(cases(quiet), clinic([sup], min_severity="low"))[0].keys) == 1
    assert case_messages(cases(CASES).head(0), clinic([sup])) == []
    assert case_messages(cases(CASES), clinic([sup], min_severity="critical")) == []


def test_other_clinics_cases_are_never_sent() -> None:
    sup = Supervisor(name="S", urls=["json://s.example.org/h"])
    assert case_messages(cases(CASES, clinic_id="southside"), clinic([sup])) == []


def test_multiline_reasons_stay_on_one_line() -> None:
    sup = Supervisor(name="S", urls=["json://s.example.org/h"])
    (msg,) = case_messages(cases([("t1", "dy-1", "new_low", "high", "first\nsecond")]), clinic([sup]))
    assert len(msg.body.splitlines()) == 1 and "first second" in msg.body


# --- trend messages --------------------------------------------------------------------------------------------


def signals(rows: list[tuple[str, str | None, str, str, date, float, float, float, float, str]]) -> pl.DataFrame:
    columns = ["level", "therapist_id", "instrument", "metric", "week", "value", "ewma", "lower", "upper", "direction"]
    frame = pl.DataFrame(rows, schema=columns, orient="row")
    return frame.with_columns(pl.lit("northside").alias("clinic_id"))


SIGNALS = [
    ("clinic", None, "SRS", "mean_score", date(2026, 3, 2), 34.1, 35.9, 36.2, 38.8, "low"),
    ("therapist", "t2", "SRS", "flagged_share", date(2026, 3, 2), 0.6, 0.31, 0.02, 0.25, "high"),
]


def test_trend_messages_go_to_leads_only_with_stable_keys(hook: Hook) -> None:
    sup = Supervisor(name="S", urls=["json://supervisor.example.org/h"])
    northside = clinic([sup], leads=[hook.url(path="/leads")])
    (msg,) = trend_messages(signals(SIGNALS), northside)
    assert msg.kind == "trend" and msg.recipient == "leads"
    assert msg.urls == (hook.url(path="/leads"),)
    assert msg.title == "Alliance Watch · Northside Counseling Center: 2 trends out of control"
    lines = msg.body.splitlines()
    assert lines[0] == ("clinic · SRS · mean_score · week of 2026-03-02: 34.10, EWMA 35.90 below the lower limit 36.20")
    assert (
        lines[1] == "therapist t2 · SRS · flagged_share · week of 2026-03-02: 60%, EWMA 31% above the upper limit 25%"
    )
    again = trend_messages(signals(SIGNALS), northside)[0]
    assert again.keys == msg.keys and len(set(msg.keys)) == 2
    later = signals([(*SIGNALS[0][:4], date(2026, 3, 9), *SIGNALS[0][5:])])
    assert trend_messages(later, northside)[0].keys[0] != msg.keys[0]
    assert msg.keys[0] == trend_key(signals(SIGNALS).row(0, named=True))
    assert fast_send(msg).ok
    assert hook.requests[0]["path"] == "/leads"


def test_no_leads_or_no_signals_means_no_trend_message() -> None:
    sup = Supervisor(name="S", urls=["json://supervisor.example.org/h"])
    assert trend_messages(signals(SIGNALS), clinic([sup])) == []
    assert trend_messages(signals(SIGNALS).head(0), clinic([sup], leads=["json://l.example.org/h"])) == []


def test_send_result_reports_every_url() -> None:
    result = SendResult("trend", "northside", "leads", ("k",), ())
    assert not result.ok and result.delivered == 0


def test_hostile_therapist_ids_reach_a_channel_without_escapes_or_mentions(hook: Hook) -> None:
    hostile = [("t1\x1b[2J<!channel>", "dy-1", "low_score", "high", "SRS low\r\n@here <@U024BE7LH> call now")]
    sup = Supervisor(name="S", urls=[hook.url()])
    (msg,) = case_messages(cases(hostile), clinic([sup]))
    assert fast_send(msg).ok
    body = json.loads(hook.requests[0]["body"])["message"]
    assert "\x1b" not in body and "\r" not in body and "<!channel>" not in body
    assert "@here" not in body and "<@U024BE7LH>" not in body
    assert "therapist t1\u2039!channel\u203a · dyad dy-1" in body and "\uff20here \u2039@U024BE7LH\u203a" in body


def test_a_host_placeholder_keeps_its_port(monkeypatch: pytest.MonkeyPatch, hook: Hook) -> None:
    monkeypatch.setenv("LEADS_WEBHOOK_HOST", f"127.0.0.1:{hook.port}")
    template = "json://${LEADS_WEBHOOK_HOST}/alliance"
    assert resolve_url(template) == f"json://127.0.0.1:{hook.port}/alliance"
    message = AlertMessage("trend", "northside", "leads", (template,), "t", "b", ("k",))
    assert send(message, backoff_s=0).ok
    assert [r["path"] for r in hook.requests] == ["/alliance"]


def test_a_host_placeholder_that_is_not_a_host_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADS_WEBHOOK_HOST", "evil.example.org/x?y=@other")
    with pytest.raises(ConfigError, match=r"\$\{LEADS_WEBHOOK_HOST\} stands for the host") as info:
        resolve_url("json://${LEADS_WEBHOOK_HOST}/alliance")
    assert "evil" not in str(info.value)


def test_a_missing_variable_is_named_in_the_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    message = AlertMessage(
        "trend", "northside", "leads", ("json://hooks.example.org/h/${NOT_SET_ANYWHERE}",), "t", "b", ("k",)
    )
    with caplog.at_level(logging.WARNING, logger="alliance.alerts"):
        assert not send(message, backoff_s=0).ok
    assert "NOT_SET_ANYWHERE" in caplog.text
