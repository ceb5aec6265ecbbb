"""Validation in batches: one GX validation for many exports gives each export exactly its own failures.

``validate_ratings`` on one export's candidates is the oracle; ``validate_exports`` and ``Prevalidated`` must
match it on generated exports and on random frames (duplicates are judged within an export, never across).
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import polars as pl
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from alliance.clinics import Clinic
from alliance.errors import ExportRejected
from alliance.home import init_home
from alliance.pseudonyms import load_key
from alliance.readers import SOURCE_LINE, ReadLimits
from alliance.samples import SampleSet, add_profiles, generate_sample
from alliance.settings import Settings, load_settings
from expectations import Prevalidated, validate_exports, validate_ratings, warm_up
from expectations import validate as validate_module
from expectations.validate import _runnable
from flows import exports as exports_module
from flows.exports import (
    CanonicalExport,
    ExportCandidates,
    export_candidates,
    identified,
    mapped_alone,
    prepare_export,
    prepare_together,
)
from flows.prevalidation import prevalidate
from flows.readahead import read_ahead
from tests.conftest import TEST_KEY
from tests.test_fuzz import PROFILES, SRS, raw_frames
from transforms.mapping import footer_split, rating_candidates, resolve_columns, to_canonical

KEY = b"batch-validation-key-0123456789"


def _candidates(raw: pl.DataFrame) -> pl.DataFrame | None:
    profile = PROFILES["csv"]
    try:
        resolved = resolve_columns(raw.columns, profile.columns, "f.csv")
    except ExportRejected:
        return None
    today = datetime.now(ZoneInfo("UTC")).date()
    candidates = rating_candidates(to_canonical(raw, resolved), profile, SRS, today, "UTC")
    return candidates.with_row_index("row_id").with_columns(pl.col("row_id").cast(pl.Int64))


@hypothesis_settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(raw_frames(), min_size=1, max_size=4), twice=st.booleans())
def test_one_validation_of_many_exports_gives_each_its_own_failures(frames: list[pl.DataFrame], twice: bool) -> None:
    parts = [c for c in map(_candidates, frames) if c is not None]
    if twice and parts:
        parts.append(parts[0])  # the same rows in two exports: duplicates of each other only within one
    batched = validate_exports(parts, SRS)
    assert len(batched) == len(parts)
    for part, found in zip(parts, batched, strict=True):
        assert_frame_equal(found, validate_ratings(part, SRS))


def test_a_suite_is_built_once_per_column_set_and_validates_as_a_fresh_one() -> None:
    """A night asks for the runnable suite once per file: it is built once per column set, and validating
    twice through the same suite object finds the same failures."""
    raw = pl.DataFrame(
        {"Client": ["c1", "c1", "c2"], "Therapist": ["t1", "t1", "t1"], "Date": ["05.01.2026"] * 3,
         "No": ["1", "1", "2"], "Rel": ["9", "9", "8"], "Goals": ["9", "9", "12.5"], "Approach": ["9", "9", "x"],
         "Overall": ["9", "9", "8"], "Total": ["36", "36", "30"]}
    ).with_columns(pl.int_range(2, 5, dtype=pl.Int64).alias(SOURCE_LINE))  # fmt: skip
    candidates = _candidates(raw)
    assert candidates is not None
    suite, needed = _runnable(candidates.columns, SRS)
    again, needed_again = _runnable(list(candidates.columns), SRS)
    assert again is suite and needed_again == needed
    fewer, _ = _runnable([c for c in candidates.columns if not c.startswith("srs_goals")], SRS)
    assert fewer is not suite and len(fewer.expectations) < len(suite.expectations)
    first = validate_ratings(candidates, SRS)
    assert {"out_of_range:srs_goals"} < set(first["rule"])  # and the duplicate session
    assert_frame_equal(validate_ratings(candidates, SRS), first)


def test_gx_warms_up_on_a_thread_once_and_a_failed_warm_up_is_validation_s_to_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch starts GX's import and context on a thread while it reads its first files: a validation that
    comes meanwhile waits for that context instead of building a second; a warm-up that fails raises nothing
    on its thread, and the validation after it builds the context itself."""
    raw = pl.DataFrame(
        {"Client": ["c1", "c2"], "Therapist": ["t1", "t1"], "Date": ["05.01.2026"] * 2, "No": ["1", "2"],
         "Rel": ["9", "9"], "Goals": ["9", "12.5"], "Approach": ["9", "9"], "Overall": ["9", "8"], "Total": ["36", "38.5"]}
    ).with_columns(pl.int_range(2, 4, dtype=pl.Int64).alias(SOURCE_LINE))  # fmt: skip
    candidates = _candidates(raw)
    assert candidates is not None
    validate_module._batch_definition.cache_clear()
    warm_up().join()
    assert validate_module._batch_definition.cache_info().misses == 1  # the warm-up built it
    for _ in range(3):  # a validation right behind the warm-up: one context between them
        validate_module._batch_definition.cache_clear()
        warming = warm_up()
        found = validate_ratings(candidates, SRS)
        warming.join()
        assert validate_module._batch_definition.cache_info().misses == 1
        assert found["rule"].to_list() == ["out_of_range:srs_goals"]
    unhandled: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: unhandled.append(args.exc_value))
    import great_expectations as gx

    validate_module._batch_definition.cache_clear()
    real_context = gx.get_context
    monkeypatch.setattr(gx, "get_context", lambda **kw: (_ for _ in ()).throw(OSError("no context")))
    warm_up().join()
    assert unhandled == [] and validate_module._batch_definition.cache_info().currsize == 0
    monkeypatch.setattr(gx, "get_context", real_context)
    assert validate_ratings(candidates, SRS)["rule"].to_list() == ["out_of_range:srs_goals"]


