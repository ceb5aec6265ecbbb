"""Shared fixtures: a fresh home per test, a quiet environment, and one Prefect harness per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest

# Offline and quiet before anything imports Prefect or GX.
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["GX_ANALYTICS_ENABLED"] = "false"
if "PREFECT_HOME" not in os.environ:  # one per test run, removed when it ends (worker processes inherit it)
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="alliance-prefect-")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ.pop("ALLIANCE_HMAC_KEY", None)
os.environ.pop("ALLIANCE_HOME", None)
# Test files are written whole before they are ingested; the settle wait itself is tested with its own setting.
os.environ["ALLIANCE_SETTLE_S"] = "0"

from alliance.home import init_home
from alliance.samples import SampleSet, add_profiles
from alliance.settings import Settings, load_settings

TEST_KEY = "test-key-0123456789abcdef"
pytest_plugins = ["tests.receivers"]  # real SMTP and webhook receivers as fixtures


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """A fresh, initialised home with a fixed pseudonym key file."""
    home = tmp_path / "home"
    configured = load_settings(home)
    init_home(configured)
    configured.key_file.write_text(TEST_KEY + "\n")
    return configured


def add_clinic(settings: Settings, text: str) -> None:
    """Append a clinic table to the home's clinics.toml."""
    with settings.clinics_file.open("a", encoding="utf-8") as handle:
        handle.write("\n" + text)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One Prefect test harness for the whole session: it costs 10–15 s to start."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def two_clinics(settings: Settings) -> Settings:
    """A home with clinics north and south sharing one CSV layout (tests/test_pipeline.py's NORTH)."""
    from tests.test_pipeline import NORTH

    add_clinic(settings, NORTH)
    add_clinic(settings, NORTH.replace("clinics.north", "clinics.south").replace('name = "North"', 'name = "South"'))
    for clinic in ("north", "south"):
        (settings.inbox / clinic).mkdir()
    return settings


def put(settings: Settings, clinic: str, name: str, rows: list[str]) -> Path:
    """Write a CSV export with tests/test_pipeline.py's header into a clinic's inbox."""
    from tests.test_pipeline import HEADER

    path = settings.inbox / clinic / name
    path.write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    return path


# test_pipeline.py's rows with south's own therapists (the same ids at two clinics look like a wrong inbox)
SOUTH_ROWS = [
    "C-101,s1,01/05/2026,1,9.5,9.0,9.1,9.2,20,first visit",
    "C-101,s1,01/12/2026,2,9.5,9.5,9.1,9.2,,",
    "C-102,s2,01/12/2026,1,8.0,8.0,8.0,8.0,18,",
    "C-103,s2,01/13/2026,1,8.0,12.5,8.0,8.0,,out of range",
]


def home_with_night(root: Path, sample: SampleSet) -> Settings:
    """A new home at ``root`` with the sample's clinics, and its files waiting in their inboxes."""
    configured = load_settings(root)
    init_home(configured)
    configured.key_file.write_text(TEST_KEY)
    add_profiles(configured.clinics_file, sample.profiles)
    for file in sample.files:
        target = configured.inbox / file.clinic_id / file.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(file.path, target)
    return configured


def put_courses(settings: Settings) -> None:
    """Twelve short courses a clinic in north and south (``two_clinics``), some falling, some low at the end."""
    for clinic in ("north", "south"):
        rows = [
            f"C-{k},{clinic[0]}{k % 3},{(date(2026, 1, 5) + timedelta(weeks=s)).strftime('%m/%d/%Y')},{s + 1},"
            f"{v},{v},{v},{v},,"
            for k in range(12)
            for s, v in enumerate([9.5, 9.5, 9, 8.5, 9.5, 5 if k % 2 else 9.5, 4 if k % 3 == 0 else 9, 9][: 4 + k % 5])
        ]
        put(settings, clinic, f"{clinic}.csv", rows)
