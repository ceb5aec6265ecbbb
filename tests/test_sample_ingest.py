"""The whole generated data set through the real pipeline: every layout, every row accounted for."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import pytest

from alliance.home import init_home
from alliance.samples import SampleSet, add_profiles, generate_sample
from alliance.settings import Settings, load_settings
from flows.pipeline import ExportResult, ingest_file
from tests.conftest import TEST_KEY


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, SampleSet, list[ExportResult]]:
    settings = load_settings(tmp_path_factory.mktemp("sample") / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(settings.inbox, clinics=5, weeks=14, seed=11, dyads_per_clinic=20, profile="clean")
    add_profiles(settings.clinics_file, sample.profiles)
    results = [ingest_file(f.path, settings) for f in sample.files]
    return settings, sample, results


def rows(settings: Settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_every_layout_is_read_with_the_planted_counts(ingested: tuple[Settings, SampleSet, list[ExportResult]]) -> None:
    _, sample, results = ingested
    assert {f.layout for f in sample.files} == {"us_csv", "eu_csv", "xlsx", "json"}
    for planted, result in zip(sample.files, results, strict=True):
        assert result.status == "loaded", (planted.path.name, result.error)
        assert result.rows_total == planted.rows_expected, planted.path.name
        assert result.rows_quarantined == planted.invalid_expected, (planted.path.name, result.top_reasons)
        if planted.corrected_expected:
            assert result.rows_updated == planted.corrected_expected
            assert result.rows_new == 0
        else:
            assert result.rows_new == planted.rows_expected - planted.invalid_expected


def test_accounting_invariant_holds_for_every_export(ingested: tuple[Settings, SampleSet, list[ExportResult]]) -> None:
    settings, sample, _ = ingested
    ledger = rows(
        settings,
        "SELECT file_name, rows_total, rows_new + rows_updated + rows_unchanged + rows_quarantined FROM exports",
    )
    assert len(ledger) == len(sample.files)
    for name, total, parts in ledger:
        assert total == parts, name
    quarantined = rows(settings, "SELECT export_id, count(*) FROM quarantine GROUP BY ALL ORDER BY 1")
    assert quarantined == rows(
        settings, "SELECT export_id, rows_quarantined FROM exports WHERE rows_quarantined > 0 ORDER BY 1"
    )
    history = rows(settings, "SELECT count(*) FROM rating_history")[0][0]
    assert history == sum(f.corrected_expected for f in sample.files)


def test_planted_dyads_are_stored_under_pseudonyms(ingested: tuple[Settings, SampleSet, list[ExportResult]]) -> None:
    settings, sample, _ = ingested
    stored = rows(settings, "SELECT DISTINCT clinic_id, therapist_id, instrument FROM ratings")
    for dyad in sample.dyads:
        assert (dyad.clinic_id, dyad.therapist_id, dyad.instrument) in stored
    text = " ".join(
        str(r)
        for t in ("ratings", "rating_history", "quarantine", "exports")
        for r in rows(settings, f"SELECT * FROM {t}")
    )
    assert not any(d.client_ref in text for d in sample.dyads)
    assert not any(canary in text for canary in sample.canaries)
    refs = {r[0] for r in rows(settings, "SELECT client_ref FROM client_refs")}
    assert {d.client_ref for d in sample.dyads} <= refs


def test_wai_sr_and_decimal_comma_values_arrive_on_their_scales(
    ingested: tuple[Settings, SampleSet, list[ExportResult]],
) -> None:
    settings, _, _ = ingested
    ((low, high, items),) = rows(
        settings, "SELECT min(total), max(total), max(len(items)) FROM ratings WHERE instrument = 'WAI_SR'"
    )
    assert 12 <= low <= high <= 60 and items == 12
    fractional = rows(settings, "SELECT count(*) FROM ratings WHERE clinic_id = 'rheinpark' AND total <> round(total)")
    assert fractional[0][0] > 0  # "8,5" was read as 8.5, not 85 or null


def test_session_dates_are_not_in_the_future(ingested: tuple[Settings, SampleSet, list[ExportResult]]) -> None:
    settings, _, _ = ingested
    assert rows(settings, "SELECT max(session_date) FROM ratings")[0][0] <= date.today()


def test_reingesting_the_archive_changes_nothing(
    ingested: tuple[Settings, SampleSet, list[ExportResult]], tmp_path: Path
) -> None:
    settings, _, results = ingested
    before = rows(settings, "SELECT count(*), sum(total) FROM ratings")
    again = [ingest_file(Path(r.archived_as or ""), settings, clinic_id=r.clinic_id) for r in results]
    assert {r.status for r in again} == {"duplicate"}
    assert rows(settings, "SELECT count(*), sum(total) FROM ratings") == before
