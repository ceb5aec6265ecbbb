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