def test_a_sweep_leaves_no_warm_up_running(settings: Settings) -> None:
    """The warm-up is joined when the read-ahead ends, so no thread is left importing as the process exits."""
    validate_module._batch_definition.cache_clear()
    with read_ahead([[]], settings):
        pass
    assert "alliance-gx-warm-up" not in [t.name for t in threading.enumerate()]
    assert validate_module._batch_definition.cache_info().currsize == 1


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> SampleSet:
    return generate_sample(
        tmp_path_factory.mktemp("batch"), clinics=4, weeks=16, dyads_per_clinic=8, today=date(2026, 3, 1)
    )


def test_a_prevalidated_batch_prepares_every_export_as_its_own_validation_does(settings: Settings) -> None:
    network = generate_sample(settings.inbox, clinics=4, weeks=16, dyads_per_clinic=8, today=date(2026, 3, 1))
    add_profiles(settings.clinics_file, network.profiles)
    key = load_key(settings)
    paths = [f.path for f in network.files]
    batch = prevalidate(paths, settings)
    served, pairs = batch.served, 0  # the batch prepared each file itself too
    for export in network.files:
        clinic = Clinic(id=export.clinic_id, **network.profiles[export.clinic_id])
        ours = prepare_export(export.path, clinic, key, "e1", 1.0, validate=batch)
        oracle = prepare_export(export.path, clinic, key, "e1", 1.0)
        for mine, theirs in ((ours.ratings, oracle.ratings), (ours.quarantine, oracle.quarantine)):
            assert_frame_equal(mine, theirs)
        assert ours.quarantine.height > 0  # the sample plants invalid rows in every export: the check can fail
        pairs += len(clinic.export.instruments)
    assert batch.served - served == pairs  # every validation came from the batch


def test_a_file_changed_after_the_batch_is_validated_afresh(network: SampleSet, tmp_path: Path) -> None:
    export = next(f for f in network.files if f.layout == "us_csv")
    clinic = Clinic(id=export.clinic_id, **network.profiles[export.clinic_id])
    copy = tmp_path / export.path.name
    copy.write_bytes(export.path.read_bytes())
    batch = Prevalidated()
    batch.prime([(c, SRS) for c in [_file_candidates(copy, clinic)]])
    lines = copy.read_text(encoding="utf-8").splitlines(keepends=True)
    cells = lines[1].split(",")
    cells[5] = "11"  # SRS Relationship beyond 10 on the first session
    copy.write_text("".join([lines[0], ",".join(cells), *lines[2:]]), encoding="utf-8")
    prepared = prepare_export(copy, clinic, KEY, "e1", 1.0, validate=batch)
    assert "out_of_range:srs_relationship" in prepared.quarantine.filter(pl.col("source_line") == 2)["rules"].explode()


def _file_candidates(path: Path, clinic: Clinic) -> pl.DataFrame:
    from flows.exports import export_candidates

    return next(c for inst, c in export_candidates(path, clinic, KEY).per_instrument if inst.code == "SRS")


