"""A batch's writer lease: files share one writer session for a while, then let others in; a failure ends it."""

from __future__ import annotations

import threading

import pytest
from filelock import FileLock, Timeout

from alliance.settings import Settings
from alliance.storage import Warehouse, writer_lease


def _lock_free(warehouse: Warehouse) -> bool:
    """Whether another thread could take the writer lock now."""
    free: list[bool] = []

    def attempt() -> None:
        lock = FileLock(warehouse.lock_path)
        try:
            lock.acquire(timeout=0.05)
        except Timeout:
            free.append(False)
        else:
            lock.release()
            free.append(True)

    worker = threading.Thread(target=attempt)
    worker.start()
    worker.join()
    return free[0]


def test_sessions_in_a_lease_share_one_connection_and_hold_the_lock_between_them(settings: Settings) -> None:
    warehouse = Warehouse.of(settings)
    with writer_lease(settings.warehouse, lease_s=60):
        with warehouse.writer() as first, first.transaction():
            first.set_meta("probe", "1")
        assert not _lock_free(warehouse)  # still ours between the batch's files
        with warehouse.writer() as second:
            assert second.con is first.con
            assert second.meta_value("probe") == "1"
    assert _lock_free(warehouse)  # the lease ends with the batch
    with warehouse.writer() as after:
        assert after.meta_value("probe") == "1"


def test_a_session_held_past_the_lease_is_closed_and_the_lock_released(settings: Settings) -> None:
    warehouse = Warehouse.of(settings)
    with writer_lease(settings.warehouse, lease_s=0):
        with warehouse.writer() as first:
            pass
        assert _lock_free(warehouse)
        with warehouse.writer() as second:
            assert second.con is not first.con


def test_a_failed_session_is_not_reused_and_what_was_committed_stays(settings: Settings) -> None:
    warehouse = Warehouse.of(settings)
    with writer_lease(settings.warehouse, lease_s=60):
        with warehouse.writer() as first, first.transaction():
            first.set_meta("probe", "kept")
        with pytest.raises(RuntimeError), warehouse.writer() as failing, failing.transaction():
            failing.set_meta("probe", "rolled back")
            raise RuntimeError("a file's problem")
        assert _lock_free(warehouse)
        with warehouse.writer() as next_one:
            assert next_one.con is not first.con
            assert next_one.meta_value("probe") == "kept"
