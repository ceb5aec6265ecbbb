"""End to end in a real browser: start the dashboard, acknowledge a case in headless Chromium, check the warehouse."""

from __future__ import annotations

import getpass
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
from pydantic import SecretStr

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


def timed_load(page: Page, url: str) -> float:
    """Seconds from navigation until the queue's table is drawn."""
    started = time.perf_counter()
    page.goto(url)
    expect(page.get_by_text("Cases in queue")).to_be_visible(timeout=30_000)
    expect(page.locator("[data-testid='stDataFrame']").first).to_be_visible(timeout=30_000)
    return time.perf_counter() - started


def test_acknowledge_a_case_in_the_browser(demo: Settings, server: str, browser: Browser, tmp_path: Path) -> None:
    shots = README_SCREENSHOTS if os.environ.get("ALLIANCE_UPDATE_SCREENSHOTS") == "1" else tmp_path
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    cold = timed_load(page, server)
    warm = sorted(timed_load(page, server) for _ in range(5))  # the browser now has Streamlit's frontend cached
    print(f"queue page: first visit {cold:.2f} s; warm median {warm[2]:.2f} s (min {warm[0]:.2f}, max {warm[-1]:.2f})")
    settle(page)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=shots / "queue.png")

    grid = page.locator("[data-testid='stDataFrame']").first.bounding_box()
    assert grid is not None
    page.mouse.click(grid["x"] + 15, grid["y"] + 35 + 40)  # the first row's selection box (the grid is a canvas)
    expect(page.get_by_text("Review the case")).to_be_visible(timeout=30_000)
    assert "case=" in page.url
    page.get_by_role("button", name="← Back to the queue").click()
    expect(page.get_by_text("Cases in queue")).to_be_visible(timeout=30_000)
    settle(page)
    expect(page.get_by_text("Review the case")).to_have_count(0)  # back stays back: the old pick is not resent
    assert "case=" not in page.url

    page.get_by_role("button", name="Open case").click()
    expect(page.get_by_text("Review the case")).to_be_visible(timeout=30_000)
    expect(page.locator("[data-testid='stVegaLiteChart']").first).to_be_visible()
    settle(page)
    match = re.search(r"[?&]case=([0-9a-f]{16})", page.url)
    assert match, page.url  # a link to share
    case_id = match.group(1)
    page.set_viewport_size({"width": 1400, "height": 3000})  # Streamlit scrolls inside its own frame
    settle(page)
    page.screenshot(path=shots / "case.png")
    page.set_viewport_size({"width": 1400, "height": 1100})

    expect(page.get_by_text("serves only on this machine (127.0.0.1)")).to_be_visible()
    page.get_by_label("Note").fill(NOTE)
    page.get_by_role("button", name="Save case review").click()
    expect(page.get_by_text(f"Case {case_id}: open → acknowledged")).to_be_visible(timeout=30_000)
    expect(page.get_by_text("No review yet.")).to_have_count(0)  # the review history is drawn after the write

    with duckdb.connect(str(demo.warehouse), read_only=True) as con:
        reviews = con.execute(
            "SELECT reviewed_by, from_status, to_status, note, len(flag_ids) FROM case_reviews WHERE case_id = ?",
            [case_id],
        ).fetchall()
        flags = con.execute(
            "SELECT DISTINCT status FROM flags WHERE flag_id IN (SELECT unnest(flag_ids) FROM cases WHERE case_id = ?)",
            [case_id],
        ).fetchall()
        status = con.execute("SELECT status FROM cases WHERE case_id = ?", [case_id]).fetchone()
    assert [r[:4] for r in reviews] == [(f"local:{getpass.getuser()}", "open", "acknowledged", NOTE)]
    assert reviews[0][4] > 0 and flags == [("acknowledged",)] and status == ("acknowledged",)

    page.goto(f"{server}/?page=Trends")
    expect(page.get_by_text("weekly flagged share").first).to_be_visible(timeout=30_000)
    settle(page)
    page.screenshot(path=shots / "trends.png")
    context.close()


