"""The inbox watcher and its event rules, with real files and a real watchdog observer."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from watchdog.observers.polling import PollingObserver

from alliance.errors import ConfigError
from alliance.settings import Settings, load_settings
from flows.events import EXPORT_RECEIVED, export_event, ingest_parameters, is_candidate
from flows.watcher import InboxWatcher, emit_to_prefect

SETTLE = 0.3
POLL = 0.05


@pytest.fixture
def home_settings(tmp_path: Path) -> Settings:
    """A bare home with one clinic folder; the watcher needs nothing else."""
    settings = load_settings(tmp_path / "home")
    (settings.inbox / "northside").mkdir(parents=True)
    return settings


@pytest.fixture
def events() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def watcher(home_settings: Settings, events: list[dict[str, Any]]) -> Iterator[InboxWatcher]:
    # The emit callback is the real boundary: in production it hands the same dict to prefect's emit_event.
    with InboxWatcher(home_settings, emit=events.append, settle_seconds=SETTLE, poll_interval=POLL) as running:
        yield running


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll a condition until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def names(events: list[dict[str, Any]]) -> list[str]:
    return [Path(event["payload"]["path"]).name for event in events]


def write(path: Path, text: str = "client,date,srs\nA1,2025-01-02,36\n") -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def good_event(settings: Settings, path: Path) -> dict[str, Any]:
    return {
        "event": EXPORT_RECEIVED,
        "resource": {"prefect.resource.id": f"alliance.export.northside.{path.name}"},
        "payload": {"path": str(path), "home": str(settings.home), "clinic_id": "northside", "size": 1},
    }


# --- events.py: pure rules ---


def test_ingest_parameters_for_a_good_event(home_settings: Settings) -> None:
    path = write(home_settings.inbox / "northside" / "export.csv")
    assert ingest_parameters(good_event(home_settings, path)) == {
        "path": str(path),
        "home": str(home_settings.home),
        "clinic_id": "northside",
    }


def test_ingest_parameters_rejects_another_event_name(home_settings: Settings) -> None:
    path = write(home_settings.inbox / "northside" / "export.csv")
    assert ingest_parameters({**good_event(home_settings, path), "event": "prefect.flow-run.Completed"}) is None


def test_ingest_parameters_rejects_a_path_outside_the_inbox(home_settings: Settings, tmp_path: Path) -> None:
    outside = write(tmp_path / "elsewhere.csv")
    assert ingest_parameters(good_event(home_settings, outside)) is None
    other_home = load_settings(tmp_path / "other")
    (other_home.inbox / "northside").mkdir(parents=True)
    foreign = write(other_home.inbox / "northside" / "export.csv")
    assert ingest_parameters(good_event(home_settings, foreign)) is None


def test_ingest_parameters_rejects_a_dotdot_escape(home_settings: Settings) -> None:
    write(home_settings.home / "secret.csv")
    escaping = home_settings.inbox / "northside" / ".." / ".." / "secret.csv"
    assert ingest_parameters(good_event(home_settings, escaping)) is None


def test_ingest_parameters_normalises_a_dotdot_that_stays_inside(home_settings: Settings) -> None:
    path = write(home_settings.inbox / "northside" / "export.csv")
    detour = home_settings.inbox / "northside" / ".." / "northside" / "export.csv"
    assert ingest_parameters(good_event(home_settings, detour)) == {
        "path": str(path),
        "home": str(home_settings.home),
        "clinic_id": "northside",
    }


def test_ingest_parameters_rejects_a_clinic_mismatch(home_settings: Settings) -> None:
    path = write(home_settings.inbox / "northside" / "export.csv")
    event = good_event(home_settings, path)
    event["payload"]["clinic_id"] = "southside"
    assert ingest_parameters(event) is None


@pytest.mark.parametrize("name", [".hidden.csv", "export.csv.part", "export.tmp", "export.partial", "export.csv~"])
def test_ingest_parameters_rejects_hidden_and_temporary_names(home_settings: Settings, name: str) -> None:
    path = write(home_settings.inbox / "northside" / name)
    assert ingest_parameters(good_event(home_settings, path)) is None


@pytest.mark.parametrize(
    "change",
    [
        {"payload": None},
        {"payload": "not a mapping"},
        {"payload": {}},
        {"payload": {"path": 42, "home": "/x", "clinic_id": "northside"}},
        {"payload": {"path": "inbox/northside/export.csv", "home": "home", "clinic_id": "northside"}},
    ],
)
def test_ingest_parameters_rejects_missing_or_malformed_payloads(
    home_settings: Settings, change: dict[str, Any]
) -> None:
    path = write(home_settings.inbox / "northside" / "export.csv")
    assert ingest_parameters({**good_event(home_settings, path), **change}) is None


def test_ingest_parameters_rejects_an_event_without_payload() -> None:
    assert ingest_parameters({"event": EXPORT_RECEIVED}) is None
    assert ingest_parameters(SimpleNamespace(event=EXPORT_RECEIVED)) is None
    assert ingest_parameters(None) is None


def test_ingest_parameters_accepts_an_event_object(home_settings: Settings) -> None:
    path = write(home_settings.inbox / "northside" / "export.csv")
    fields = good_event(home_settings, path)
    # Prefect's Event exposes .event, .payload and .resource as attributes, not keys.
    stand_in = SimpleNamespace(**fields)
    assert ingest_parameters(stand_in) == {"path": str(path), "home": str(home_settings.home), "clinic_id": "northside"}


def test_ingest_parameters_accepts_a_real_prefect_event(home_settings: Settings) -> None:
    from prefect.events import Event

    path = write(home_settings.inbox / "northside" / "export.csv")
    event = Event(**export_event(path, home_settings.home))
    assert ingest_parameters(event) == {"path": str(path), "home": str(home_settings.home), "clinic_id": "northside"}


def test_is_candidate_rules(home_settings: Settings, tmp_path: Path) -> None:
    inbox = home_settings.inbox
    assert is_candidate(write(inbox / "northside" / "export.csv"), inbox)
    assert not is_candidate(inbox / "northside" / "missing.csv", inbox)
    assert not is_candidate(write(inbox / "loose.csv"), inbox)  # no clinic folder
    (inbox / "northside" / "sub").mkdir()
    assert not is_candidate(write(inbox / "northside" / "sub" / "deep.csv"), inbox)
    assert not is_candidate(inbox / "northside" / "sub", inbox)  # a folder is not a file
    (inbox / ".trash").mkdir()
    assert not is_candidate(write(inbox / ".trash" / "export.csv"), inbox)
    for name in ("a.part", "a.tmp", "a.partial", "a.crdownload", "a.csv~", "A.PART", ".a.csv"):
        assert not is_candidate(write(inbox / "northside" / name), inbox), name


def test_is_candidate_rejects_symlinks_out_of_the_inbox(home_settings: Settings, tmp_path: Path) -> None:
    inbox = home_settings.inbox
    outside = write(tmp_path / "outside.csv")
    link = inbox / "northside" / "linked.csv"
    link.symlink_to(outside)
    assert not is_candidate(link, inbox)
    (inbox / "evil").symlink_to(tmp_path, target_is_directory=True)
    assert not is_candidate(inbox / "evil" / "outside.csv", inbox)
    inside = write(inbox / "northside" / "real.csv")
    (inbox / "northside" / "alias.csv").symlink_to(inside)
    assert is_candidate(inbox / "northside" / "alias.csv", inbox)


def test_export_event_holds_names_and_size_only(home_settings: Settings) -> None:
    path = write(home_settings.inbox / "northside" / "export.csv", "secret client data\n")
    assert export_event(path, home_settings.home) == {
        "event": EXPORT_RECEIVED,
        "resource": {
            "prefect.resource.id": "alliance.export.northside.export.csv",
            "alliance.clinic": "northside",
            "alliance.home": str(home_settings.home),
        },
        "payload": {
            "path": str(path),
            "home": str(home_settings.home),
            "clinic_id": "northside",
            "size": len("secret client data\n"),
        },
    }
    with pytest.raises(ConfigError, match="x.part"):
        export_event(write(home_settings.inbox / "northside" / "x.part"), home_settings.home)


def test_emit_to_prefect_passes_the_event_through(monkeypatch: pytest.MonkeyPatch, home_settings: Settings) -> None:
    import prefect.events
    from prefect.events import Event

    sent: list[Event] = []

    def fake_emit_event(**kwargs: Any) -> Event:
        sent.append(Event(**kwargs))  # Prefect's own model validates the resource and payload
        return sent[-1]

    monkeypatch.setattr(prefect.events, "emit_event", fake_emit_event)
    emit_to_prefect(export_event(write(home_settings.inbox / "northside" / "export.csv"), home_settings.home))
    assert [(e.event, e.resource.id, e.payload["clinic_id"]) for e in sent] == [
        (EXPORT_RECEIVED, "alliance.export.northside.export.csv", "northside")
    ]
    monkeypatch.setattr(prefect.events, "emit_event", lambda **kwargs: None)
    with pytest.raises(RuntimeError, match="did not accept"):
        emit_to_prefect(export_event(home_settings.inbox / "northside" / "export.csv", home_settings.home))


# --- watcher.py: settle logic with a fake clock ---


def test_settle_logic_with_a_fake_clock(home_settings: Settings, events: list[dict[str, Any]]) -> None:
    watcher = InboxWatcher(home_settings, emit=events.append, settle_seconds=2.0)  # never started: no threads
    path = write(home_settings.inbox / "northside" / "export.csv")
    assert watcher.scan() == 1
    assert watcher.check_pending(now=100.0) == []  # first look only records (size, mtime_ns)
    assert watcher.check_pending(now=101.0) == []  # unchanged, but not for long enough
    with path.open("a") as handle:
        handle.write("B2,2025-01-03,38\n")
    assert watcher.check_pending(now=102.5) == []  # grew: the clock starts again
    assert watcher.check_pending(now=104.0) == []
    assert watcher.check_pending(now=104.5) == [path]
    assert events[0]["payload"]["size"] == path.stat().st_size
    watcher.scan()
    assert watcher.check_pending(now=200.0) == []  # same (path, size, mtime_ns): never twice


def test_empty_file_waits_three_settle_periods(home_settings: Settings, events: list[dict[str, Any]]) -> None:
    watcher = InboxWatcher(home_settings, emit=events.append, settle_seconds=2.0)
    path = home_settings.inbox / "northside" / "empty.csv"
    path.touch()
    watcher.scan()
    watcher.check_pending(now=0.0)
    assert watcher.check_pending(now=5.9) == []
    assert watcher.check_pending(now=6.0) == [path]


# --- watcher.py: real observer, real files ---


def test_complete_file_is_emitted_exactly_once(watcher: InboxWatcher, events: list[dict[str, Any]]) -> None:
    path = write(watcher.settings.inbox / "northside" / "export.csv")
    assert wait_for(lambda: len(events) == 1)
    time.sleep(SETTLE * 3)
    assert names(events) == ["export.csv"]
    assert events[0]["payload"] == {
        "path": str(path),
        "home": str(watcher.settings.home),
        "clinic_id": "northside",
        "size": path.stat().st_size,
    }


def test_growing_file_is_emitted_once_with_its_final_size(watcher: InboxWatcher, events: list[dict[str, Any]]) -> None:
    path = watcher.settings.inbox / "northside" / "big.csv"
    with path.open("w") as handle:
        for chunk in range(6):
            handle.write(f"row {chunk}\n" * 100)
            handle.flush()
            time.sleep(SETTLE / 3)  # several settle-loop ticks, yet well under the settle time
            assert events == [], "emitted while still growing"
    assert wait_for(lambda: len(events) == 1)
    time.sleep(SETTLE * 2)
    assert len(events) == 1
    assert events[0]["payload"]["size"] == path.stat().st_size


def test_rewritten_file_is_emitted_again(watcher: InboxWatcher, events: list[dict[str, Any]]) -> None:
    path = write(watcher.settings.inbox / "northside" / "export.csv")
    assert wait_for(lambda: len(events) == 1)
    write(path, "client,date,srs\nA1,2025-01-02,36\nB2,2025-01-03,38\n")
    assert wait_for(lambda: len(events) == 2)
    assert events[1]["payload"]["size"] == path.stat().st_size


def test_part_file_renamed_is_emitted_once_under_its_final_name(
    watcher: InboxWatcher, events: list[dict[str, Any]]
) -> None:
    partial = write(watcher.settings.inbox / "northside" / "export.csv.part")
    time.sleep(SETTLE * 2)
    assert events == []
    partial.rename(partial.with_name("export.csv"))
    assert wait_for(lambda: len(events) == 1)
    time.sleep(SETTLE * 2)
    assert names(events) == ["export.csv"]


def test_hidden_and_temporary_files_are_never_emitted(watcher: InboxWatcher, events: list[dict[str, Any]]) -> None:
    inbox = watcher.settings.inbox
    for name in (".export.csv", "a.tmp", "a.partial", "a.crdownload", "a.csv~", "a.csv.part"):
        write(inbox / "northside" / name)
    write(inbox / "loose.csv")
    (inbox / "northside" / "sub").mkdir()
    write(inbox / "northside" / "sub" / "deep.csv")
    write(inbox / "northside" / "sentinel.csv")  # a real export, so we know the watcher has looked
    assert wait_for(lambda: len(events) == 1)
    time.sleep(SETTLE * 3)
    assert names(events) == ["sentinel.csv"]


def test_new_clinic_folder_is_picked_up(watcher: InboxWatcher, events: list[dict[str, Any]]) -> None:
    folder = watcher.settings.inbox / "southside"
    folder.mkdir()
    write(folder / "export.csv")
    assert wait_for(lambda: len(events) == 1)
    assert events[0]["payload"]["clinic_id"] == "southside"


def test_files_present_at_startup_are_emitted(home_settings: Settings, events: list[dict[str, Any]]) -> None:
    write(home_settings.inbox / "northside" / "before-1.csv")
    write(home_settings.inbox / "northside" / "before-2.csv")
    with InboxWatcher(home_settings, emit=events.append, settle_seconds=SETTLE, poll_interval=POLL):
        assert wait_for(lambda: len(events) == 2)
    assert sorted(names(events)) == ["before-1.csv", "before-2.csv"]


def test_missing_inbox_is_created(tmp_path: Path, events: list[dict[str, Any]]) -> None:
    settings = load_settings(tmp_path / "fresh")
    with InboxWatcher(settings, emit=events.append, settle_seconds=SETTLE, poll_interval=POLL):
        assert settings.inbox.is_dir()


def test_polling_mode_emits_too(home_settings: Settings, events: list[dict[str, Any]]) -> None:
    with InboxWatcher(
        home_settings, emit=events.append, polling=True, settle_seconds=SETTLE, poll_interval=POLL
    ) as watcher:
        assert isinstance(watcher.observer, PollingObserver)
        partial = write(home_settings.inbox / "northside" / "export.csv.part")
        partial.rename(partial.with_name("export.csv"))
        write(home_settings.inbox / "northside" / "second.csv")
        assert wait_for(lambda: len(events) == 2)
        time.sleep(SETTLE * 2)
    assert sorted(names(events)) == ["export.csv", "second.csv"]


def test_failing_emit_is_logged_and_retried(
    home_settings: Settings, events: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def flaky_emit(event: dict[str, Any]) -> None:
        calls.append(event["payload"]["path"])
        if len(calls) == 1:
            raise ConnectionError("Prefect API unreachable")
        events.append(event)

    caplog.set_level(logging.INFO, logger="alliance.watcher")
    with InboxWatcher(home_settings, emit=flaky_emit, settle_seconds=SETTLE, poll_interval=POLL) as watcher:
        write(home_settings.inbox / "northside" / "export.csv")
        assert wait_for(lambda: len(events) == 1)
        assert watcher.observer is not None and watcher.observer.is_alive()
    assert len(calls) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "export.csv" in warnings[0] and "northside" in warnings[0]
    # Log lines name the file and clinic only: no folders, no contents.
    assert all(str(home_settings.home) not in r.getMessage() for r in caplog.records if "export.csv" in r.getMessage())
    assert all("A1" not in r.getMessage() for r in caplog.records)


def test_stop_is_clean_and_idempotent(home_settings: Settings, events: list[dict[str, Any]]) -> None:
    before = set(threading.enumerate())
    watcher = InboxWatcher(home_settings, emit=events.append, settle_seconds=SETTLE, poll_interval=POLL)
    watcher.stop()  # stopping a watcher that never started is harmless
    watcher.start()
    observer = watcher.observer
    assert observer is not None and observer.is_alive()
    assert len(set(threading.enumerate()) - before) >= 2  # observer thread(s) and the settle thread
    watcher.stop()
    watcher.stop()
    assert not observer.is_alive()
    assert watcher.observer is None
    assert set(threading.enumerate()) - before == set()


def test_run_forever_returns_when_stopped(home_settings: Settings, events: list[dict[str, Any]]) -> None:
    before = set(threading.enumerate())
    watcher = InboxWatcher(home_settings, emit=events.append, settle_seconds=SETTLE, poll_interval=POLL)
    runner = threading.Thread(target=watcher.run_forever)
    runner.start()
    assert wait_for(lambda: watcher.observer is not None)
    write(home_settings.inbox / "northside" / "export.csv")
    assert wait_for(lambda: len(events) == 1)
    watcher.stop()
    runner.join(timeout=5)
    assert not runner.is_alive()
    assert set(threading.enumerate()) - before == set()
