"""End to end in a real browser: start the dashboard, acknowledge a flag in headless Chromium, check the warehouse."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from alliance.settings import Settings
from dashboards import launch
from tests.test_dashboard import build_home

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright's own browser download does not work here
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# The README's screenshots are refreshed only on request (ALLIANCE_UPDATE_SCREENSHOTS=1): a test run
# must not leave the work tree changed. Otherwise they go to a temporary folder and are still checked.
README_SCREENSHOTS = Path(__file__).parents[1] / "docs" / "screenshots"
CLINIC = "northside"
NOTE = "raised in supervision (browser test)"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The same sample network as `alliance demo` (4 clinics, 30 dyads each, 16 weeks, seed 7)."""
    return build_home(tmp_path_factory.mktemp("browser") / "home", clinics=4, dyads_per_clinic=30, weeks=16)


@pytest.fixture(scope="module")
def server(demo: Settings) -> Iterator[str]:
    port = free_port()
    process: subprocess.Popen[bytes] = launch.start(demo.home, CLINIC, port)
    try:
        launch.wait_ready(port, 60, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        launch.stop(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield chromium
        chromium.close()


def settle(page: Page) -> None:
    """Wait until Streamlit has finished the current run and the charts have drawn."""
    page.wait_for_timeout(300)
    page.wait_for_selector("[data-testid='stStatusWidget']", state="detached", timeout=30_000)
    page.wait_for_timeout(700)


def test_acknowledge_a_flag_in_the_browser(demo: Settings, server: str, browser: Browser, tmp_path: Path) -> None:
    shots = README_SCREENSHOTS if os.environ.get("ALLIANCE_UPDATE_SCREENSHOTS") == "1" else tmp_path
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    started = time.perf_counter()
    page.goto(server)
    expect(page.get_by_text("Flags in queue")).to_be_visible(timeout=30_000)
    expect(page.locator("[data-testid='stDataFrame']").first).to_be_visible()
    print(f"queue page loaded in {time.perf_counter() - started:.2f} s (first visit after the server started)")
    settle(page)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=shots / "queue.png")

    page.get_by_role("button", name="Open dyad").click()
    expect(page.get_by_text("Review a flag")).to_be_visible(timeout=30_000)
    expect(page.locator("[data-testid='stVegaLiteChart']").first).to_be_visible()
    settle(page)
    assert "page=Dyad" in page.url
    page.screenshot(path=shots / "dyad.png")

    page.get_by_label("Reviewed by").fill("Dr Browser")
    page.get_by_label("Note").fill(NOTE)
    page.get_by_role("button", name="Save review").click()
    done = page.get_by_text(re.compile(r"Flag [0-9a-f]{16}: open → acknowledged"))
    expect(done).to_be_visible(timeout=30_000)
    flag_id = re.search(r"Flag ([0-9a-f]{16})", done.inner_text()).group(1)  # type: ignore[union-attr]
    expect(page.get_by_text("No review yet.")).to_have_count(0)  # the reviews table is drawn after the write

    with duckdb.connect(str(demo.warehouse), read_only=True) as con:
        status = con.execute("SELECT status FROM flags WHERE flag_id = ?", [flag_id]).fetchone()
        reviews = con.execute(
            "SELECT reviewed_by, from_status, to_status, note FROM reviews WHERE flag_id = ?", [flag_id]
        ).fetchall()
    assert status == ("acknowledged",)
    assert reviews == [("Dr Browser", "open", "acknowledged", NOTE)]
    page.close()
