"""Several exports loaded in one batch leave the warehouse that loading them one after another leaves.

The oracle is the load as first written, one export per call (tests/reference/ledger.py). Batches share rating
keys across files (a re-export repeats, corrects or restates earlier sessions), bring the same client twice,
and land on a warehouse that already holds some of their ratings. A sweep's batch (flows.batch) is checked
against ``ingest_file`` on each file in turn, with a file that fails to load and the same bytes twice.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from alliance.home import init_home
from alliance.samples import SampleSet, add_profiles, generate_sample
from alliance.settings import Settings, load_settings
from alliance.storage import ExportLoad, Ledger, LoadCounts, Warehouse, table_checksums, writer_lease
from flows.batch import LoadBatch
from flows.nightly import sweep_clinics
from flows.pipeline import ExportResult, ingest_file
from flows.prevalidation import prevalidate
from tests.conftest import SOUTH_ROWS, TEST_KEY, put
from tests.reference.ledger import load_export
from tests.test_pipeline import ROWS
from transforms.quarantine import QUARANTINE_SCHEMA

RATINGS_SCHEMA = {
    "dyad_id": pl.String, "clinic_id": pl.String, "client_id": pl.String, "therapist_id": pl.String,
    "instrument": pl.String, "session_date": pl.Date, "session_number": pl.Int32, "items": pl.List(pl.Float64),
    "total": pl.Float64, "export_id": pl.String, "source_line": pl.Int32,
}  # fmt: skip
KEYS = [
    (clinic, client, instrument, number)
    for clinic in ("north", "south")
    for client in ("p1", "p2")
    for instrument in ("SRS", "ORS")
    for number in (1, 2, 3)
]
VALUES = [(None, 30.0), ([9.0, 9.0, 9.0, 9.0], 36.0), ([9.0, 9.0, 9.0, 8.0], 35.0), ([9.0, None, 9.0, 8.0], 35.0)]


def _export(index: int, rows: list[tuple[int, int]], quarantined: int, clients: list[str]) -> ExportLoad:
    """One export: ``rows`` are (key index, value index); its ledger, quarantine rows and client references."""
    export_id = f"export{index:02d}"
    clinic = KEYS[rows[0][0]][0] if rows else "north"
    picked = {key: value for key, value in rows}  # a file holds a rating once (duplicates are quarantined)
    records = []
    for line, (key, value) in enumerate(sorted(picked.items()), start=2):
        clinic_id, client, instrument, number = KEYS[key]
        items, total = VALUES[value]
        records.append({
            "dyad_id": f"{clinic_id}|{client}", "clinic_id": clinic_id, "client_id": client, "therapist_id": "t1",
            "instrument": instrument, "session_date": date(2026, 1, 5 + 7 * number), "session_number": number,
            "items": items, "total": total, "export_id": export_id, "source_line": line,
        })  # fmt: skip
    ratings = pl.DataFrame(records, schema=RATINGS_SCHEMA)
    quarantine = pl.DataFrame(
        [
            {"export_id": export_id, "clinic_id": clinic, "source_line": 100 + n, "instrument": "SRS",
             "rules": ["out_of_range:srs_goals"], "reasons": ["line: a value out of range"], "values": None}
            for n in range(quarantined)
        ],
        schema=QUARANTINE_SCHEMA,
    )  # fmt: skip
    refs = pl.DataFrame(
        {"client_id": clients, "client_ref": [f"ref-{c}" for c in clients]},
        schema={"client_id": pl.String, "client_ref": pl.String},
    ).with_columns(pl.lit(clinic).alias("clinic_id"), pl.lit(export_id).alias("first_export_id"))
    ledger = Ledger(
        export_id, clinic, f"{export_id}.csv", f"sha{index}", 100, datetime(2026, 3, 1, tzinfo=UTC), "loaded",
        ["SRS", "ORS"], rows_total=ratings.height + quarantined, rows_quarantined=quarantined,
    )  # fmt: skip
    return ExportLoad(ledger, ratings, quarantine, refs)


exports = st.lists(
    st.tuples(
        st.lists(st.tuples(st.integers(0, len(KEYS) - 1), st.integers(0, len(VALUES) - 1)), max_size=14),
        st.integers(0, 2),
        st.lists(st.sampled_from(["p1", "p2", "p3"]), max_size=3),
    ),
    min_size=1,
    max_size=5,
)


def _state(path: Path) -> dict[str, tuple[int, str]]:
    with duckdb.connect(str(path), read_only=True) as con:
        return table_checksums(con, stable_only=True)


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stored=exports, batch=exports)
def test_a_batch_loads_as_its_files_do_one_after_another(
    stored: list[tuple[list[tuple[int, int]], int, list[str]]],
    batch: list[tuple[list[tuple[int, int]], int, list[str]]],
) -> None:
    before = [_export(i, *spec) for i, spec in enumerate(stored)]
    loads = [_export(len(stored) + i, *spec) for i, spec in enumerate(batch)]
    with tempfile.TemporaryDirectory() as folder:
        one_by_one, batched = Warehouse(Path(folder) / "one.duckdb"), Warehouse(Path(folder) / "batch.duckdb")
        expected: list[LoadCounts] = []
        with one_by_one.writer() as writer, writer.transaction():
            for load in [*before, *loads]:
                expected.append(load_export(writer, load.ledger, load.ratings, load.quarantine, load.client_refs))
        with batched.writer() as writer, writer.transaction():
            for load in before:
                load_export(writer, load.ledger, load.ratings, load.quarantine, load.client_refs)
            found = writer.load_exports(loads)
        assert found == expected[len(before) :]
        assert _state(batched.path) == _state(one_by_one.path)


def test_a_rating_restated_corrected_and_restated_again_keeps_each_replaced_version(tmp_path: Path) -> None:
    """The shape a night's cumulative re-exports give: a stored rating, corrected by one file, restated by the
    next, corrected back by a third. History holds the stored version and the first correction."""
    stored = _export(0, [(0, 1)], 0, ["p1"])
    batch = [_export(1, [(0, 2)], 0, []), _export(2, [(0, 2), (1, 0)], 0, ["p1"]), _export(3, [(0, 1)], 1, [])]
    warehouse = Warehouse(tmp_path / "w.duckdb")
    with warehouse.writer() as writer, writer.transaction():
        writer.load_exports([stored])
        counts = writer.load_exports(batch)
        history = writer.frame("SELECT total, export_id, replaced_by_export FROM rating_history ORDER BY 3")
        ratings = writer.frame("SELECT session_number, total, export_id FROM ratings ORDER BY 1")
    assert [(c.new, c.updated, c.unchanged, c.quarantined) for c in counts] == [
        (0, 1, 0, 0),
        (1, 0, 1, 0),
        (0, 1, 0, 1),
    ]
    assert history.rows() == [(36.0, "export00", "export01"), (35.0, "export01", "export03")]
    assert ratings.rows() == [(1, 36.0, "export03"), (2, 30.0, "export02")]


LOAD_TABLES = ("exports", "ratings", "rating_history", "quarantine", "client_refs", "pending_dyads")


def _night(root: Path, sample: SampleSet, duplicate: str) -> tuple[Settings, list[Path]]:
    """A home with the sample's exports in its inboxes, and one of them a second time under another name."""
    settings = load_settings(root)
    init_home(settings)
    settings.key_file.write_text(TEST_KEY + "\n")
    add_profiles(settings.clinics_file, sample.profiles)
    paths = []
    for file in sorted(sample.files, key=lambda f: f.path.name):
        target = settings.inbox / file.clinic_id / file.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(file.path, target)
        paths.append(target)
        if file.path.name == duplicate:
            again = target.with_name("again_" + file.path.name)
            shutil.copy(file.path, again)
            paths.append(again)
    return settings, paths


