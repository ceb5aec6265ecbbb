"""A sweep's groups of files read and validated ahead on a worker process (flows/readahead.py) load exactly what
one process loads; a worker killed mid-sweep costs only time."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import ClassVar

import duckdb
import pytest

from alliance.cli.exports import _ingest_all
from alliance.samples import SampleSet, generate_sample
from alliance.settings import Settings
from alliance.storage import table_checksums
from flows import nightly, prevalidation, readahead
from flows.nightly import run_nightly
from flows.workers import CORES
from tests.conftest import home_with_night

pytestmark = pytest.mark.skipif(CORES < 2, reason="worker processes need a spare core")
Checksums = dict[str, tuple[int, str]]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleSet:
    return generate_sample(tmp_path_factory.mktemp("exports"), clinics=4, weeks=20, seed=8, dyads_per_clinic=20)


def night(root: Path, sample: SampleSet) -> tuple[Settings, Checksums]:
    settings = home_with_night(root, sample)
    report = run_nightly(settings)
    assert not report.errors and report.exports
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        return settings, table_checksums(con, stable_only=True)


class Watched(readahead.ReadAhead):
    """The real read-ahead, remembering what its worker found; ``kill_at`` kills the worker before that group."""

    kill_at: ClassVar[int | None] = None
    seen: ClassVar[list[Watched]] = []
    handed: ClassVar[list[readahead.Prevalidated]] = []

    def for_group(self, k: int) -> readahead.Prevalidated:
        Watched.seen.append(self)
        if k == self.kill_at and self._pool is not None:
            for pid in list(self._pool._processes):  # type: ignore[attr-defined]
                os.kill(pid, signal.SIGKILL)
        found = super().for_group(k)
        Watched.handed.append(found)
        return found


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> type[Watched]:
    Watched.seen, Watched.handed, Watched.kill_at = [], [], None
    monkeypatch.setattr(readahead, "ReadAhead", Watched)
    monkeypatch.setattr(nightly, "PREVALIDATE_FILES", 2)  # the sample's files in groups of two
    return Watched


def test_groups_read_ahead_on_a_worker_load_what_one_process_loads(
    sample: SampleSet, tmp_path: Path, watched: type[Watched], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readahead, "READ_AHEAD", False)
    _, alone = night(tmp_path / "alone", sample)
    assert {ahead.from_worker for ahead in watched.seen} == {0}
    monkeypatch.setattr(readahead, "READ_AHEAD", True)
    watched.seen, watched.handed = [], []
    _, ahead = night(tmp_path / "ahead", sample)
    groups = len(watched.seen[-1].groups)
    assert groups >= 3
    assert 1 <= watched.seen[-1].from_worker < groups  # the worker found some groups, this process the others
    assert all(found.served > 0 for found in watched.handed)  # each file's ingest took what was found ahead
    assert ahead == alone


def test_a_worker_killed_mid_sweep_costs_only_time(
    sample: SampleSet,
    tmp_path: Path,
    watched: type[Watched],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(readahead, "READ_AHEAD", False)
    _, alone = night(tmp_path / "alone", sample)
    monkeypatch.setattr(readahead, "READ_AHEAD", True)
    watched.kill_at = 1
    with caplog.at_level(logging.WARNING, logger="alliance.pipeline"):
        _, killed = night(tmp_path / "killed", sample)
    assert watched.seen[-1].from_worker == 0
    assert "read-ahead of a group of files failed (BrokenProcessPool)" in caplog.text
    assert killed == alone


def test_sweeps_in_threads_share_the_workers_and_hold_few_groups(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the Prefect nightly may sweep batches in parallel threads: one set of workers, stopped by the last sweep
    monkeypatch.setattr(readahead, "READ_AHEAD", True)
    both_in, pools, held, by_worker = threading.Barrier(2), [], [], []

    def sweep(groups: int) -> None:
        with readahead.read_ahead([[] for _ in range(groups)], settings) as ahead:
            both_in.wait(timeout=60)
            pools.append(ahead._pool)
            for k in range(groups):
                ahead.for_group(k)
                time.sleep(0.05)  # a load: the workers finish what they hold
                held.append(len(ahead._sent) + len(ahead._found))
            by_worker.append(ahead.from_worker)

    threads = [threading.Thread(target=sweep, args=(n,)) for n in (6, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(pools) == 2 and pools[0] is pools[1] is not None
    # which sweep's groups the shared worker takes first is a race; that it takes some is not
    assert len(by_worker) == 2 and sum(by_worker) > 0
    assert max(held) <= readahead.AHEAD  # what a sweep holds ahead stays bounded, however fast the workers
    assert readahead._WORKERS._users == 0 and readahead._WORKERS._pool is None
    with readahead.read_ahead([[], []], settings) as later:
        assert later._pool is not None and later._pool is not pools[0]


def test_an_interrupted_sweep_stops_its_workers_at_once(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readahead, "READ_AHEAD", True)
    with pytest.raises(KeyboardInterrupt), readahead.read_ahead([[], [], []], settings) as ahead:
        ahead.for_group(0)
        workers = list(ahead._pool._processes.values())  # type: ignore[union-attr]
        assert workers
        raise KeyboardInterrupt
    assert all(not worker.is_alive() for worker in workers)
    assert readahead._WORKERS._pool is None


def test_alliance_ingest_of_many_files_reads_later_groups_ahead(
    sample: SampleSet, tmp_path: Path, watched: type[Watched], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prevalidation, "PREVALIDATE_BYTES", 1)  # every export over the bound: a group each
    sums = []
    for ahead in (False, True):
        monkeypatch.setattr(readahead, "READ_AHEAD", ahead)
        settings = home_with_night(tmp_path / f"home-{ahead}", sample)
        paths = [settings.inbox / file.clinic_id / file.path.name for file in sample.files]
        watched.seen, watched.handed = [], []
        results, _ = _ingest_all(paths, settings, None)
        assert {r.status for r in results} == {"loaded"}
        assert len(watched.seen[-1].groups) >= 3
        assert (watched.seen[-1].from_worker > 0) is ahead
        assert all(found.served > 0 for found in watched.handed)
        with duckdb.connect(str(settings.warehouse), read_only=True) as con:
            sums.append(table_checksums(con, stable_only=True))
    assert sums[0] == sums[1]


def test_groups_keep_the_files_order_in_the_fewest_groups_of_about_equal_size() -> None:
    for count in (0, 1, 199, 200, 201, 250, 1000, 1001):
        paths = [Path(f"f{i}") for i in range(count)]
        groups = readahead.groups_of(paths, 200)
        assert [p for group in groups for p in group] == paths
        assert len(groups) == -(-count // 200) and all(len(g) <= 200 for g in groups)
        assert max(map(len, groups), default=0) - min(map(len, groups), default=0) <= 1


def test_groups_of_large_files_stay_under_a_byte_bound(tmp_path: Path) -> None:
    def files(*sizes: int) -> list[Path]:
        paths = []
        for i, size in enumerate(sizes):
            path = tmp_path / f"{len(list(tmp_path.iterdir()))}-{i}.csv"
            path.write_bytes(b"x" * size)
            paths.append(path)
        return paths

    # ten exports of 40 bytes under a 100-byte bound: four groups would need one of three (120 bytes)
    paths = files(*[40] * 10)
    groups = readahead.groups_of(paths, 200, max_bytes=100)
    assert [p for group in groups for p in group] == paths
    assert [len(group) for group in groups] == [2] * 5
    # a file over the bound is a group alone; the file count still bounds the small ones; a file gone weighs nothing
    mixed = files(10, 10, 10, 250, 10, 10, 60, 60)
    mixed.append(tmp_path / "gone.csv")
    groups = readahead.groups_of(mixed, 3, max_bytes=100)
    assert [p for group in groups for p in group] == mixed
    assert all(len(g) <= 3 and (len(g) == 1 or sum(p.stat().st_size for p in g if p.exists()) <= 100) for g in groups)
    assert [mixed[3]] in groups
    # small files: the count alone decides, as without a bound
    small = files(*[1] * 250)
    assert [len(group) for group in readahead.groups_of(small, 200, max_bytes=100_000)] == [125, 125]
