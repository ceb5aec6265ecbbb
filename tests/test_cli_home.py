"""Every command on a wrong home, a broken clinics.toml or an unknown clinic fails at once; `alliance sql` on snapshots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alliance.cli import app
from tests.conftest import TEST_KEY

runner = CliRunner()
ALLIANCE = Path(sys.executable).parent / "alliance"

# every command that works on an existing home, with the arguments it needs
ON_A_HOME = [
    ["status"],
    ["flags"],
    ["flags", "--status", "queue"],
    ["ingest"],
    ["review", "0123456789abcdef", "--status", "acknowledged", "--by", "Dr Lee"],
    ["rescore"],
    ["nightly"],
    ["verify"],
    ["backup", "--to", "BACKUPS"],
    ["rekey"],
    ["sql", "SELECT 1"],
    ["dashboard", "--port", "1"],
    ["serve"],
]
WITH_A_CLINIC = [["flags"], ["ingest"], ["sql", "SELECT 1"], ["dashboard", "--port", "1"]]


def run(args: list[str], home: Path) -> tuple[int, str]:
    args = [str(home.parent / "backups") if a == "BACKUPS" else a for a in args]
    result = runner.invoke(app, [*args, "--home", str(home)])
    return result.exit_code, result.output


@pytest.mark.parametrize("args", ON_A_HOME, ids=lambda a: " ".join(a))
def test_a_wrong_home_fails_at_once_and_creates_nothing(tmp_path: Path, args: list[str]) -> None:
    home = tmp_path / "no-such-home"
    code, out = run(args, home)
    assert code == 1, out
    assert out.strip().splitlines() == [f"Error: {home / 'clinics.toml'}: no clinics.toml; run `alliance init` first"]
    assert not home.exists()  # no empty warehouse or lock file left behind


@pytest.mark.parametrize("args", ON_A_HOME, ids=lambda a: " ".join(a))
def test_a_broken_clinics_toml_fails_at_once(tmp_path: Path, args: list[str]) -> None:
    home = tmp_path / "home"
    assert run(["init"], home)[0] == 0
    with (home / "clinics.toml").open("a", encoding="utf-8") as handle:
        handle.write("\n[clinics.north\n")
    code, out = run(args, home)
    assert code == 1, out
    assert out.startswith("Error: clinics.toml: not valid TOML") and len(out.strip().splitlines()) == 1
    assert not (home / "warehouse.duckdb").exists()


@pytest.mark.parametrize("args", WITH_A_CLINIC, ids=lambda a: " ".join(a))
def test_an_unknown_clinic_fails_at_once(tmp_path: Path, args: list[str]) -> None:
    home = tmp_path / "home"
    assert run(["sample", "--clinics", "2", "--weeks", "8", "--dyads", "2"], home)[0] == 0
    code, out = run([*args, "--clinic", "nope"], home)
    assert code == 1, out
    assert out.strip() == f"Error: unknown clinic 'nope': {home / 'clinics.toml'} has northside, rheinpark"


@pytest.fixture(scope="module")
def loaded_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("sql") / "home"
    assert run(["init"], home)[0] == 0
    (home / "pseudonym.key").write_text(TEST_KEY)
    assert run(["sample", "--clinics", "2", "--weeks", "8", "--dyads", "6"], home)[0] == 0
    code, out = run(["ingest"], home)
    assert code == 0, out
    return home


def sql(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ALLIANCE), "sql", *args, "--home", str(home)], input=stdin, capture_output=True, text=True, timeout=60
    )


def test_sql_queries_the_network_snapshot_without_client_references(loaded_home: Path) -> None:
    done = sql(loaded_home, "SELECT count(DISTINCT clinic_id) AS clinics FROM ratings")
    assert done.returncode == 0, done.stderr
    assert "│       2 │" in done.stdout
    refused = sql(loaded_home, "SELECT count(*) FROM client_refs")
    assert refused.returncode == 1 and "client_refs" in refused.stderr  # not in the network snapshot


def test_sql_with_a_clinic_opens_its_own_snapshot(loaded_home: Path) -> None:
    done = sql(loaded_home, "--clinic", "rheinpark", "SELECT DISTINCT clinic_id FROM ratings UNION ALL SELECT 'refs'")
    assert done.returncode == 0, done.stderr
    assert "rheinpark" in done.stdout and "northside" not in done.stdout
    refs = sql(loaded_home, "--clinic", "rheinpark", "SELECT count(*) > 0 AS has_refs FROM client_refs")
    assert refs.returncode == 0 and "true" in refs.stdout


def test_sql_is_read_only(loaded_home: Path) -> None:
    done = sql(loaded_home, "DELETE FROM ratings")
    assert done.returncode == 1 and "read-only" in done.stderr


def test_sql_without_a_query_is_the_interactive_shell(loaded_home: Path) -> None:
    done = sql(loaded_home, stdin="SELECT 6 * 7 AS answer;\n.quit\n")
    assert done.returncode == 0, done.stderr
    assert "42" in done.stdout and "network.duckdb (read-only" in done.stderr


def test_sql_before_any_snapshot_says_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert run(["init"], home)[0] == 0
    code, out = run(["sql", "SELECT 1"], home)
    assert code == 1 and "no snapshot yet" in out
