"""kill -9 at random and at the riskiest points: a re-run always converges to the warehouse of one clean run."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from alliance.faults import POINTS
from alliance.home import init_home
from alliance.samples import SampleSet, add_profiles, generate_sample
from alliance.settings import Settings, load_settings
from alliance.storage import table_checksums
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.slow
RANDOM_KILLS = 20


def night_home(root: Path, sample: SampleSet, hook_port: int) -> Settings:
    """A home with the night's files in its inboxes and one supervisor channel, as the clean run had it."""
    settings = load_settings(root)
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    add_profiles(settings.clinics_file, sample.profiles)
    with settings.clinics_file.open("a") as handle:
        handle.write(
            f'\n[[clinics.northside.alerts.supervisors]]\nname = "Dr Lee"\nurls = ["json://127.0.0.1:{hook_port}/lee"]\n'
        )
    for file in sample.files:
        target = settings.inbox / file.clinic_id / file.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(file.path, target)
        time.sleep(0.01)  # distinct mtimes: the night ingests in the same order every time
    return settings


def nightly(settings: Settings, crash_at: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "ALLIANCE_HOME": str(settings.home)}
    env.pop("ALLIANCE_CRASH_AT", None)
    if crash_at:
        env["ALLIANCE_CRASH_AT"] = crash_at
    return subprocess.Popen(
        [sys.executable, "-m", "alliance", "nightly"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(settings: Settings) -> None:
    run = nightly(settings)
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 0, out


def state(settings: Settings) -> dict[str, tuple[int, str]]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        return table_checksums(con, stable_only=True)


def verified(settings: Settings) -> None:
    check = subprocess.run(
        [sys.executable, "-m", "alliance", "verify", "--home", str(settings.home)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> SampleSet:
    return generate_sample(
        tmp_path_factory.mktemp("night"), clinics=4, weeks=20, seed=8, dyads_per_clinic=30, profile="clean"
    )


@pytest.fixture(scope="module")
def clean(night: SampleSet, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, tuple[int, str]], float]:
    from tests.receivers import run_hook

    with run_hook() as hook:
        settings = night_home(tmp_path_factory.mktemp("clean") / "home", night, hook.port)
        started = time.monotonic()
        finish(settings)
        took = time.monotonic() - started
        assert [r["path"] for r in hook.requests] == ["/lee"]
    verified(settings)
    return state(settings), took


def test_random_kills_converge_to_one_clean_run(
    night: SampleSet, clean: tuple[dict[str, tuple[int, str]], float], tmp_path: Path
) -> None:
    from tests.receivers import run_hook

    expected, took = clean
    rng = random.Random(20261125)
    killed = 0
    with run_hook() as hook:
        for trial in range(RANDOM_KILLS):
            settings = night_home(tmp_path / f"trial{trial}", night, hook.port)
            run = nightly(settings)
            time.sleep(rng.uniform(0.2, took))
            if run.poll() is None:
                run.send_signal(signal.SIGKILL)
                killed += 1
            run.communicate(timeout=120)
            finish(settings)
            assert state(settings) == expected, f"trial {trial} diverged"
            verified(settings)
            assert not list(settings.inbox.glob("*/*")), "every file archived once"
    assert killed >= RANDOM_KILLS * 0.75  # most trials really were killed mid-run


@pytest.mark.parametrize("point", POINTS)
def test_crash_at_each_risky_point_converges(
    point: str, night: SampleSet, clean: tuple[dict[str, tuple[int, str]], float], tmp_path: Path
) -> None:
    from tests.receivers import run_hook

    with run_hook() as hook:
        settings = night_home(tmp_path / "home", night, hook.port)
        crashed = nightly(settings, crash_at=point)
        crashed.communicate(timeout=300)
        assert crashed.returncode == -signal.SIGKILL
        finish(settings)
        assert state(settings) == clean[0]
        verified(settings)
        if point == "after_alert_sent":
            # sent but not recorded: the re-run repeats the message rather than dropping it
            assert [r["path"] for r in hook.requests] == ["/lee", "/lee"]
        else:
            assert [r["path"] for r in hook.requests] == ["/lee"]
