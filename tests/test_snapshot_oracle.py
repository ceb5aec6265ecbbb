"""Snapshots staged by clinic batch and written in one transaction hold exactly what the clinic-by-clinic writer
(tests/reference/snapshots.py) writes: the same tables, column types, rows and views, network and clinics alike."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from alliance.errors import StorageError
from alliance.home import init_home
from alliance.readers import sha256_of
from alliance.samples import SampleFile, add_profiles, generate_sample
from alliance.settings import Settings, load_settings
from alliance.storage import UNDATED_CHANGE, Warehouse, snapshot_tables, table_checksums
from alliance.storage import snapshots as snapshots_module
from flows.nightly import run_nightly
from flows.pipeline import ingest_file
from flows.reviews import list_cases, list_flags, rescore, review_case, review_flag
from tests.conftest import TEST_KEY
from tests.reference.snapshots import write_snapshot


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Five clinics of realistic exports after a night, with flag and case reviews carrying notes."""
    root = tmp_path_factory.mktemp("oracle")
    settings = load_settings(root / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(root / "drop", clinics=5, weeks=14, seed=11, dyads_per_clinic=10)
    add_profiles(settings.clinics_file, sample.profiles)
    for file in sample.files:
        target = settings.inbox / file.clinic_id / file.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.path.read_bytes())
    run_nightly(settings)
    flags = list_flags(settings, status="open")
    for flag_id in flags["flag_id"].head(3):
        review_flag(settings, flag_id, "acknowledged", "dr.lee", "discussed in supervision")
    for case_id in list_cases(settings)["case_id"].head(2):
        review_case(settings, case_id, "acknowledged", "dr.lee", "call planned")
    return settings


def _contents(path: Path) -> dict[str, object]:
    """Everything a reader of a snapshot file sees: tables with their column types and rows, and the views."""
    assert not path.with_name(path.name + ".wal").exists()
    with duckdb.connect(str(path), read_only=True) as con:
        types = con.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() ORDER BY table_name, column_index"
        ).fetchall()
        views = con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall()
        meta = sorted(con.execute("SELECT * FROM meta").fetchall())
        return {"types": types, "views": views, "meta": meta, "rows": table_checksums(con)}


def _first_night(tmp_path: Path, settings: Settings) -> tuple[list[SampleFile], Callable[[list[SampleFile]], None]]:
    """Five clinics' first night run on a new home; returns the files of a second night (a new clinic's file, a
    corrected re-export) and the function that lands files and runs the night."""
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(tmp_path / "drop", clinics=5, weeks=14, seed=11, dyads_per_clinic=10)
    add_profiles(settings.clinics_file, sample.profiles)
    later = [f for f in sample.files if f.clinic_id == "lakeview" or "corrected" in f.path.name]
    assert len(later) == 2

    def land(files: list[SampleFile]) -> None:
        for file in files:
            target = settings.inbox / file.clinic_id / file.path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.path.read_bytes())
        run_nightly(settings)

    land([f for f in sample.files if f not in later])
    return later, land


@pytest.mark.parametrize(
    ("batch", "writers", "sessions"), [(1, 1, None), (2, 3, None), (100, 1, None), (100, 3, None), (100, 3, 1)]
)
def test_published_snapshots_equal_the_clinic_by_clinic_writer(
    network: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int, writers: int, sessions: int | None
) -> None:
    monkeypatch.setattr(snapshots_module, "CLINIC_BATCH", batch)
    monkeypatch.setattr(snapshots_module, "SNAPSHOT_WRITERS", writers)
    if sessions is not None:  # every clinic staged alone: read from the warehouse
        monkeypatch.setattr(snapshots_module, "STAGED_SESSIONS", sessions)
    warehouse = Warehouse.of(network)
    folder = tmp_path / "published"
    with warehouse.writer() as writer:
        published = writer.publish(folder, None)
        clinics = [p.name.removeprefix("clinic-").removesuffix(".duckdb") for p in published[1:]]
        assert len(clinics) == 5
        for clinic_id in [None, *clinics]:
            name = "network.duckdb" if clinic_id is None else f"clinic-{clinic_id}.duckdb"
            write_snapshot(writer.con, tmp_path / name, clinic_id)
    for path in published:
        expected = _contents(tmp_path / path.name)
        assert _contents(path) == expected, path.name
        rows = expected["rows"]
        assert isinstance(rows, dict) and rows["ratings"][0] > 0 and rows["flags"][0] > 0
    # each review reaches the one clinic snapshot that owns its flag
    reviews = [_contents(p)["rows"]["reviews"][0] for p in published]  # type: ignore[index]
    assert reviews[0] >= 3 and sum(reviews[1:]) == reviews[0]