def _loaded(settings: Settings) -> dict[str, tuple[int, str]]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        sums = table_checksums(con, stable_only=True)
    return {table: sums[table] for table in LOAD_TABLES}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleSet:
    return generate_sample(
        tmp_path_factory.mktemp("sample"), clinics=4, weeks=12, dyads_per_clinic=8, today=date(2026, 2, 1)
    )


@pytest.mark.parametrize("fault", [None, "load:corrected"])
def test_a_sweeps_batch_leaves_what_its_files_ingested_one_by_one_leave(
    sample: SampleSet, fault: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Files of one batch, re-exports and a second copy of one file among them, and with a file that fails to
    load: the batch's tables and each file's result are those of ingest_file called on each file in turn."""
    if fault:
        monkeypatch.setenv("ALLIANCE_FAULT_AT", fault)
    first = sorted(f.path.name for f in sample.files)[0]
    batched, paths = _night(tmp_path / "batched", sample, first)
    alone, alone_paths = _night(tmp_path / "alone", sample, first)
    with writer_lease(batched.warehouse):
        batch = LoadBatch(batched)
        results = [ingest_file(p, batched, publish=False, in_batch=True, batch=batch) for p in paths]
        statuses = [r.status for r in results]
        # the second copy flushed the batch before it (its bytes must be loaded to be a duplicate)
        assert statuses.count("duplicate") == 1 and statuses[-1] == "pending"
        batch.flush()
    expected = [ingest_file(p, alone, publish=False, in_batch=True) for p in alone_paths]

    def seen(rs: list[ExportResult]) -> list[tuple[object, ...]]:
        return [(r.file_name, r.status, r.export_id, r.rows_new, r.rows_updated, r.rows_unchanged,
                 r.rows_quarantined, r.top_reasons, r.error) for r in rs]  # fmt: skip

    assert seen(results) == seen(expected)
    statuses = [r.status for r in results]
    assert statuses.count("duplicate") == 1 and statuses.count("rejected") == (1 if fault else 0)
    assert any(r.rows_updated for r in results) or fault  # a corrected re-export replaced ratings
    assert _loaded(batched) == _loaded(alone)
    assert not list(batched.inbox.glob("*/*")), "every file archived"
    for home in (batched, alone):  # a rejected file's ledger row counts no rows (`alliance verify`)
        with duckdb.connect(str(home.warehouse), read_only=True) as con:
            sums = "rows_total <> rows_new + rows_updated + rows_unchanged + rows_quarantined"
            assert con.execute(f"SELECT count(*) FROM exports WHERE {sums}").fetchall() == [(0,)]


def test_a_file_changed_after_it_joined_a_batch_is_loaded_as_it_now_is(sample: SampleSet, tmp_path: Path) -> None:
    settings, paths = _night(tmp_path / "home", sample, "")
    path = next(p for p in paths if p.suffix == ".csv")
    with writer_lease(settings.warehouse):
        batch = LoadBatch(settings)
        result = ingest_file(path, settings, publish=False, in_batch=True, batch=batch)
        assert result.status == "pending"
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:-1]))  # the clinic's system rewrote it without its last session
        batch.flush()
    assert result.status == "loaded" and result.rows_total > 0
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        shas = con.execute("SELECT sha256 FROM exports").fetchall()
    assert shas == [(hashlib.sha256("".join(lines[:-1]).encode()).hexdigest(),)]


@pytest.mark.parametrize("fault", [None, "load:s.csv"])
@pytest.mark.parametrize("how", ["read here", "read ahead", "read ahead, loaded between"])
def test_a_therapist_an_earlier_file_of_the_batch_brings_is_known_to_the_files_after_it(
    two_clinics: Settings, fault: str | None, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As one after another: south's file brings therapist s-new, so north's rows with s-new are foreign; unless
    south's file fails to load, when north's rows are north's own. Read ahead, north's file comes prepared as if
    no therapist were foreign, and its ingest must see that s-new is: from the files waiting in the batch, or,
    loaded between, from what the writer's session keeps of the loads."""
    if fault:
        monkeypatch.setenv("ALLIANCE_FAULT_AT", fault)
    settings = two_clinics
    south = put(settings, "south", "s.csv", ["C-201,s-new,01/05/2026,1,9.5,9.0,9.1,9.2,20,"])
    north = put(settings, "north", "n.csv", ["C-101,s-new,01/05/2026,1,9.5,9.0,9.1,9.2,20,", *ROWS[1:3]])
    validate = prevalidate([south, north], settings) if how != "read here" else None
    with writer_lease(settings.warehouse):
        with Warehouse.of(settings).writer() as writer:
            writer.known_therapists()  # the session keeps what it read: the load between must add to it
        batch = LoadBatch(settings)
        results = []
        for path in (south, north):
            results.append(ingest_file(path, settings, publish=False, validate=validate, batch=batch))
            if how == "read ahead, loaded between":
                batch.flush()
        batch.flush()
    seen = [(r.status, r.rows_new, r.rows_quarantined) for r in results]
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        rules = con.execute("SELECT rules FROM quarantine WHERE clinic_id = 'north'").fetchall()
    if fault:
        assert seen == [("rejected", 0, 0), ("loaded", 5, 0)] and rules == []
        return
    # each line rates SRS and, with an ORS total, ORS: south's line is 2 ratings, north's first line 2 quarantined
    assert seen == [("loaded", 2, 0), ("loaded", 3, 2)]
    assert rules == [(["foreign_therapist:therapist_id"],)] * 2


def test_a_file_that_cannot_be_archived_fails_alone_and_the_others_are_archived(
    two_clinics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loaded together, archived one by one: north's archive move fails (its folder is not writable), south's
    file is archived, and north's is reported and left for the next run, which finds its bytes loaded."""
    import flows.batch

    settings = two_clinics
    north = put(settings, "north", "n.csv", ROWS[:2])
    south = put(settings, "south", "s.csv", SOUTH_ROWS[:2])
    real = flows.batch.archive_bytes

    def archive(data: bytes | None, path: Path, *args: object) -> None:
        if path.parent.name == "north":
            raise PermissionError(13, "Permission denied")
        real(data, path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(flows.batch, "archive_bytes", archive)
    results, errors = sweep_clinics(settings, None)
    assert [(r.file_name, r.status) for r in results] == [("s.csv", "loaded")]
    assert errors == ["n.csv: loaded, but not archived (PermissionError); the next run archives it"]
    assert north.exists() and not south.exists()
    monkeypatch.setattr(flows.batch, "archive_bytes", real)
    assert [r.status for r in sweep_clinics(settings, None)[0]] == ["duplicate"] and not north.exists()
