"""A batch's writer lease: files share one writer session for a while, then let others in; a failure ends it."""

from __future__ import annotations

import threading

import polars as pl
import pytest
from filelock import FileLock, Timeout

from alliance.errors import StorageError
from alliance.settings import Settings
from alliance.storage import Warehouse, Writer, writer_lease
from alliance.storage.session import _now


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


def test_what_a_session_keeps_of_its_tables_follows_its_saves_and_is_dropped_by_a_rollback(
    settings: Settings,
) -> None:
    """The current calibration is read once per writer session and kept (as are expected trajectories, rating
    counts and therapists); a save drops the kept copy, and so does a rollback of what the session wrote."""
    warehouse = Warehouse.of(settings)

    def calibration(rc: float) -> pl.DataFrame:
        return pl.DataFrame(
            [{"calibration_id": f"c{rc}", "instrument": "SRS", "sd": 3.0, "r": 0.8, "rc": rc, "n_scores": 100,
              "n_pairs": 80, "within_sd": 2.0, "estimated_at": _now()}]
        )  # fmt: skip

    def kept(writer: Writer) -> list[float]:
        return writer.current_calibrations()["rc"].to_list()

    with warehouse.writer() as writer:
        with writer.transaction():
            writer.save_calibrations(calibration(4.0))
        assert kept(writer) == [4.0] and writer.current_calibrations() is writer.current_calibrations()
        with pytest.raises(RuntimeError), writer.transaction():
            writer.save_calibrations(calibration(5.0))
            assert kept(writer) == [5.0]  # the session sees its own save
            raise RuntimeError("a file's problem")
        assert kept(writer) == [4.0]  # the rollback took the save back, and the kept copy with it
        with writer.transaction():
            writer.save_calibrations(calibration(6.0))
        assert kept(writer) == [6.0]


def test_a_key_check_the_session_keeps_is_dropped_by_a_rollback_and_a_rekey(settings: Settings) -> None:
    """Each file of a batch asks for the key check, and the session keeps the answer; a rollback (which may undo
    the fingerprint's first recording) and a rekey make it ask the warehouse again."""
    warehouse = Warehouse.of(settings)
    empty = pl.DataFrame(schema={"clinic_id": pl.String, "old": pl.String, "new": pl.String})

    def recorded(writer: Writer) -> list[tuple[str]]:
        return writer.con.execute("SELECT value FROM meta WHERE key = 'key_fingerprint'").fetchall()

    with warehouse.writer() as writer:
        with pytest.raises(RuntimeError), writer.transaction():
            writer.check_key("fp-1")  # the first use records it, in a transaction that rolls back
            raise RuntimeError("a file's problem")
        assert recorded(writer) == []
        writer.check_key("fp-1")
        assert recorded(writer) == [("fp-1",)]  # recorded again, not taken as checked
        with pytest.raises(StorageError, match="not the one this warehouse was built with"):
            writer.check_key("fp-2")
        with writer.transaction():
            writer.remap_ids(empty, empty.drop("clinic_id"), empty.drop("clinic_id"), "fp-2")
        with pytest.raises(StorageError, match="not the one this warehouse was built with"):
            writer.check_key("fp-1")  # the rekey replaced the fingerprint the session had checked
        writer.check_key("fp-2")
