"""The command line as a user types it, through typer's CliRunner, on real homes."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alliance.cli import app
from alliance.clinics import load_clinics

runner = CliRunner()
README = Path(__file__).parents[1] / "README.md"


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_init_creates_home_with_private_key(tmp_path: Path) -> None:
    home = tmp_path / "h"
    code, out = run("init", "--home", str(home))
    assert code == 0, out
    assert (home / "inbox").is_dir() and (home / "archive").is_dir()
    assert stat.S_IMODE((home / "pseudonym.key").stat().st_mode) == 0o600
    assert load_clinics(home / "clinics.toml") == {}  # the example is all comments
    key = (home / "pseudonym.key").read_text()
    assert run("init", "--home", str(home))[0] == 0
    assert (home / "pseudonym.key").read_text() == key  # never overwritten


def test_sample_ingest_status_round_trip(tmp_path: Path) -> None:
    home = str(tmp_path / "h")
    code, out = run("sample", "--clinics", "4", "--weeks", "10", "--seed", "3", "--dyads", "12", "--home", home)
    assert code == 0, out
    assert set(load_clinics(Path(home) / "clinics.toml")) == {"northside", "rheinpark", "harbor", "lakeview"}
    code, out = run("ingest", "--home", home)
    assert code == 0, out
    assert "top quarantine reasons" in out and "warehouse:" in out
    assert len(re.findall(r"│ loaded\b", out)) == 5
    assert "5 file(s): 5 loaded; rows:" in out  # the run's totals, not only the last file's
    code, out = run("status", "--home", home)
    assert code == 0 and "northside" in out and "lakeview" in out
    code, out = run("ingest", "--home", home)
    assert code == 0 and "nothing to ingest" in out


def test_domain_errors_are_one_line_and_exit_1(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "x.csv"
    code, out = run("ingest", str(missing), "--clinic", "north", "--home", str(tmp_path / "h"))
    assert code == 1
    assert out.strip().splitlines() == [
        f"Error: {tmp_path / 'h' / 'clinics.toml'}: no clinics.toml; run `alliance init` first"
    ]


def test_rejected_file_exits_2_with_its_reason(tmp_path: Path) -> None:
    home = tmp_path / "h"
    run("sample", "--clinics", "1", "--weeks", "8", "--dyads", "10", "--home", str(home))
    broken = home / "inbox" / "northside" / "broken.csv"
    broken.write_text("Client ID,Clinician\nN-1,t1\n")
    code, out = run("ingest", str(broken), "--home", str(home))
    assert code == 2
    assert "broken.csv: rejected: broken.csv: missing required column(s)" in out


def test_expectations_lists_every_registry_suite() -> None:
    code, out = run("expectations")
    assert code == 0
    for suite in ("SRS", "ORS", "WAI_SR", "CSRS", "ARM5"):
        assert suite in out
    assert "MISSING" not in out


@pytest.mark.parametrize("command", sorted(c.name or c.callback.__name__ for c in app.registered_commands))  # type: ignore[union-attr]
def test_every_command_is_documented_in_the_readme(command: str) -> None:
    text = README.read_text(encoding="utf-8")
    assert f"alliance {command}" in text, f"README lacks an example of `alliance {command}`"