# --- sign-in through a real OpenID Connect provider (oidc-provider-mock, in this process) --------------------------

LEE = "lee@northside.example"


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    from oidc_provider_mock import User, run_server_in_thread

    people = [User(sub="lee", claims={"email": LEE}), User(sub="ray", claims={"email": "ray@rheinpark.example"})]
    with run_server_in_thread(port=0, user_claims=people) as idp:
        yield f"http://localhost:{idp.server_port}"


@pytest.fixture(scope="module")
def signed_server(demo: Settings, provider: str) -> Iterator[str]:
    with demo.clinics_file.open("a", encoding="utf-8") as handle:
        handle.write(f'\n[[access.grants]]\nemail = "{LEE}"\nclinics = ["{CLINIC}"]\n')
    port = free_port()
    settings = demo.model_copy(
        update={
            "oidc_metadata_url": f"{provider}/.well-known/openid-configuration",
            "oidc_client_id": "alliance-dashboard",
            "oidc_client_secret": SecretStr("dashboard-secret"),
            "dashboard_url": f"http://localhost:{port}",
        }
    )
    process = launch.start(demo.home, None, port, settings)  # no --clinic: access decides
    try:
        launch.wait_ready(port, 60, process)
        yield f"http://localhost:{port}"
    finally:
        launch.stop(process)


def sign_in(page: Page, server: str, who: str) -> None:
    page.goto(server)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name=who, exact=True).click()  # the provider's consent page
    expect(page.get_by_text("Signed in as").first).to_be_visible(timeout=30_000)


def test_sign_in_scopes_clinics_and_records_the_identity(demo: Settings, signed_server: str, browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.goto(signed_server)
    expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Cases in queue")).to_have_count(0)  # nothing before signing in

    sign_in(page, signed_server, "lee")
    expect(page.get_by_text("Cases in queue")).to_be_visible(timeout=30_000)
    settle(page)
    assert "northside" in page.locator("[data-testid='stSidebar']").inner_text()

    page.goto(f"{signed_server}/?clinic=rheinpark")  # another clinic, asked for by URL
    expect(page.get_by_text(f"{LEE} has no access to clinic 'rheinpark'.")).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Cases in queue")).to_have_count(0)

    page.goto(signed_server)
    page.get_by_role("button", name="Open case").click()
    expect(page.get_by_text("Review the case")).to_be_visible(timeout=30_000)
    expect(page.get_by_text(f"recorded as {LEE}")).to_be_visible()
    expect(page.get_by_label("Reviewed by")).to_have_count(0)  # no name to type
    page.get_by_text("resolved", exact=True).click()  # the other test may have acknowledged this case already
    page.get_by_label("Note").fill(NOTE)
    page.get_by_role("button", name="Save case review").click()
    done = page.get_by_text(re.compile(r"Case [0-9a-f]{16}: (open|acknowledged) → resolved"))
    expect(done).to_be_visible(timeout=30_000)
    case_id = re.search(r"Case ([0-9a-f]{16})", done.inner_text()).group(1)  # type: ignore[union-attr]
    with duckdb.connect(str(demo.warehouse), read_only=True) as con:
        reviews = con.execute(
            "SELECT reviewed_by FROM case_reviews WHERE case_id = ? AND to_status = 'resolved'", [case_id]
        ).fetchall()
        audit = con.execute(
            "SELECT actor FROM audit WHERE action = 'review_case' AND subject = ? AND detail LIKE '%resolved%'",
            [case_id],
        ).fetchall()
    assert reviews == [(LEE,)] and audit == [(LEE,)]
    page.close()


def test_a_signed_in_person_without_a_grant_sees_no_clinic(signed_server: str, browser: Browser) -> None:
    page = browser.new_page()
    sign_in(page, signed_server, "ray")
    expect(page.get_by_text("but no clinic is open to this account")).to_be_visible(timeout=30_000)
    expect(page.get_by_text("Cases in queue")).to_have_count(0)
    page.close()
