"""Owner-only homes: every file 0600 and folder 0700 whatever the umask, read for real as another user."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alliance.backup import backup
from alliance.cli import app
from alliance.clinics import load_clinics
from alliance.home import init_home
from alliance.permissions import snapshot_groups, wide_files
from alliance.samples import add_profiles, generate_sample
from alliance.settings import Settings, load_settings
from alliance.storage import Warehouse
from flows.pipeline import ingest_file
from tests.conftest import TEST_KEY
from tests.test_clinics import GOOD

NOBODY = 65534  # Debian's nobody:nogroup
AS_ROOT = os.geteuid() == 0


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A folder anyone may enter (pytest's own tmp folders are 0700, which would hide every mistake)."""
    old = os.umask(0o022)
    folder = Path(tempfile.mkdtemp(prefix="alliance-perm-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        os.umask(old)
        shutil.rmtree(folder, ignore_errors=True)


def build(parent: Path, group: str | None = None) -> Settings:
    """A home made under umask 022: init, two clinics' exports ingested and archived, snapshots, a backup."""
    os.umask(0o022)
    settings = load_settings(parent / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(parent / "drop", clinics=2, weeks=8, seed=4, dyads_per_clinic=4)
    add_profiles(settings.clinics_file, sample.profiles)
    if group:
        text = settings.clinics_file.read_text().replace(
            "\n[clinics.northside]\n", f'\n[clinics.northside]\nsnapshot_group = "{group}"\n'
        )
        settings.clinics_file.write_text(text)
    for file in sample.files:
        target = settings.inbox / file.clinic_id / file.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(file.path, target)
        target.chmod(0o644)  # as a clinic's upload would leave it
        assert ingest_file(target, settings).status == "loaded"
    backup(settings, settings.home / "backups")
    return settings


def modes(home: Path) -> dict[str, int]:
    return {str(p.relative_to(home.parent)): stat.S_IMODE(p.stat().st_mode) for p in [home, *home.rglob("*")]}


def readable_by_nobody(paths: list[Path]) -> list[str]:
    """Which of these paths the real user nobody can open (a child process that drops root first)."""
    script = 'for p in "$@"; do head -c 1 "$p" > /dev/null 2>&1 && echo "$p"; done'

    def drop() -> None:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)

    done = subprocess.run(
        ["/bin/sh", "-c", script, "sh", *map(str, paths)], capture_output=True, text=True, preexec_fn=drop, cwd="/"
    )
    return done.stdout.split()


def test_a_home_made_under_umask_022_is_owner_only(open_parent: Path) -> None:
    settings = build(open_parent)
    found = modes(settings.home)
    kinds = {"archive", "snapshots", "backups", "warehouse.duckdb", "pseudonym.key", "clinics.toml"}
    assert kinds <= {Path(name).parts[1] for name in found if len(Path(name).parts) > 1}
    assert any("archive/northside/" in name for name in found)  # archived raw exports are checked too
    wide = {name: f"{mode:04o}" for name, mode in found.items() if mode & 0o077}
    assert wide == {}
    assert all(mode == 0o700 for name, mode in found.items() if (open_parent / name).is_dir())
    assert wide_files(settings.home, {}) == []


def test_the_wal_is_owner_only_while_it_exists(open_parent: Path) -> None:
    settings = build(open_parent)
    os.umask(0o022)
    with Warehouse.of(settings).writer() as writer:
        writer.con.execute("CREATE TABLE scratch AS SELECT range AS n FROM range(100000)")
        wal = settings.warehouse.with_name("warehouse.duckdb.wal")
        assert wal.exists() and stat.S_IMODE(wal.stat().st_mode) == 0o600
        lock = Warehouse.of(settings).lock_path
        assert stat.S_IMODE(lock.stat().st_mode) == 0o600


@pytest.mark.skipif(not AS_ROOT, reason="needs root to run a child process as the user nobody")
def test_another_local_user_reads_nothing(open_parent: Path) -> None:
    settings = build(open_parent)
    control = open_parent / "control.txt"
    control.write_text("readable")
    control.chmod(0o644)  # proves nobody can read what it is allowed to: the scan can fail
    files = [p for p in settings.home.rglob("*") if p.is_file()]
    assert readable_by_nobody([control, *files]) == [str(control)]


@pytest.mark.skipif(not AS_ROOT, reason="needs root to run a child process as the user nobody")
def test_a_clinic_group_reads_its_own_snapshot_and_nothing_else(open_parent: Path) -> None:
    settings = build(open_parent, group="nogroup")
    own = settings.home / "snapshots" / "clinic-northside.duckdb"
    info = own.stat()
    assert stat.S_IMODE(info.st_mode) == 0o440 and info.st_gid == NOBODY
    assert stat.S_IMODE(settings.home.stat().st_mode) == 0o711  # pass through, never list
    files = [p for p in settings.home.rglob("*") if p.is_file()]
    assert readable_by_nobody(files) == [str(own)]
    assert wide_files(settings.home, {"northside": "nogroup"}) == []


def test_verify_reports_files_wider_than_owner_only(open_parent: Path) -> None:
    settings = build(open_parent)
    archived = next((settings.home / "archive" / "northside").glob("*"))
    archived.chmod(0o644)
    (settings.home / "snapshots").chmod(0o755)
    result = CliRunner().invoke(app, ["verify", "--home", str(settings.home)])
    assert result.exit_code == 1
    assert f"Error: {archived}: mode 0644 is wider than 0600 (its group and other users may get in)" in result.output
    assert "snapshots: mode 0755 is wider than 0700" in result.output


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text tomllib parses from here on."""
    texts: list[str] = []
    real = tomllib.loads
    monkeypatch.setattr(tomllib, "loads", lambda text: texts.append(text) or real(text))
    return texts


def test_snapshot_groups_follow_clinics_toml_and_each_text_is_parsed_once(tmp_path: Path, parsed: list[str]) -> None:
    """Every file's writer session asks for the groups: the file is read each time, parsed once per text."""
    path = tmp_path / "clinics.toml"
    path.write_text(f'# {tmp_path}\n[clinics.a]\nsnapshot_group = "ga"\n')
    assert snapshot_groups(path) == {"a": "ga"}
    snapshot_groups(path)["a"] = "changed by a caller"
    assert snapshot_groups(path) == {"a": "ga"}
    path.write_text(f'# {tmp_path}\n[clinics.a]\nsnapshot_group = "gb"\n[clinics.b]\n')
    assert snapshot_groups(path) == {"a": "gb"}
    assert len(parsed) == 2
    path.unlink()
    assert snapshot_groups(path) == {}


def test_the_profiles_and_the_snapshot_groups_share_one_parse_of_clinics_toml(
    tmp_path: Path, parsed: list[str]
) -> None:
    """A file's run reads both; a network's clinics.toml takes ~0.2 s to parse."""
    path = tmp_path / "clinics.toml"
    path.write_text(f"# {tmp_path}\n" + GOOD.replace("[clinics.north]", '[clinics.north]\nsnapshot_group = "ga"'))
    assert list(load_clinics(path)) == ["north"]
    assert snapshot_groups(path) == {"north": "ga"}
    assert parsed.count(path.read_text()) == 1
