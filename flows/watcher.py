"""The inbox watcher: emits an export-received event for each inbox file once it has stopped changing."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from watchdog.events import (
    EVENT_TYPE_ATTRIB,
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from alliance.errors import ConfigError
from alliance.settings import Settings
from flows.events import export_event, is_candidate

logger = logging.getLogger("alliance.watcher")

Emit = Callable[[dict[str, Any]], None]
Signature = tuple[int, int]  # (size, mtime_ns): what "unchanged" means

# Event kinds that can mean new or changed content; opening or reading a file cannot.
_CHANGES = {EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_MOVED, EVENT_TYPE_CLOSED, EVENT_TYPE_ATTRIB}


def _key(path: str | bytes | Path) -> Path:
    """One spelling per file (absolute, `..` collapsed), so scan and events agree on what is pending."""
    return Path(os.path.abspath(os.fsdecode(path)))


def emit_to_prefect(event: dict[str, Any]) -> None:
    """Send one event from export_event to Prefect; raises when Prefect did not accept it.

    Example: ``emit_to_prefect(export_event(path, settings.home))``.
    """
    from prefect.events import emit_event

    # emit_event swallows its own errors and returns None; raising makes the watcher retry.
    if emit_event(event=event["event"], resource=event["resource"], payload=event["payload"]) is None:
        raise RuntimeError("Prefect did not accept the event (is PREFECT_API_URL set and the server up?)")


def settled(size: int, stable_for: float, settle_seconds: float) -> bool:
    """The one definition of a complete file: unchanged for settle_seconds (an empty file three times that).

    Example: ``settled(1200, 2.5, 2.0)`` -> True; ``settled(0, 2.5, 2.0)`` -> False (it may still be filling).
    """
    return stable_for >= settle_seconds * (1 if size > 0 else 3)


def file_signature(path: Path) -> Signature | None:
    """(size, mtime_ns) of a file, None when it is gone."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def wait_until_settled(path: Path, settle_seconds: float, timeout: float) -> Signature | None:
    """Wait until ``path`` has settled (by ``settled``) and return its signature; None if still changing at timeout.

    A file last modified settle_seconds ago has been unchanged that long, so old files return at once.
    Example: ``wait_until_settled(Path("inbox/north/a.csv"), 2.0, 10.0)`` -> ``(1200, 1764…)``.
    """
    deadline = time.monotonic() + timeout
    while True:
        signature = file_signature(path)
        if signature is None or settle_seconds == 0:
            return signature
        stable_for = time.time() - signature[1] / 1e9
        if settled(signature[0], stable_for, settle_seconds):
            return signature
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(0.2, max(0.01, settle_seconds / 4)))


@dataclass
class _Pending:
    """What the settle loop knows about one path."""

    signature: Signature | None = None
    stable_since: float = 0.0
    touches: int = 0  # bumped by every file-system event, so a change during a check is never dropped
    failures: int = 0


