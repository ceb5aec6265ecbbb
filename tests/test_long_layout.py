"""Long (tidy) exports: a row per item or per instrument total, loaded with a drafted profile like their wide twins."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import ValidationError

from alliance.clinics import KEY_FIELDS, Clinic, ExportProfile, parse_clinics
from alliance.drafting import draft_profile, render
from alliance.samples import SampleFile, SampleSet, generate_sample
from alliance.samples.layouts import write_long_csv
from flows.exports import PreparedExport, prepare_export

KEY = b"long-layout-test-key-0123456789"
TODAY = date(2026, 3, 1)
KEYS = {"Client": "client_ref", "Therapist": "therapist_id", "Date": "session_date", "Session": "session_number"}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleSet:
    return generate_sample(tmp_path_factory.mktemp("long"), clinics=3, weeks=16, dyads_per_clinic=6, today=TODAY)


def _wide(sample: SampleSet, layout: str) -> SampleFile:
    return next(f for f in sample.files if f.layout == layout and "corrected" not in f.path.name)


def _prepare(path: Path, clinic: Clinic) -> PreparedExport:
    return prepare_export(path, clinic, KEY, "e1", 1.0)


def _session_ratings(prepared: PreparedExport) -> pl.DataFrame:
    """Ratings without their source line: a long file names a session by its first line."""
    return prepared.ratings.drop("source_line").sort(pl.all())


@pytest.mark.parametrize("layout", ["us_csv", "eu_csv", "xlsx"])
@pytest.mark.parametrize("per", ["item", "total"])
def test_a_long_export_loaded_with_its_drafted_profile_gives_the_wide_ratings(
    sample: SampleSet, layout: str, per: str, tmp_path: Path
) -> None:
    # us_csv carries SRS and ORS in one file: the mixed-instrument case
    wide = _wide(sample, layout)
    long = tmp_path / f"long_{per}.csv"
    write_long_csv(wide.path, long, layout, per)
    text = render(draft_profile(long, wide.clinic_id))
    assert 'layout = "long"' in text and ('item = "Item"' in text) == (per == "item")
    drafted = parse_clinics(text)[wide.clinic_id]
    vendor = Clinic(id=wide.clinic_id, **sample.profiles[wide.clinic_id])
    if per == "total":  # the wide twin read for its totals only
        columns = {v: f for v, f in vendor.export.columns.items() if f in KEY_FIELDS or f.endswith("_total")}
        vendor = vendor.model_copy(update={"export": vendor.export.model_copy(update={"columns": columns})})
    assert drafted.export.instruments == vendor.export.instruments
    ours, theirs = _prepare(long, drafted), _prepare(wide.path, vendor)
    assert theirs.ratings.height > 20
    assert_frame_equal(_session_ratings(ours), _session_ratings(theirs))
    # the same rules broke; a session given twice is quarantined on each of its lines instead of each row
    rules = {r for rules in ours.quarantine["rules"].to_list() for r in rules}
    assert rules == {r for rules in theirs.quarantine["rules"].to_list() for r in rules}


def _clinic(**long: object) -> Clinic:
    export = {"instruments": ["SRS", "ORS"], "layout": "long", "columns": KEYS}
    export |= {"long": {"measure": "Measure", "item": "Item", "score": "Score", **long}}
    return Clinic(id="k", name="k", export=ExportProfile.model_validate(export))


HEADER = "Client,Therapist,Date,Session,Measure,Item,Score\n"


def _session(client: str, number: int, scores: tuple[str, ...] = ("9", "8", "9", "9")) -> str:
    items = ("Relationship", "Goals & Topics", "Approach/Method", "Overall")
    when = f"2026-01-{number + 4:02d}"
    return "".join(f"{client},t1,{when},{number},SRS,{item},{s}\n" for item, s in zip(items, scores, strict=True))


def test_rows_a_long_layout_cannot_place_are_quarantined_with_their_line_and_never_loaded(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_text(
        "Session feedback report\n\n"  # a title above the header
        + HEADER
        + _session("C-1", 1)
        + "C-1,t1,2026-01-06,2,PHQ-9,Mood,17\n"  # line 8: a measure the clinic does not list
        + "C-1,t1,2026-01-06,2,SRS,Bond,7\n"  # line 9: an item label nobody named
        + _session("C-2", 1)
        + "C-2,t1,2026-01-05,1,SRS,Goals & Topics,2\n"  # line 14: the session's goals a second time
        + "Total,,,,,,\n"  # line 15: a footer row
    )
    prepared = _prepare(path, _clinic())
    assert prepared.ratings["source_line"].to_list() == [4]
    assert prepared.ratings["total"].to_list() == [35.0]
    reasons = dict(zip(prepared.quarantine["source_line"], prepared.quarantine["reasons"].list.first(), strict=True))
    assert sorted(reasons) == [8, 9, 10, 11, 12, 13, 14, 15]
    assert "measure label is empty or not one of the clinic's instruments (SRS, ORS)" in reasons[8]
    assert "item label is empty or not an item of SRS" in reasons[9]
    assert "given on more than one line" in reasons[14] and "given on more than one line" in reasons[10]
    assert "summary or footer row" in reasons[15]
    for value in ("PHQ", "Mood", "Bond", "17", "C-2"):  # reasons name the kind, never the cell
        assert not any(value in reason for reason in reasons.values())


def test_labels_the_vendor_chose_are_mapped_in_the_profile(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_text(
        HEADER
        + "".join(
            f"C-1,t1,2026-01-05,1,Session Rating Scale,{item},9\n" for item in ("Bond", "Goals", "Approach", "Overall")
        )
    )
    assert _prepare(path, _clinic()).ratings.is_empty()  # neither label is a name we know
    named = _clinic(measures={"Session Rating Scale": "SRS"}, items={"bond": "relationship"})
    ratings = _prepare(path, named).ratings
    assert ratings["total"].to_list() == [36.0] and ratings["items"].to_list() == [[9.0] * 4]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"long": None}, "needs an [export.long] table"),
        ({"columns": {**KEYS, "Score": "srs_total"}}, "come from [export.long] in a long layout"),
        ({"long": {"measure": "M", "score": "S", "measures": {"x": "WAI_SR"}}}, "WAI_SR is not listed"),
        ({"long": {"measure": "M", "score": "S", "items": {"x": "mood"}}}, "'mood' is no item"),
        ({"long": {"score": "S"}}, "several instruments are listed"),
        ({"layout": "wide"}, "long: only with layout = 'long'"),
    ],
)
def test_a_long_profile_that_cannot_work_is_refused_with_the_reason(change: dict[str, object], message: str) -> None:
    export: dict[str, object] = {"instruments": ["SRS", "ORS"], "layout": "long", "columns": KEYS}
    export |= {"long": {"measure": "Measure", "item": "Item", "score": "Score"}} | change
    if change.get("layout") == "wide":
        export["columns"] = {**KEYS, "Score": "srs_total"}
    with pytest.raises(ValidationError, match=re.escape(message)):
        ExportProfile.model_validate(export)
