"""`profile draft`: a profile drafted from a vendor's file, unedited, loads it as the vendor's own profile does."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from alliance.cli import app
from alliance.clinics import Clinic, parse_clinics
from alliance.drafting import draft_profile, render
from alliance.drafting.dates import infer_date_format
from alliance.samples import SampleSet, generate_sample
from alliance.settings import Settings
from flows.exports import prepare_export

KEY = b"draft-test-key-0123456789"
TODAY = date(2026, 3, 1)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleSet:
    return generate_sample(tmp_path_factory.mktemp("drafts"), clinics=4, weeks=16, dyads_per_clinic=6, today=TODAY)


def _ratings(path: Path, clinic: Clinic) -> pl.DataFrame:
    prepared = prepare_export(path, clinic, KEY, "e1", 1.0)
    return prepared.ratings.sort("instrument", "source_line")


@pytest.mark.parametrize("layout", ["us_csv", "eu_csv", "xlsx", "json"])
def test_drafted_profile_loads_the_file_as_the_vendors_profile_does(sample: SampleSet, layout: str) -> None:
    export = next(f for f in sample.files if f.layout == layout)
    drafted = parse_clinics(render(draft_profile(export.path, export.clinic_id)))[export.clinic_id]
    vendor = Clinic(id=export.clinic_id, **sample.profiles[export.clinic_id])
    ours, theirs = _ratings(export.path, drafted), _ratings(export.path, vendor)
    assert ours.height > 0
    assert_frame_equal(ours, theirs)


def test_german_cp1252_semicolon_decimal_comma_is_recognised(sample: SampleSet) -> None:
    export = next(f for f in sample.files if f.layout == "eu_csv")
    profile = parse_clinics(render(draft_profile(export.path, "x")))["x"].export
    assert (profile.encoding, profile.delimiter, profile.decimal_comma) == ("cp1252", ";", True)
    assert profile.date_format == "%d.%m.%Y"
    assert profile.columns["Sitzung"] == "session_number"
    assert profile.columns["ziele  &  Themen"] == "srs_goals"


@pytest.mark.parametrize("layout", ["us_csv", "eu_csv", "xlsx", "json"])
def test_draft_never_prints_a_client_value(sample: SampleSet, layout: str) -> None:
    export = next(f for f in sample.files if f.layout == layout)
    result = CliRunner().invoke(app, ["profile", "draft", str(export.path), "--clinic", "c"])
    assert result.exit_code == 0, result.output
    assert sample.canaries and not [c for c in sample.canaries if c in result.output]
    refs = [d.client_ref for d in sample.dyads if d.clinic_id == export.clinic_id]
    assert refs and not [r for r in refs if r in result.output]
    assert "left out (never loaded)" in result.output


def test_client_columns_are_left_out_with_their_names_only(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text(
        "Klient,Klient Name,Behandler,Datum,Termin,Beziehung,Ziele und Themen,Vorgehen,Insgesamt,Notiz\n"
        "CANARY-REF-1,CANARY-NAME,CANARY-TH,13.01.2026,1,9,8,7,9,CANARY-NOTE\n",
        encoding="utf-8",
    )
    text = render(draft_profile(path, "k"))
    assert "CANARY" not in text
    columns = parse_clinics(text)["k"].export.columns
    assert columns == {
        "Klient": "client_ref", "Behandler": "therapist_id", "Datum": "session_date", "Termin": "session_number",
        "Beziehung": "srs_relationship", "Ziele und Themen": "srs_goals", "Vorgehen": "srs_approach",
        "Insgesamt": "srs_overall",
    }  # fmt: skip
    assert '"Klient Name", "Notiz"' in text


@pytest.mark.parametrize(
    ("values", "instrument"),
    [(("3", "5", "1"), "WAI_SR"), (("1", "7", "6"), "ARM5"), (("0", "7.5", "10"), "SRS")],
)
def test_value_ranges_tell_the_instrument(tmp_path: Path, values: tuple[str, ...], instrument: str) -> None:
    path = tmp_path / "e.csv"
    rows = "".join(f"C{i},T1,2026-01-0{i + 1},{i + 1},{v},{v}\n" for i, v in enumerate(values))
    path.write_text("Client ID,Therapist,Date,Session,Q1,Overall\n" + rows, encoding="utf-8")
    draft = draft_profile(path, "r")
    assert draft.mapping.instruments == [instrument]


def test_a_0_to_40_total_is_not_an_item(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("Client ID,Therapist,Date,Session,Overall\nC1,T1,2026-01-02,1,31.5\n", encoding="utf-8")
    match = draft_profile(path, "t").mapping.mapped["Overall"]
    assert not match.sure and "outside the SRS item 0–10" in match.why


def test_ambiguous_day_month_is_refused_with_both_candidates(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text(
        "Client ID,Therapist,Session Date,Session #,SRS Total\nC1,T1,01/02/2026,1,30\nC1,T1,02/03/2026,2,31\n",
        encoding="utf-8",
    )
    text = render(draft_profile(path, "a"))
    assert '# date_format = "%m/%d/%Y"' in text and '# date_format = "%d/%m/%Y"' in text
    assert "refusing to guess" in text
    assert "\ndate_format" not in text


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["13.01.2026", "02.01.2026"], "%d.%m.%Y"),
        (["01/13/2026", "01/02/2026"], "%m/%d/%Y"),
        (["2026-01-13"], "%Y-%m-%d"),
    ],
)
def test_a_day_above_12_tells_the_order(values: list[str], expected: str) -> None:
    assert infer_date_format(values).format == expected


def test_write_appends_a_profile_that_loads(settings: Settings, sample: SampleSet) -> None:
    export = next(f for f in sample.files if f.layout == "us_csv")
    args = ["profile", "draft", str(export.path), "--clinic", "newclinic", "--write", "--home", str(settings.home)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "newclinic" in parse_clinics(settings.clinics_file.read_text(encoding="utf-8"))
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "already in" in again.output


def test_a_document_keyed_by_client_names_is_refused_without_echoing_them(tmp_path: Path) -> None:
    names = {f"Client Person {i}": {"sessions": [{"date": "2026-01-05", "srs": {"total": 30}}]} for i in range(40)}
    path = tmp_path / "keyed.json"
    path.write_text(json.dumps({"clients": names}), encoding="utf-8")
    result = CliRunner().invoke(app, ["profile", "draft", str(path)])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "keyed by its data" in result.output
    assert "Person" not in result.output