class _Handler(FileSystemEventHandler):
    """Forwards watchdog events to the watcher; runs on watchdog's thread."""

    def __init__(self, watcher: InboxWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self.watcher._on_fs_event(event)
        except Exception:  # an exception here would kill the observer thread
            logger.exception("inbox event could not be handled")


class InboxWatcher:
    """Watches settings.inbox and emits each complete export file once per (path, size, mtime_ns).

    Example::

        with InboxWatcher(load_settings(), polling=True) as watcher:
            watcher.run_forever()
    """

    def __init__(
        self,
        settings: Settings,
        emit: Emit | None = None,
        polling: bool = False,
        settle_seconds: float = 2.0,
        poll_interval: float = 1.0,
        rescan_seconds: float | None = 60.0,
    ) -> None:
        self.settings = settings
        self.emit: Emit = emit or emit_to_prefect
        self.polling = polling
        self.settle_seconds = settle_seconds
        self.poll_interval = poll_interval
        self.rescan_seconds = rescan_seconds
        self._pending: dict[Path, _Pending] = {}
        self._emitted: dict[Path, Signature] = {}
        self._lock = threading.Lock()  # guards _pending and _emitted
        self._check_lock = threading.Lock()  # one settle check at a time, so nothing is emitted twice
        self._stopped = threading.Event()
        self._stopped.set()
        self._observer: BaseObserver | None = None
        self._thread: threading.Thread | None = None

    @property
    def observer(self) -> BaseObserver | None:
        """The running watchdog observer, None when stopped."""
        return self._observer

    def start(self) -> None:
        """Start watching: observer, startup scan, settle thread; a no-op when already running."""
        if not self._stopped.is_set():
            return
        inbox = self.settings.inbox
        inbox.mkdir(parents=True, exist_ok=True)
        observer = PollingObserver(timeout=self.poll_interval) if self.polling else Observer()
        observer.schedule(_Handler(self), str(inbox), recursive=True)
        observer.start()
        self._observer = observer
        self._stopped.clear()
        self.scan()  # after the observer started, so a file arriving meanwhile is not missed
        self._thread = threading.Thread(target=self._settle_loop, name="alliance-watcher-settle", daemon=True)
        self._thread.start()
        logger.info("watching %s (%s)", inbox, "polling" if self.polling else "native events")

    def stop(self) -> None:
        """Stop the observer and the settle thread and wait for both; safe to call twice."""
        self._stopped.set()
        thread, self._thread = self._thread, None
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self) -> InboxWatcher:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def run_forever(self) -> None:
        """Watch until stop() is called or Ctrl-C; example: ``InboxWatcher(load_settings()).run_forever()``."""
        self.start()
        try:
            while not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            logger.info("interrupted, stopping")
        finally:
            self.stop()

    def scan(self) -> int:
        """Mark every candidate file in the inbox as pending; returns how many (startup scan and sweep)."""
        inbox = self.settings.inbox
        marked = sum(self._touch(path) for path in inbox.glob("*/*")) if inbox.is_dir() else 0
        with self._lock:
            emitted = list(self._emitted)
        gone = [path for path in emitted if not path.exists()]
        with self._lock:
            for path in gone:  # files that left the inbox are forgotten, so memory stays bounded
                self._emitted.pop(path, None)
        return marked

    def check_pending(self, now: float | None = None) -> list[Path]:
        """Emit every pending file that has settled; returns the paths emitted by this check."""
        with self._check_lock:
            now = time.monotonic() if now is None else now
            with self._lock:
                snapshot = [(path, entry, entry.touches) for path, entry in self._pending.items()]
            ready: list[tuple[Path, _Pending, int, Signature]] = []
            for path, entry, touches in snapshot:
                signature = self._signature(path)
                if signature is None or self._emitted.get(path) == signature:
                    self._forget(path, touches)
                elif signature != entry.signature:
                    entry.signature, entry.stable_since, entry.failures = signature, now, 0
                elif self._settled(signature, now - entry.stable_since):
                    ready.append((path, entry, touches, signature))
            return [item[0] for item in ready if self._emit_one(*item)]

    def _settled(self, signature: Signature, stable_for: float) -> bool:
        """Unchanged for settle_seconds; an empty file needs three times that, as it may still be filling."""
        return settled(signature[0], stable_for, self.settle_seconds)

    def _emit_one(self, path: Path, entry: _Pending, touches: int, signature: Signature) -> bool:
        """Emit one settled file; on failure keep it pending so the next check retries."""
        name, clinic = path.name, path.parent.name
        try:
            event = export_event(path, self.settings.home)
        except (OSError, ConfigError):  # gone or no longer a candidate since the check
            self._forget(path, touches)
            return False
        try:
            self.emit(event)
        except Exception as error:
            entry.failures += 1
            # Warn once per file, not once per check, while Prefect is down.
            log = logger.warning if entry.failures == 1 else logger.debug
            log("%s (clinic %s): emit failed, will retry: %s", name, clinic, type(error).__name__)
            return False
        with self._lock:
            self._emitted[path] = signature
        logger.info("%s (clinic %s): export received, %d bytes", name, clinic, signature[0])
        return True

    def _settle_loop(self) -> None:
        """Check pending files until stopped; sweep the inbox now and then in case an event was missed."""
        tick = max(0.01, min(self.poll_interval, self.settle_seconds / 2))
        last_scan = time.monotonic()
        while not self._stopped.wait(tick):
            try:
                if self.rescan_seconds is not None and time.monotonic() - last_scan >= self.rescan_seconds:
                    last_scan = time.monotonic()
                    self.scan()
                self.check_pending()
            except Exception:  # the loop must survive anything, or files would silently pile up
                logger.exception("settle check failed")

    def _on_fs_event(self, event: FileSystemEvent) -> None:
        """Mark the file (or a new folder's files) an event names as pending."""
        kind = event.event_type
        if kind in (EVENT_TYPE_DELETED, EVENT_TYPE_MOVED):
            with self._lock:
                self._emitted.pop(_key(event.src_path), None)  # a file that comes back later is a new arrival
        if kind not in _CHANGES:
            return
        path = _key(event.dest_path if kind == EVENT_TYPE_MOVED else event.src_path)
        if not event.is_directory:
            self._touch(path)
        elif kind in (EVENT_TYPE_CREATED, EVENT_TYPE_MOVED):
            # Files may land in a new clinic folder before its watch is in place.
            try:
                children = list(path.iterdir())
            except OSError:
                return
            for child in children:
                self._touch(child)

    def _touch(self, path: Path) -> bool:
        """Mark a candidate file as pending; anything else is ignored (returns False)."""
        if not is_candidate(path, self.settings.inbox):
            return False
        with self._lock:
            self._pending.setdefault(_key(path), _Pending()).touches += 1
        return True

    def _forget(self, path: Path, touches: int) -> None:
        """Drop a pending path unless an event arrived for it since it was looked at."""
        with self._lock:
            entry = self._pending.get(path)
            if entry is not None and entry.touches == touches:
                del self._pending[path]

    @staticmethod
    def _signature(path: Path) -> Signature | None:
        return file_signature(path)
