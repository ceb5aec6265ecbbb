"""The README works as written: every SQL example and every DuckDB shell line runs against what `make demo` makes.

The statements run in the DuckDB 1.5 CLI (the PyPI duckdb-cli the README recommends) on the published
snapshots, the files supervisors are pointed at.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alliance.cli import app

README = Path(__file__).parents[1] / "README.md"
BIN = Path(sys.executable).parent
SHELL_TOOLS = ("duckdb", ".venv/bin/duckdb", "alliance", ".venv/bin/alliance")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def sql_statements() -> list[str]:
    """Each statement of each ```sql block, without its comment lines."""
    statements = []
    for block in blocks("sql"):
        for chunk in re.split(r";\s*(?:\n|$)", block):
            lines = [line for line in chunk.splitlines() if line.strip() and not line.strip().startswith("--")]
            if lines:
                statements.append("\n".join(lines))
    return statements


def shell_lines() -> list[list[str]]:
    """The ```sh lines that query DuckDB (`duckdb …` or `alliance sql …`), as argument lists."""
    commands = []
    for block in blocks("sh"):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            pending = f"{pending}\n{line}" if pending else line
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # a quoted argument goes on to the next line
                continue
            pending = ""
            is_sql = words[:1] in (["duckdb"], [".venv/bin/duckdb"]) or words[:2] in (
                ["alliance", "sql"],
                [".venv/bin/alliance", "sql"],
            )
            if is_sql:
                commands.append(words)
    return commands


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("readme") / "demo-home"
    result = CliRunner().invoke(app, ["demo", "--home", str(home)])
    assert result.exit_code == 0, result.output
    return home


def duckdb(snapshot: Path, sql: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "duckdb"), "-readonly", str(snapshot), "-c", sql], capture_output=True, text=True, timeout=60
    )


def test_the_readme_has_sql_to_check() -> None:
    assert len(sql_statements()) >= 8
    assert len(shell_lines()) >= 3


@pytest.mark.parametrize("sql", sql_statements(), ids=lambda s: s.splitlines()[0][:50])
def test_every_sql_example_runs_in_the_duckdb_1_5_cli(demo_home: Path, sql: str) -> None:
    # a query of client references runs on a clinic's own snapshot, everything else on the network one
    name = "clinic-northside.duckdb" if "client_refs" in sql else "network.duckdb"
    done = duckdb(demo_home / "snapshots" / name, sql)
    assert done.returncode == 0 and "Error" not in done.stderr, done.stderr


@pytest.mark.parametrize("words", shell_lines(), ids=lambda w: " ".join(w)[:60])
def test_every_duckdb_shell_line_runs(demo_home: Path, words: list[str]) -> None:
    tool = BIN / Path(words[0]).name
    args = [re.sub(r"^(demo-home|/srv/alliance)(?=/|$)", str(demo_home), w) for w in words[1:]]
    done = subprocess.run([str(tool), *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0 and "Error" not in done.stderr, done.stderr
    assert done.stdout.strip()


def test_the_working_file_is_not_what_supervisors_are_told_to_open() -> None:
    text = README.read_text(encoding="utf-8")
    assert "duckdb -readonly demo-home/warehouse.duckdb" not in text
    assert "duckdb -readonly /srv/alliance/warehouse.duckdb" not in text
