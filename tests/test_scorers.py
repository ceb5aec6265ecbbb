"""A chunk's dyads scored in shares on worker processes (flows/scorers.py) give what one process gives: the same
findings in the same order, the same sessions, the same warehouse; a worker killed loses no share."""

from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from alliance.clinics import RuleConfig, load_clinics
from alliance.home import init_home
from alliance.samples import add_profiles, generate_sample
from alliance.settings import Settings, load_settings
from alliance.storage import Warehouse, table_checksums
from flows import scorers
from flows.nightly import run_nightly
from flows.scoring import _calibrations, _features, score_dyads
from flows.workers import CORES
from tests.conftest import TEST_KEY
from transforms.calibration import Calibration
from transforms.expected import ExpectedCurve
from transforms.findings import Scored, courses, score

pytestmark = pytest.mark.skipif(CORES < 2, reason="worker processes need a spare core")
KEYS = ["dyad_id", "instrument", "session_date", "session_number"]
Inputs = tuple[pl.DataFrame, dict[str, RuleConfig], dict[str, Calibration], dict[str, ExpectedCurve]]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = load_settings(tmp_path_factory.mktemp("scorers") / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(settings.inbox, clinics=3, weeks=30, seed=5, dyads_per_clinic=40)
    add_profiles(settings.clinics_file, sample.profiles)
    run_nightly(settings)
    return settings


@pytest.fixture(scope="module")
def inputs(network: Settings) -> Inputs:
    configs = {cid: clinic.rules for cid, clinic in load_clinics(network.clinics_file).items()}
    with Warehouse.of(network).writer() as writer:
        calibrations, curves, _ = _calibrations(writer, network.recalibrate_growth, False)
        features = _features(writer.ratings_of(None), configs)
    return features, configs, calibrations, curves


def assert_same(got: Scored, expected: Scored) -> None:
    assert_frame_equal(got.findings, expected.findings)
    assert_frame_equal(got.sessions.sort(KEYS), expected.sessions.sort(KEYS))


def test_shares_hold_whole_dyads_in_their_order_and_about_equal_sessions(inputs: Inputs) -> None:
    grouped = courses(*inputs).grouped
    sessions = grouped["score"].list.len().sum()
    for n in (1, 2, 3, 7):
        parts = scorers.shares(grouped, n)
        assert len(parts) == min(n, grouped["dyad_id"].n_unique())
        assert_frame_equal(pl.concat(parts), grouped)
        owners = [set(part["dyad_id"]) for part in parts]
        assert sum(map(len, owners)) == grouped["dyad_id"].n_unique()  # no dyad split between two shares
        if n > 1:
            assert max(p["score"].list.len().sum() for p in parts) < 2 * sessions / n


@pytest.mark.parametrize(("processes", "share_sessions"), [(2, 10_000_000), (2, 300), (3, 1_000)])
def test_shares_scored_on_workers_equal_one_process(
    inputs: Inputs, processes: int, share_sessions: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scorers, "PARALLEL_SESSIONS", 1)
    monkeypatch.setattr(scorers, "SHARE_SESSIONS", share_sessions)  # one share a process, or many
    expected = score(*inputs)
    assert expected.findings.height > 100 and expected.findings["rule"].n_unique() >= 6
    with scorers.scoring_pool(processes) as pool:
        assert_same(scorers.score_shares(pool, *inputs), expected)
        assert pool._pool is not None  # the shares went to worker processes
        workers = list(pool._pool._processes)  # type: ignore[attr-defined]
    assert len(workers) == processes - 1


def test_a_killed_worker_s_share_is_scored_in_this_process(
    inputs: Inputs, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(scorers, "PARALLEL_SESSIONS", 1)
    monkeypatch.setattr(scorers, "PARALLEL_DYADS", 1)
    monkeypatch.setattr(scorers, "SHARE_SESSIONS", 1_000)
    expected = score(*inputs)
    with scorers.scoring_pool(2) as pool:
        pool.start(10)
        assert pool._pool is not None
        pool._pool.submit(os.getpid).result()  # the worker is up
        for pid in list(pool._pool._processes):  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)
        with caplog.at_level(logging.WARNING, logger="alliance.scoring"):
            assert_same(scorers.score_shares(pool, *inputs), expected)
            assert_same(scorers.score_shares(pool, *inputs), expected)  # the pool stays broken, nothing is lost
    assert "a scoring process stopped" in caplog.text


def test_a_full_scoring_on_workers_leaves_the_warehouse_one_process_leaves(
    network: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    homes = []
    for processes in (1, 2):
        home = tmp_path / f"home-{processes}"
        shutil.copytree(network.home, home)
        settings = load_settings(home)
        monkeypatch.setattr(scorers, "SCORE_PROCESSES", processes)
        monkeypatch.setattr(scorers, "PARALLEL_SESSIONS", 1)
        monkeypatch.setattr(scorers, "PARALLEL_DYADS", 1)
        with Warehouse.of(settings).writer() as writer, writer.transaction():
            result = score_dyads(writer, load_clinics(settings.clinics_file), settings, None, kind="rescore")
        assert result.dyads_scored > 100
        homes.append(settings)
    sums = []
    for settings in homes:
        with duckdb.connect(str(settings.warehouse), read_only=True) as con:
            sums.append(table_checksums(con, stable_only=True))
    assert sums[0] == sums[1]