def test_validations_on_several_threads_each_get_their_own_failures(network: SampleSet) -> None:
    # the Prefect nightly sweeps clinics on threads, each validating its batch outside the warehouse lock
    from flows.exports import export_candidates

    items = []
    for export in network.files:
        clinic = Clinic(id=export.clinic_id, **network.profiles[export.clinic_id])
        items += [(c, inst) for inst, c in export_candidates(export.path, clinic, KEY).per_instrument]
    expected = [validate_ratings(c, inst) for c, inst in items]
    wrong: list[str] = []

    def validate_all() -> None:
        for _ in range(3):
            try:
                found = [validate_ratings(c, inst) for c, inst in items]
            except Exception as exc:  # GX used from two threads at once fails, or answers for the other frame
                wrong.append(type(exc).__name__)
                continue
            wrong.extend("mismatch" for got, want in zip(found, expected, strict=True) if not got.equals(want))

    threads = [threading.Thread(target=validate_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []


def _ingested(settings: Settings, network: SampleSet, batched: bool) -> pl.DataFrame:
    from flows.pipeline import ingest_file

    add_profiles(settings.clinics_file, network.profiles)
    paths = []
    for export in network.files:
        target = settings.inbox / export.clinic_id / export.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(export.path.read_bytes())
        paths.append(target)
    batch = prevalidate(paths, settings) if batched else None
    changed = next(p for p in paths if p.suffix == ".csv")
    # a file changed after the batch read it: its ingest must load the new bytes, not what the batch kept
    lines = changed.read_text(encoding="utf-8").splitlines(keepends=True)
    changed.write_text("".join([lines[0], *lines[2:]]), encoding="utf-8")
    for path in paths:
        ingest_file(path, settings, publish=False, validate=batch)
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        return con.sql("SELECT * EXCLUDE (loaded_at, updated_at) FROM ratings ORDER BY ALL").pl()


def test_a_batch_reads_each_file_once_and_a_changed_file_again(
    network: SampleSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.exports

    reads: Counter[str] = Counter()
    real = flows.exports.read_export

    def counted(path: Path, *args: object, **kwargs: object) -> pl.DataFrame:
        reads[path.name] += 1
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(flows.exports, "read_export", counted)
    homes = []
    for name in ("batched", "one_by_one"):
        home = load_settings(tmp_path / name)
        init_home(home)
        home.key_file.write_text(TEST_KEY + "\n")
        homes.append(home)
    batched = _ingested(homes[0], network, batched=True)
    changed = next(f.path.name for f in network.files if f.path.suffix == ".csv")
    assert reads == {f.path.name: 2 if f.path.name == changed else 1 for f in network.files}
    reads.clear()
    assert_frame_equal(batched, _ingested(homes[1], network, batched=False))
    assert reads == {f.path.name: 1 for f in network.files}


def test_what_a_batch_kept_is_taken_once_and_only_with_the_same_key_profile_and_bytes(settings: Settings) -> None:
    from flows.prevalidation import kept_read, read_token

    network = generate_sample(settings.inbox, clinics=2, weeks=8, dyads_per_clinic=4, today=date(2026, 3, 1))
    add_profiles(settings.clinics_file, network.profiles)
    export = network.files[0]
    clinic = Clinic(id=export.clinic_id, **network.profiles[export.clinic_id])
    key, sha = load_key(settings), hashlib.sha256(export.path.read_bytes()).hexdigest()
    max_bytes, limits = int(settings.max_file_mb * 1e6), ReadLimits.from_settings(settings)
    token = read_token(export.path, clinic, sha, key, max_bytes, limits)
    batch = prevalidate([export.path], settings)
    assert kept_read(batch, clinic, read_token(export.path, clinic, sha, b"another key", max_bytes, limits)) is None
    assert kept_read(batch, clinic, read_token(export.path, clinic, "0" * 64, key, max_bytes, limits)) is None
    other = clinic.model_copy(update={"timezone": "Asia/Tokyo" if clinic.timezone != "Asia/Tokyo" else "UTC"})
    assert kept_read(batch, other, token) is None  # read for another profile: not served
    batch = prevalidate([export.path], settings)
    kept = kept_read(batch, clinic, token)
    assert kept is not None and kept.found.per_instrument and kept.prepared is not None
    assert kept_read(batch, clinic, token) is None  # once


def test_a_file_prepared_ahead_is_what_its_ingest_prepares_and_is_prepared_again_when_that_differs(
    settings: Settings,
) -> None:
    from flows.archive import export_id_of
    from flows.prevalidation import kept_read, read_token
    from transforms.quarantine import KnownTherapists

    network = generate_sample(settings.inbox, clinics=3, weeks=12, dyads_per_clinic=6, today=date(2026, 3, 1))
    add_profiles(settings.clinics_file, network.profiles)
    key, share = load_key(settings), settings.quarantine_file_share
    max_bytes, limits = int(settings.max_file_mb * 1e6), ReadLimits.from_settings(settings)
    batch = prevalidate([f.path for f in network.files], settings)
    for export in network.files:
        clinic = Clinic(id=export.clinic_id, **network.profiles[export.clinic_id])
        sha = hashlib.sha256(export.path.read_bytes()).hexdigest()
        kept = kept_read(batch, clinic, read_token(export.path, clinic, sha, key, max_bytes, limits))
        assert kept is not None
        therapists = kept.found.per_instrument[0][1]["therapist_id"].unique().sort()
        own = pl.DataFrame({"clinic_id": clinic.id, "therapist_id": therapists})
        foreign = own.with_columns(pl.lit("another-clinic").alias("clinic_id"))
        first = export_id_of(clinic.id, sha)
        for known in (own, own.clear(), foreign):
            oracle = prepare_export(export.path, clinic, key, first, share, max_bytes, limits, known)
            ahead = kept.ready(first, share, KnownTherapists(known))
            if known is foreign:  # every rating now names another clinic's therapist: prepared again
                assert ahead is None
                assert oracle.quarantine["rules"].explode().str.starts_with("foreign_therapist").any()
                continue
            assert ahead is not None
            assert_frame_equal(ahead.ratings, oracle.ratings)
            assert_frame_equal(ahead.quarantine, oracle.quarantine)
            assert_frame_equal(ahead.client_refs, oracle.client_refs, check_row_order=False)  # a set
            assert ahead.rows_total == oracle.rows_total
            assert ahead.whole_file_quarantined == oracle.whole_file_quarantined
        # a retry of these bytes after a rejection has another export id; another share another verdict
        assert kept.ready(export_id_of(clinic.id, sha, 1), share, KnownTherapists(own)) is None
        assert kept.ready(first, share / 2, KnownTherapists(own)) is None


def _found(raw: pl.DataFrame, clinic: Clinic) -> ExportCandidates | None:
    """What a batch reads of one random export of the fuzz profile: its candidates, or None when unreadable."""
    try:
        resolved = resolve_columns(raw.columns, clinic.export.columns, "f.csv")
    except ExportRejected:
        return None
    canonical, aside = footer_split(to_canonical(raw, resolved))
    vendor_of = {c: v for v, c in resolved.items()}
    export = CanonicalExport(clinic, canonical, aside, vendor_of, datetime.now(clinic.tz).date())
    return identified(export, mapped_alone(export), KEY)


@hypothesis_settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(raw_frames(), min_size=1, max_size=4), share=st.sampled_from([0.0, 0.5, 1.0]))
def test_exports_prepared_together_are_each_what_prepare_export_gives(frames: list[pl.DataFrame], share: float) -> None:
    """The oracle is ``prepare_export`` file by file; random exports of one clinic and of two (ids differ)."""
    clinics = [Clinic(id=cid, name=cid, export=PROFILES["csv"]) for cid in ("north", "south")]
    parts = []
    for n, raw in enumerate(frames):
        clinic = clinics[n % 2]
        found = _found(raw, clinic)
        if found is not None:
            parts.append((clinic, found, f"export-{n}"))
    batch = Prevalidated()
    batch.prime([(candidates, inst) for _, found, _ in parts for inst, candidates in found.per_instrument])
    together = prepare_together(parts, KEY, share, batch)
    for (clinic, found, export_id), ours in zip(parts, together, strict=True):
        oracle = prepare_export(Path("f.csv"), clinic, KEY, export_id, share, found=found)
        assert_frame_equal(ours.ratings, oracle.ratings)
        assert_frame_equal(ours.quarantine, oracle.quarantine)
        assert_frame_equal(ours.client_refs, oracle.client_refs, check_row_order=False)  # a set
        assert (ours.rows_total, ours.whole_file_quarantined) == (oracle.rows_total, oracle.whole_file_quarantined)


def test_a_network_s_files_are_prepared_together_and_each_as_prepare_export_does(network: SampleSet) -> None:
    """The generated network's files (every layout, realistic noise): one pass per instrument and shape."""
    clinics = {f.clinic_id: Clinic(id=f.clinic_id, **network.profiles[f.clinic_id]) for f in network.files}
    parts = []
    for n, export in enumerate(network.files):
        clinic = clinics[export.clinic_id]
        parts.append((clinic, export_candidates(export.path, clinic, KEY), f"export-{n}"))
    batch = Prevalidated()
    batch.prime([(candidates, inst) for _, found, _ in parts for inst, candidates in found.per_instrument])
    screened = []
    real = exports_module._screened_together
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(exports_module, "_screened_together", lambda m, e: screened.append(len(m)) or real(m, e))
        together = prepare_together(parts, KEY, 0.5, batch)
    assert max(screened) > 1  # exports of one shape shared a pass
    for (clinic, _, export_id), export, ours in zip(parts, network.files, together, strict=True):
        oracle = prepare_export(export.path, clinic, KEY, export_id, 0.5)
        assert_frame_equal(ours.ratings, oracle.ratings)
        assert_frame_equal(ours.quarantine, oracle.quarantine)
        assert_frame_equal(ours.client_refs, oracle.client_refs, check_row_order=False)
        assert (ours.rows_total, ours.whole_file_quarantined) == (oracle.rows_total, oracle.whole_file_quarantined)
