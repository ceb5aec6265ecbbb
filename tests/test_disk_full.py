"""A full disk: a clear error, every committed row kept, success once space is back (a real small tmpfs)."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from alliance.errors import StorageError
from alliance.home import init_home
from alliance.samples import add_profiles, generate_sample
from alliance.settings import load_settings
from alliance.storage import Warehouse
from flows.pipeline import ingest_file
from tests.conftest import TEST_KEY

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 12 MB tmpfs (needs root, as CI has); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_fails_clearly_keeps_commits_and_recovers(
    small_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(small_disk / "home").model_copy(update={"min_free_mb": 20.0})
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(tmp_path / "outbox", clinics=4, weeks=40, seed=3, dyads_per_clinic=60, profile="clean")
    add_profiles(settings.clinics_file, sample.profiles)
    targets = []
    for file in sample.files:  # the night's files arrive first; then the runs fill the disk
        target = settings.inbox / file.clinic_id / file.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.path.read_bytes())
        targets.append(target)
    loaded: list[str] = []
    caplog.set_level(logging.WARNING, logger="alliance.storage")
    with pytest.raises(StorageError) as info:
        for target in targets:
            ingest_file(target, settings)
            loaded.append(target.name)
    assert "the disk is full" in str(info.value) and "free space and run it again" in str(info.value)
    assert "MB free (warning below 20 MB)" in caplog.text  # the early warning came before the failure
    assert loaded, "at least one export committed before the disk filled"
    subprocess.run(["mount", "-o", "remount,size=96m", str(small_disk)], check=True)
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        committed = [r[0] for r in con.execute("SELECT file_name FROM exports ORDER BY received_at").fetchall()]
    # every commit kept; the export in flight either committed (the disk filled while publishing) or not at all
    assert committed[: len(loaded)] == loaded and len(committed) <= len(loaded) + 1
    for target in [t for t in targets if t.exists()]:
        assert ingest_file(target, settings).status in ("loaded", "duplicate")
    warehouse = Warehouse.of(settings)
    with warehouse.writer() as writer:
        assert writer.verify(warehouse.snapshots) == []
        files = writer.frame("SELECT count(*) AS n FROM exports").item()
    assert files == len(sample.files)
    assert not list(warehouse.snapshots.glob(".*partial*"))  # no half-written snapshot left behind
