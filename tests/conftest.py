"""Shared fixtures: a fresh home per test, a quiet environment, and one Prefect harness per session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Offline and quiet before anything imports Prefect or GX.
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["GX_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="alliance-prefect-"))
os.environ.pop("ALLIANCE_HMAC_KEY", None)
os.environ.pop("ALLIANCE_HOME", None)
# Test files are written whole before they are ingested; the settle wait itself is tested with its own setting.
os.environ["ALLIANCE_SETTLE_S"] = "0"

from alliance.home import init_home
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
