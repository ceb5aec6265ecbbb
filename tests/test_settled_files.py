"""Files as they really arrive: still being written, or with names too long for the archive."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
from typer.testing import CliRunner

from alliance.cli import app
from alliance.settings import Settings
from alliance.storage import Warehouse
from flows.archive import archive_path
from flows.nightly import run_nightly
from flows.pipeline import ingest_file
from flows.watcher import settled, wait_until_settled
from tests.conftest import put
from tests.test_pipeline import HEADER, ROWS

LINES = 200
# Appends whole, flushed lines with pauses, like a `>>` loop or a sync client: every read ends in a newline.
WRITER = textwrap.dedent(
    """
    import sys, time
    path, lines = sys.argv[1], int(sys.argv[2])
    with open(path, "a", encoding="utf-8") as out:
        for i in range(lines):
            out.write(f"C-{i:04d},t1,01/05/2026,1,9,9,9,9,,\\n")
            out.flush()
            time.sleep(0.015)
    """
)


def query(settings: Settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_settled_is_the_watchers_definition(tmp_path: Path) -> None:
    assert settled(10, 2.0, 2.0) and not settled(10, 1.9, 2.0)
    assert not settled(0, 2.0, 2.0) and settled(0, 6.0, 2.0)  # an empty file may still be filling
    old = tmp_path / "old.csv"
    old.write_text("x\n")
    os.utime(old, (1_700_000_000, 1_700_000_000))
    assert wait_until_settled(old, 2.0, timeout=0) == (2, 1_700_000_000 * 10**9)
    fresh = tmp_path / "fresh.csv"
    fresh.write_text("x\n")
    assert wait_until_settled(fresh, 60.0, timeout=0) is None
    assert wait_until_settled(tmp_path / "gone.csv", 2.0, timeout=0) is None


def test_a_file_still_being_written_is_never_loaded_in_part(two_clinics: Settings) -> None:
    settings = two_clinics.model_copy(update={"settle_s": 0.3})
    path = settings.inbox / "north" / "growing.csv"
    path.write_text(HEADER, encoding="utf-8")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(LINES)])
    statuses = []
    try:
        while writer.poll() is None:  # runs keep coming while the exporter writes, as cron and the watcher do
            if path.exists():
                statuses.append(ingest_file(path, settings).status)
    finally:
        writer.wait(timeout=60)
    while path.exists():  # and once more after it finished
        statuses.append(ingest_file(path, settings).status)
    assert writer.returncode == 0
    assert set(statuses) <= {"unsettled", "loaded"}, statuses
    assert query(settings, "SELECT count(*) FROM ratings") == [(LINES,)]  # every line, none lost
    warehouse = Warehouse.of(settings)
    with warehouse.writer() as checker:
        assert checker.verify(warehouse.snapshots) == []  # archived bytes are the ledger's bytes
    for archived, digest in query(settings, "SELECT archived_as, sha256 FROM exports"):
        assert hashlib.sha256(Path(archived).read_bytes()).hexdigest() == digest


def test_verify_names_an_archived_file_that_is_not_the_bytes_loaded(two_clinics: Settings) -> None:
    result = ingest_file(put(two_clinics, "north", "a.csv", ROWS), two_clinics)
    with open(result.archived_as or "", "a", encoding="utf-8") as handle:
        handle.write(ROWS[0] + "\n")
    verify = CliRunner().invoke(app, ["verify", "--home", str(two_clinics.home)])
    assert verify.exit_code == 1
    assert "Error: archived file" in verify.output and "is not the bytes loaded from a.csv" in verify.output


def test_a_name_too_long_for_the_archive_is_shortened_and_the_next_night_is_clean(two_clinics: Settings) -> None:
    limit = os.pathconf(two_clinics.inbox, "PC_NAME_MAX")
    long_ascii = "n" * (limit - len(".csv")) + ".csv"  # fits the inbox, not with the archive's prefix
    long_utf8 = "é" * ((limit - len(".csv")) // 2) + ".csv"  # two bytes a character: cut on a boundary
    for name in (long_ascii, long_utf8):
        put(two_clinics, "north", name, ROWS if name == long_ascii else [r.replace("C-1", "C-9") for r in ROWS])
    first = run_nightly(two_clinics)
    assert first.errors == [] and sorted(r.status for r in first.exports) == ["loaded", "loaded"]
    for result in first.exports:
        archived = Path(result.archived_as or "")
        assert archived.is_file() and len(archived.name.encode()) <= limit
        assert archived.name.startswith(f"{result.export_id}__nnn" if result.file_name == long_ascii else
                                        f"{result.export_id}__éé") and archived.suffix == ".csv"  # fmt: skip
    assert query(two_clinics, "SELECT file_name FROM exports ORDER BY file_name") == [(long_ascii,), (long_utf8,)]
    second = run_nightly(two_clinics)
    assert second.exports == [] and second.errors == []


def test_archive_names_stay_unique_when_shortened(settings: Settings) -> None:
    name = "x" * 300 + ".csv"
    one = archive_path(settings, "north", "0" * 16, name, rejected=False)
    two = archive_path(settings, "north", "1" * 16, name, rejected=True)
    assert one.name != two.name and len(one.name.encode()) <= 255 and one.name.endswith("….csv")


def test_a_file_over_the_size_cap_is_rejected_without_being_read_into_memory(two_clinics: Settings) -> None:
    capped = two_clinics.model_copy(update={"max_file_mb": 0.0001})  # 100 bytes
    path = put(capped, "north", "big.csv", ROWS)
    original = path.read_bytes()
    result = ingest_file(path, capped)
    assert result.status == "rejected" and result.error == "big.csv: the file is 0 MB, over the 0 MB limit"
    assert Path(result.archived_as or "").read_bytes() == original and not path.exists()
    ((digest,),) = query(capped, "SELECT sha256 FROM exports")
    assert digest == hashlib.sha256(original).hexdigest()