def test_a_publish_stages_clinics_in_batches_of_bounded_sessions(
    network: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clinics are staged in order, in batches whose sessions stay within ``STAGED_SESSIONS`` (a larger clinic
    alone): staged together, a full-scale backfill's 100 clinics took twice as long to publish."""
    warehouse = Warehouse.of(network)
    with warehouse.writer() as writer:
        sizes = dict(writer.con.execute("SELECT clinic_id, sum(sessions) FROM dyads GROUP BY 1").fetchall())
    bound = max(sizes.values()) + min(sizes.values())  # room for the largest clinic and the smallest beside it
    monkeypatch.setattr(snapshots_module, "STAGED_SESSIONS", bound)
    batches: list[list[str]] = []
    stage = snapshots_module.SnapshotPublisher._staged

    @contextlib.contextmanager
    def spy(self: snapshots_module.SnapshotPublisher, clinic_ids: list[str], *args: object) -> Iterator[object]:
        batches.append(list(clinic_ids))
        with stage(self, clinic_ids, *args) as source:  # type: ignore[arg-type]
            yield source

    monkeypatch.setattr(snapshots_module.SnapshotPublisher, "_staged", spy)
    with warehouse.writer() as writer:
        writer.publish(tmp_path / "published", None)
    assert [clinic for batch in batches for clinic in batch] == sorted(sizes)
    assert 1 < len(batches) < len(sizes)
    assert all(len(batch) == 1 or sum(sizes[c] for c in batch) <= bound for batch in batches), (batches, sizes)


def test_a_snapshot_that_fails_fails_the_publish_and_every_written_file_is_recorded(
    network: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files written side by side: one that fails raises its own error; the others still being written finish,
    and every file in place is recorded with its checksum; the session is left as it was."""
    monkeypatch.setattr(snapshots_module, "SNAPSHOT_WRITERS", 3)
    monkeypatch.setattr(snapshots_module, "CLINIC_BATCH", 2)
    settle = snapshots_module.settle_snapshot
    with Warehouse.of(network).writer() as writer:
        clinics = [r[0] for r in writer.con.execute("SELECT DISTINCT clinic_id FROM exports ORDER BY 1").fetchall()]
    failing = f".clinic-{clinics[1]}.duckdb.partial"

    def settle_or_fail(path: Path, group: str | None) -> None:
        if path.name == failing:
            raise OSError(5, "Input/output error")
        settle(path, group)

    monkeypatch.setattr(snapshots_module, "settle_snapshot", settle_or_fail)
    folder = tmp_path / "published"
    with Warehouse.of(network).writer() as writer:
        threshold = writer.con.execute("SELECT current_setting('checkpoint_threshold')").fetchall()
        with pytest.raises(OSError, match="Input/output error"):
            writer.publish(folder, None)
        assert writer.con.execute("SELECT current_setting('checkpoint_threshold')").fetchall() == threshold
        attached = writer.con.execute("SELECT database_name FROM duckdb_databases() WHERE NOT internal").fetchall()
        assert attached == [("warehouse",)]
        recorded = dict(writer.con.execute("SELECT path, sha256 FROM snapshots").fetchall())
        written = sorted(folder.iterdir())
        assert "network.duckdb" in [p.name for p in written] and f"clinic-{clinics[0]}.duckdb" in [
            p.name for p in written
        ]
        assert f"clinic-{clinics[1]}.duckdb" not in [p.name for p in written]
        for path in written:  # nothing half-written left, and every file in place recorded as it is
            assert recorded[path.name] == sha256_of(path), path.name
        monkeypatch.setattr(snapshots_module, "settle_snapshot", settle)
        assert len(writer.publish(folder, None)) == len(clinics) + 1  # the same session publishes again


def test_a_publish_names_each_clinic_once_and_never_runs_inside_a_transaction(
    network: Settings, tmp_path: Path
) -> None:
    """The files are written on other connections, which see only what is committed: a publish inside a
    transaction would miss its writes, so it is refused; a clinic named twice is written once."""
    folder = tmp_path / "published"
    with Warehouse.of(network).writer() as writer:
        clinic = writer.con.execute("SELECT min(clinic_id) FROM exports").fetchall()[0][0]
        published = writer.publish(folder, [clinic, clinic, clinic])
        assert [p.name for p in published] == ["network.duckdb", f"clinic-{clinic}.duckdb"]
        with pytest.raises(StorageError, match="never inside a transaction"), writer.transaction():
            writer.publish(folder, [clinic])
        assert writer.publish(folder, [clinic]) == published


@pytest.mark.parametrize("diff_rows", [1, snapshot_tables.DIFF_ROWS])
def test_a_republished_snapshot_writes_what_changed_and_equals_a_fresh_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, diff_rows: int
) -> None:
    """Every table compared row by row (diff_rows 1), or the few-row tables written whole into the copy."""
    monkeypatch.setattr(snapshot_tables, "DIFF_ROWS", diff_rows)
    settings = load_settings(tmp_path / "home")
    later, land = _first_night(tmp_path, settings)
    filled: list[tuple[str, bool]] = []
    fill = snapshots_module.SnapshotPublisher._fill

    def spy(self: snapshots_module.SnapshotPublisher, table: str, *args: object, **kwargs: object) -> None:
        filled.append((table, args[2] is not None))  # held: the table was in a copied snapshot
        fill(self, table, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshots_module.SnapshotPublisher, "_fill", spy)
    compared: list[str] = []
    same_columns = snapshots_module.SnapshotPublisher._same_columns

    def compare(self: snapshots_module.SnapshotPublisher, table: str, *args: object) -> object:
        compared.append(table)
        return same_columns(self, table, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshots_module.SnapshotPublisher, "_same_columns", compare)
    warehouse = Warehouse.of(settings)
    folder = warehouse.snapshots

    def check(round_: str) -> None:
        (tmp_path / round_).mkdir()
        with warehouse.writer() as writer:
            published = writer.publish(folder, None)
            for path in published:
                clinic_id = None if path.name == "network.duckdb" else path.stem.removeprefix("clinic-")
                write_snapshot(writer.con, tmp_path / round_ / path.name, clinic_id)
        for path in published:
            assert _contents(path) == _contents(tmp_path / round_ / path.name), (round_, path.name)

    # a second night (a new clinic's file, a corrected re-export), reviews with notes, and edits no pipeline
    # makes: an exact duplicate row, a changed reason, a deleted rating
    land(later)
    review_flag(settings, list_flags(settings)["flag_id"][0], "acknowledged", "dr.lee", "discussed in supervision")
    with warehouse.writer() as writer:
        writer.con.execute("INSERT INTO quarantine SELECT * FROM quarantine LIMIT 1")
        writer.con.execute(
            "UPDATE flags SET reason = reason || ' (edited)' WHERE flag_id = (SELECT min(flag_id) FROM flags)"
        )
        writer.con.execute("DELETE FROM ratings WHERE rowid = (SELECT min(rowid) FROM ratings)")
    # a published file from another version (a column gone, a table no longer published) and a damaged one
    network = folder / "network.duckdb"
    network.chmod(0o600)
    with duckdb.connect(str(network)) as con:
        con.execute("ALTER TABLE dyads DROP COLUMN course_open")
        con.execute("CREATE TABLE retired AS SELECT 1 AS x")
        con.execute("CREATE VIEW retired_view AS SELECT 1 AS x")
        con.execute("UPDATE meta SET value = 'another' WHERE key = 'schema_digest'")
    for clinic, change in (
        ("northside", "DROP TABLE meta"),  # no meta: the views are made again, nothing else fails
        ("rheinpark", "DROP TABLE alerts; CREATE VIEW alerts AS SELECT 1 AS x"),  # in the way: written anew
    ):
        (folder / f"clinic-{clinic}.duckdb").chmod(0o600)
        with duckdb.connect(str(folder / f"clinic-{clinic}.duckdb")) as con:
            con.execute(change)
    (folder / "clinic-harbor.duckdb").chmod(0o600)
    (folder / "clinic-harbor.duckdb").write_bytes(b"not a database")
    filled.clear()
    compared.clear()
    check("second")
    with Warehouse.of(settings).writer() as writer:  # the connection is back on the warehouse, nothing attached
        assert writer.con.execute("SELECT current_database()").fetchall() == [("warehouse",)]
        assert writer.con.execute(
            "SELECT count(*) FROM duckdb_databases() WHERE database_name LIKE 'snap%'"
        ).fetchall() == [(0,)]
    assert ("ratings", True) in filled and ("ratings", False) in filled  # copied snapshots, and harbor's anew
    assert ("ratings" in compared) == (diff_rows == 1)
    # the duplicate gone again (one of two equal rows deleted), and a list that becomes NULL
    with warehouse.writer() as writer:
        writer.con.execute("DELETE FROM quarantine WHERE rowid = (SELECT max(rowid) FROM quarantine)")
        # a list that becomes NULL: DuckDB's hash() does not tell [] from NULL
        writer.con.execute(
            "UPDATE dyads SET ongoing_rules = NULL WHERE dyad_id = (SELECT min(dyad_id) FROM dyads WHERE ongoing_rules = [])"
        )
    check("third")


def test_a_clinics_publish_compares_the_network_on_its_clinics_and_those_a_run_left_unpublished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file's publish compares the network snapshot's clinic tables on that clinic's rows (and those of any
    clinic changed after the snapshot was recorded) and still equals the oracle's; a change outside the
    recorded columns waits for the nightly, which compares every row."""
    monkeypatch.setattr(snapshot_tables, "SCOPED_DIFF_ROWS", 1)  # every table compared, as the network's are
    settings = load_settings(tmp_path / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(tmp_path / "drop", clinics=5, weeks=14, seed=11, dyads_per_clinic=10)
    add_profiles(settings.clinics_file, sample.profiles)
    later = next(f for f in sample.files if "corrected" in f.path.name)
    for file in sample.files:
        if file is not later:
            target = settings.inbox / file.clinic_id / file.path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.path.read_bytes())
    run_nightly(settings)
    warehouse = Warehouse.of(settings)
    network = warehouse.snapshots / "network.duckdb"
    scopes: dict[str, list[str] | None] = {}
    fill = snapshots_module.SnapshotPublisher._fill

    def spy(self: snapshots_module.SnapshotPublisher, table: str, *args: object, **kwargs: object) -> None:
        network = args[1] is None  # a clinic's tables are selected with its id: written beside, in any order
        if network and (args[-1] is not None or table == "ratings"):
            scopes[table] = args[-1]  # type: ignore[assignment]
        fill(self, table, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshots_module.SnapshotPublisher, "_fill", spy)

    def matches_the_oracle(round_: str) -> bool:
        with warehouse.writer() as writer:
            write_snapshot(writer.con, tmp_path / f"{round_}.duckdb", None)
        return _contents(network) == _contents(tmp_path / f"{round_}.duckdb")

    with warehouse.writer() as writer:  # another clinic's flag changed by a run killed before its publish
        other = writer.con.execute(
            "SELECT min(clinic_id) FROM flags WHERE clinic_id <> ?", [later.clinic_id]
        ).fetchall()[0][0]
        writer.con.execute(
            "UPDATE flags SET reason = reason || ' (rescored)', updated_at = now() "
            "WHERE flag_id = (SELECT min(flag_id) FROM flags WHERE clinic_id = ?)",
            [other],
        )
        # and a third clinic's alert, recorded after the publish of the run that sent it (as the nightly does)
        alerted = writer.con.execute(
            "SELECT max(clinic_id) FROM flags WHERE clinic_id NOT IN (?, ?)", [later.clinic_id, other]
        ).fetchall()[0][0]
        writer.con.execute(
            "INSERT INTO alerts VALUES ('k1', 'digest', ?, 'lead@clinic.example', 'sent', now(), NULL, NULL, NULL)",
            [alerted],
        )
    target = settings.inbox / later.clinic_id / later.path.name
    target.write_bytes(later.path.read_bytes())
    assert ingest_file(target, settings, clinic_id=later.clinic_id).status == "loaded"
    assert matches_the_oracle("file")
    assert scopes["ratings"] == sorted({later.clinic_id, other})  # its clinic and the one left unpublished
    assert scopes["quarantine"] == scopes["ratings"]  # a small table compared on those rows too
    assert scopes["alerts"] == sorted({later.clinic_id, other, alerted})  # the alert: its own table only

    with warehouse.writer() as writer:  # a change no recorded column dates
        writer.con.execute(
            "UPDATE dyads SET sessions = sessions + 1 WHERE dyad_id = (SELECT min(dyad_id) FROM dyads "
            "WHERE clinic_id = ?)",
            [other],
        )
    with warehouse.writer() as writer:
        writer.publish(warehouse.snapshots, [later.clinic_id])
    assert scopes["ratings"] == [later.clinic_id]
    assert not matches_the_oracle("missed")
    run_nightly(settings)  # nothing to sweep: the settle step still publishes, comparing every row
    assert scopes["ratings"] is None
    assert matches_the_oracle("nightly")


def test_a_publish_by_dyad_replaces_the_changed_dyads_rows_and_equals_the_oracle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Snapshots brought up to date dyad by dyad hold what the oracle writes: after a night's files, after a
    queue's risk moved (no column dates it: the dyads summary shows it), after a change no column dates at all
    (a full scoring's marks: its meta stamp sends the next publish back to every row), and when a snapshot file is
    newer than its record (a restored warehouse)."""
    monkeypatch.setattr(snapshot_tables, "BY_DYAD_ROWS", 1)  # the sample's tables are small
    monkeypatch.setattr(snapshot_tables, "BY_DYAD_TABLE_ROWS", 1)
    # reliable change is not re-estimated by the second night: its full scoring would compare every row
    settings = load_settings(tmp_path / "home").model_copy(update={"recalibrate_growth": 100.0})
    later, land = _first_night(tmp_path, settings)
    by_dyad: list[tuple[int, bool]] = []
    fill = snapshots_module.SnapshotPublisher._fill

    def spy(self: snapshots_module.SnapshotPublisher, table: str, *args: object, **kwargs: object) -> None:
        if table == "dyad_sessions":
            by_dyad.append((self.con.execute("SELECT count(*) FROM snapshot_dyads").fetchall()[0][0]
                            if kwargs.get("by_dyad") else -1, bool(kwargs.get("by_dyad"))))  # fmt: skip
        fill(self, table, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshots_module.SnapshotPublisher, "_fill", spy)
    warehouse = Warehouse.of(settings)

    def matches_the_oracle(round_: str, clinic: str | None = None) -> list[bool]:
        """Whether each snapshot written was by dyad, after checking the published ones (``clinic``'s and the
        network's, else all) against the oracle."""
        (tmp_path / round_).mkdir()
        published = sorted(warehouse.snapshots.glob("*.duckdb" if clinic is None else f"*{clinic}.duckdb"))
        published = sorted({*published, warehouse.snapshots / "network.duckdb"})
        with warehouse.writer() as writer:
            for path in published:
                clinic_id = None if path.name == "network.duckdb" else path.stem.removeprefix("clinic-")
                write_snapshot(writer.con, tmp_path / round_ / path.name, clinic_id)
        flags = [d for _, d in by_dyad]
        by_dyad.clear()
        for path in published:
            assert _contents(path) == _contents(tmp_path / round_ / path.name), (round_, path.name)
        return flags

    land(later)  # a second night: a new clinic's file, a corrected re-export
    assert any(matches_the_oracle("night"))

    def publish(clinic: str) -> None:
        with warehouse.writer() as writer:
            writer.publish(warehouse.snapshots, [clinic])

    with warehouse.writer() as writer:  # a queue's risk moved, as settling a clinic writes it: no column dates it
        dyad, clinic = writer.con.execute("SELECT dyad_id, clinic_id FROM flags ORDER BY flag_id LIMIT 1").fetchall()[0]
        writer.con.execute("UPDATE dyads SET risk_score = risk_score + 0.5 WHERE dyad_id = ?", [dyad])
        writer.con.execute("UPDATE flags SET risk_score = risk_score + 0.5 WHERE dyad_id = ?", [dyad])
    publish(clinic)
    assert by_dyad[0] == (1, True)  # the network's snapshot: that one dyad replaced
    assert matches_the_oracle("risk", clinic) == [True, True]

    stamp = datetime.now(UTC)  # a full scoring's marks: stamped, so the next publish compares every row
    with warehouse.writer() as writer:
        writer.con.execute("UPDATE dyad_sessions SET risk = risk + 1 WHERE dyad_id = ?", [dyad])
        writer.set_meta(UNDATED_CHANGE, stamp.isoformat())
    publish(clinic)
    assert matches_the_oracle("undated", clinic) == [False, False]
    with warehouse.writer() as writer:
        assert datetime.fromisoformat(str(writer.meta_value(UNDATED_CHANGE))) == stamp
    rescore(settings)  # a full scoring stamps itself
    with warehouse.writer() as writer:
        assert datetime.fromisoformat(str(writer.meta_value(UNDATED_CHANGE))) > stamp
    by_dyad.clear()

    with warehouse.writer() as writer:  # a snapshot newer than its record: compared on every row
        writer.con.execute("UPDATE dyad_sessions SET risk = risk + 1 WHERE dyad_id = ?", [dyad])
    for name in ("network.duckdb", f"clinic-{clinic}.duckdb"):
        path = warehouse.snapshots / name
        os.utime(path, (path.stat().st_atime, time.time() + 60))
    publish(clinic)
    assert matches_the_oracle("restored", clinic) == [False, False]


@pytest.mark.parametrize("table_rows", [1, snapshot_tables.BY_DYAD_TABLE_ROWS])
def test_a_batch_stages_only_recently_rated_rows_where_snapshots_go_by_dyad_and_each_equals_the_oracle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table_rows: int
) -> None:
    """A clinic batch stages, for the snapshots it will bring up to date by dyad, only the rows of dyads rated
    since their publish. What the staging left out is read from the warehouse where a snapshot needs it: a rated
    table small enough to be written whole (``table_rows``), a snapshot newer than its record (a restored file,
    written from every row), a rated table of another shape (rewritten). Every snapshot equals the oracle."""
    monkeypatch.setattr(snapshot_tables, "BY_DYAD_ROWS", 1)  # the sample's tables are small
    monkeypatch.setattr(snapshot_tables, "BY_DYAD_TABLE_ROWS", table_rows)
    settings = load_settings(tmp_path / "home").model_copy(update={"recalibrate_growth": 100.0})
    later, land = _first_night(tmp_path, settings)
    warehouse = Warehouse.of(settings)
    staged: dict[str, tuple[int, int]] = {}  # per clinic: its ratings staged, and all of them
    stage = snapshots_module.SnapshotPublisher._staged

    @contextlib.contextmanager
    def spy(self: snapshots_module.SnapshotPublisher, clinic_ids: list[str], *args: object) -> Iterator[object]:
        with stage(self, clinic_ids, *args) as source:  # type: ignore[arg-type]
            for clinic in clinic_ids:
                held, every = (
                    self.con.execute(f"SELECT count(*) FROM {table} WHERE clinic_id = ?", [clinic]).fetchall()[0][0]
                    for table in (source["ratings"], "ratings")
                )
                staged[clinic] = (held, every)
            yield source

    def matches_the_oracle(round_: str) -> None:
        (tmp_path / round_).mkdir()
        with warehouse.writer() as writer:
            for path in sorted(warehouse.snapshots.glob("*.duckdb")):
                clinic_id = None if path.name == "network.duckdb" else path.stem.removeprefix("clinic-")
                write_snapshot(writer.con, tmp_path / round_ / path.name, clinic_id)
        for path in sorted(warehouse.snapshots.glob("*.duckdb")):
            assert _contents(path) == _contents(tmp_path / round_ / path.name), (round_, path.name)

    monkeypatch.setattr(snapshots_module.SnapshotPublisher, "_staged", spy)
    land(later)  # a second night: a new clinic's file (every row staged), a corrected re-export
    new, corrected = sorted(staged.items(), key=lambda kv: kv[1][0] == kv[1][1], reverse=True)
    assert new[1][0] == new[1][1] > 0 and 0 < corrected[1][0] < corrected[1][1] / 2, staged
    matches_the_oracle("night")

    with warehouse.writer() as writer:  # a dyad of each of two clinics rated anew
        clinics = [
            row[0] for row in writer.con.execute("SELECT DISTINCT clinic_id FROM ratings ORDER BY 1 LIMIT 2").fetchall()
        ]
        writer.con.execute(
            "UPDATE ratings SET total = total + 1, updated_at = now() WHERE dyad_id IN "
            "(SELECT min(dyad_id) FROM ratings WHERE list_contains(?, clinic_id) GROUP BY clinic_id)",
            [clinics],
        )
    restored = warehouse.snapshots / f"clinic-{clinics[0]}.duckdb"
    os.utime(restored, (restored.stat().st_atime, time.time() + 60))
    altered = warehouse.snapshots / f"clinic-{clinics[1]}.duckdb"  # by dyad, but its ratings of another shape
    stamp = altered.stat()
    altered.chmod(0o600)
    with duckdb.connect(str(altered)) as con:
        con.execute("ALTER TABLE ratings ADD COLUMN note VARCHAR")
    os.utime(altered, (stamp.st_atime, stamp.st_mtime))
    staged.clear()
    with warehouse.writer() as writer:
        writer.publish(warehouse.snapshots, clinics)
    assert all(0 < held < every for held, every in staged.values()) and len(staged) == 2, staged
    matches_the_oracle("restored")
