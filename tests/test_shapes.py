"""Exports shaped as report programs write them: title rows above the header, summary rows below, a cover sheet first.

Each shaped file, loaded with the profile drafted from it (unedited), gives the ratings of its wide twin.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import polars as pl
import pytest
import xlsxwriter
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from alliance.clinics import Clinic, ExportProfile, parse_clinics
from alliance.drafting import draft_profile, render
from alliance.errors import ExportRejected
from alliance.readers import read_export
from alliance.readers.frames import FOOTER_LABEL, FOOTER_ROW, mark_footer_rows
from alliance.samples import SampleFile, SampleSet, add_profiles, generate_sample
from alliance.samples.layouts import write_covered_xlsx, write_titled_csv
from alliance.settings import Settings
from flows.exports import PreparedExport, prepare_export
from flows.rehearsal import rehearse
from transforms.quarantine import FOOTER_REASON

KEY = b"shapes-test-key-0123456789"
TODAY = date(2026, 3, 1)
FOOTERS = 3  # Total, Average and Exported by


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleSet:
    return generate_sample(tmp_path_factory.mktemp("shapes"), clinics=3, weeks=16, dyads_per_clinic=6, today=TODAY)


def _wide(sample: SampleSet, layout: str) -> SampleFile:
    return next(f for f in sample.files if f.layout == layout and "corrected" not in f.path.name)


def _shaped(sample: SampleSet, layout: str, folder: Path) -> tuple[Path, int]:
    wide = _wide(sample, layout)
    name = sample.profiles[wide.clinic_id]["name"]
    if layout == "xlsx":
        out = folder / "covered.xlsx"
        return out, write_covered_xlsx(wide.path, out, name, TODAY)
    out = folder / "titled.csv"
    return out, write_titled_csv(wide.path, out, layout, name, TODAY)


def _prepare(path: Path, clinic: Clinic) -> PreparedExport:
    return prepare_export(path, clinic, KEY, "e1", 1.0)


def _drafted(path: Path, clinic_id: str) -> tuple[Clinic, str]:
    text = render(draft_profile(path, clinic_id))
    return parse_clinics(text)[clinic_id], text


@pytest.mark.parametrize("layout", ["us_csv", "eu_csv", "xlsx"])
def test_a_shaped_export_loaded_with_its_drafted_profile_gives_the_wide_ratings(
    sample: SampleSet, layout: str, tmp_path: Path
) -> None:
    wide = _wide(sample, layout)
    shaped, offset = _shaped(sample, layout, tmp_path)
    drafted, text = _drafted(shaped, wide.clinic_id)
    vendor = Clinic(id=wide.clinic_id, **sample.profiles[wide.clinic_id])
    assert f"header_row = {offset + 1}" in text and 'footer_rows = "quarantine"' in text
    ours, theirs = _prepare(shaped, drafted), _prepare(wide.path, vendor)
    assert theirs.ratings.height > 0
    # every line moved down by the title rows, nothing else changed
    moved = theirs.ratings.with_columns(pl.col("source_line") + offset)
    assert_frame_equal(ours.ratings.sort("instrument", "source_line"), moved.sort("instrument", "source_line"))
    footers = ours.quarantine.filter(pl.col("reasons").list.first().str.ends_with(FOOTER_REASON))
    last = int(ours.quarantine["source_line"].max() or 0)
    assert footers["source_line"].to_list() == list(range(last - FOOTERS + 1, last + 1))
    assert footers["rules"].to_list() == [["no_rating"]] * FOOTERS
    rest = ours.quarantine.filter(~pl.col("source_line").is_in(footers["source_line"].implode()))
    expected = theirs.quarantine.with_columns(pl.col("source_line") + offset, pl.lit(None, pl.String).alias("reasons"))
    assert_frame_equal(
        rest.with_columns(pl.lit(None, pl.String).alias("reasons")).sort("source_line", "instrument"),
        expected.sort("source_line", "instrument"),
    )


def test_a_covered_workbook_drafts_a_sheet_pattern(sample: SampleSet, tmp_path: Path) -> None:
    shaped, _ = _shaped(sample, "xlsx", tmp_path)
    drafted, text = _drafted(shaped, "w")
    assert drafted.export.sheet_pattern == "Sessions*" and drafted.export.sheet is None
    assert 'the workbook also has "Cover"' in text


def test_footer_rows_skip_drops_them_by_rule(sample: SampleSet, tmp_path: Path) -> None:
    wide = _wide(sample, "us_csv")
    shaped, _offset = _shaped(sample, "us_csv", tmp_path)
    drafted, _ = _drafted(shaped, wide.clinic_id)
    skipping = drafted.model_copy(update={"export": drafted.export.model_copy(update={"footer_rows": "skip"})})
    quarantined = _prepare(shaped, drafted).quarantine
    skipped = _prepare(shaped, skipping).quarantine
    assert quarantined.height - skipped.height == FOOTERS
    assert not skipped["reasons"].list.join(" ").str.contains("footer row").any()


def test_a_total_row_is_never_loaded_as_a_rating(tmp_path: Path) -> None:
    # 'Total' in the client column with plausible scores: without the footer rule it would be a rating
    path = tmp_path / "t.csv"
    path.write_text(
        "Report\n\nClient,Therapist,Date,Session,Relationship,Goals,Approach,Overall\n"
        "C-1,t1,2026-01-05,1,9,9,9,9\nTotal,t1,2026-01-05,1,9,9,9,9\n"
    )
    clinic = Clinic(id="k", name="k", export=_profile())
    prepared = _prepare(path, clinic)
    assert prepared.ratings["source_line"].to_list() == [4]
    assert prepared.quarantine["source_line"].to_list() == [5]
    assert prepared.quarantine["reasons"].to_list() == [[f"line 5: {FOOTER_REASON}"]]


def _profile(**changes: object) -> ExportProfile:
    columns = {"Client": "client_ref", "Therapist": "therapist_id", "Date": "session_date", "Session": "session_number"}
    columns |= {"Relationship": "srs_relationship", "Goals": "srs_goals", "Approach": "srs_approach"}
    columns |= {"Overall": "srs_overall"}
    return ExportProfile.model_validate({"instruments": ["SRS"], "columns": columns, **changes})


def test_header_row_given_reads_from_that_line(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("Report;x\nClient,Therapist\nClient,Therapist,Date,Session,Relationship,Goals,Approach,Overall\n"
                    "C-1,t1,2026-01-05,1,9,9,9,9\n")  # fmt: skip
    frame = read_export(path, _profile(header_row=3, delimiter=","))
    assert frame["source_line"].to_list() == [4] and frame["Client"].to_list() == ["C-1"]
    # detected: the line naming the most mapped columns, not the first naming some
    assert read_export(path, _profile())["source_line"].to_list() == [4]


def test_missing_columns_show_the_header_found_and_where(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "Title\n\nClient,Therapist,Date,Session,Relationship,Goals,Approach,Total\nC-1,t1,2026-01-05,1,9,9,9,36\n"
    )
    with pytest.raises(ExportRejected) as info:
        read_export(path, _profile(), complete=True)
    assert info.value.problem == (
        "missing required column(s) 'Overall' (-> srs_overall) among the file's 8 columns; the header found "
        "(line 3, detected) has 'Client', 'Therapist', 'Date', 'Session', 'Relationship', 'Goals', 'Approach', "
        "'Total' (looks like srs_total); check the clinic's [export.columns]"
    )


def test_a_header_cell_that_is_not_a_column_name_is_counted_not_shown(tmp_path: Path) -> None:
    # a client's name typed into the header: the message reaches the ledger, so only known names are shown
    path = tmp_path / "c.csv"
    path.write_text("Client,Therapist,Date,Session,Anna Schmidt\nC-1,t1,2026-01-05,1,9\n")
    with pytest.raises(ExportRejected) as info:
        read_export(path, _profile(), complete=True)
    assert "Anna" not in str(info.value)
    assert "'Session', 1 other column(s) not named here" in str(info.value)


def test_a_header_of_client_data_is_never_echoed(tmp_path: Path) -> None:
    # no line names a mapped column: the first line may be a session, so its cells are not shown
    path = tmp_path / "n.csv"
    path.write_text("Anna Schmidt,t1,2026-01-05,1,9,9,9,9\n")
    with pytest.raises(ExportRejected) as info:
        read_export(path, _profile(), complete=True)
    assert "Anna" not in str(info.value) and "holds a mapped column name" in str(info.value)


def _workbook(path: Path, sheets: dict[str, list[list[str]]]) -> Path:
    book = xlsxwriter.Workbook(str(path))
    for name, rows in sheets.items():
        sheet = book.add_worksheet(name)
        for r, row in enumerate(rows):
            sheet.write_row(r, 0, row)
    book.close()
    return path


HEADER = ["Client", "Therapist", "Date", "Session", "Relationship", "Goals", "Approach", "Overall"]


def test_a_missing_sheet_names_the_workbook_sheets(tmp_path: Path) -> None:
    path = _workbook(tmp_path / "s.xlsx", {"Cover": [["Report"]], "Data": [HEADER]})
    with pytest.raises(ExportRejected) as info:
        read_export(path, _profile(format="xlsx", sheet="Sessions"))
    assert "sheet 'Sessions' is not in the workbook; its sheets: 'Cover', 'Data'" in str(info.value)
    with pytest.raises(ExportRejected) as info:
        read_export(path, _profile(format="xlsx", sheet_pattern="Sess*"))
    assert "no sheet of the workbook matches sheet_pattern 'Sess*'; its sheets: 'Cover', 'Data'" in str(info.value)


def test_a_sheet_without_the_header_names_the_sheet_read_and_the_others(tmp_path: Path) -> None:
    path = _workbook(tmp_path / "c.xlsx", {"Cover": [["Report"]], "Data": [HEADER, ["C-1", "t1"]]})
    with pytest.raises(ExportRejected) as info:
        read_export(path, _profile(format="xlsx"), complete=True)
    assert "holds a mapped column name" in str(info.value)
    assert str(info.value).endswith("the workbook's sheets: 'Cover', 'Data'")
    frame = read_export(path, _profile(format="xlsx", sheet_pattern="da*"), complete=True)
    assert frame["source_line"].to_list() == [2]


def test_profile_keys_are_checked() -> None:
    with pytest.raises(ValueError, match="sheet_pattern: only for xlsx"):
        _profile(sheet_pattern="S*")
    with pytest.raises(ValueError, match="give one of them"):
        _profile(format="xlsx", sheet="S", sheet_pattern="S*")
    with pytest.raises(ValueError, match="header_row: only for csv and xlsx"):
        _profile(format="json", header_row=2)


FOOTER_CELLS = ["Total", "Totals (n=3)", "Summe: 41", "Mittelwert", "Grand total", "Average 7.5", "Mean 7,5",
                "Exported by FeedbackSuite on 2026-03-01", "Exportiert von Praxis", "Export date: 2026-03-01"]  # fmt: skip
SESSION_CELLS = ["C-101", "Totalia", "Sumi", "Total sessions cancelled", "N", "Anna Mean", "Exported"]


def test_footer_labels_are_told_from_session_rows() -> None:
    cells = [*FOOTER_CELLS, *SESSION_CELLS]
    # the label is the first filled cell: an empty first column does not hide it
    frame = pl.DataFrame(
        {"A": [None] * len(cells), "B": cells, "source_line": range(2, len(cells) + 2)},
        schema_overrides={"A": pl.String},
    )
    marked = mark_footer_rows(frame, "quarantine")
    assert marked.filter(pl.col(FOOTER_ROW))["B"].to_list() == FOOTER_CELLS
    assert mark_footer_rows(frame, "skip")["B"].to_list() == SESSION_CELLS
    plain = frame.filter(pl.col("B").is_in(SESSION_CELLS))
    assert mark_footer_rows(plain, "quarantine").columns == plain.columns  # no mark without a footer row


@pytest.mark.parametrize("layout", ["us_csv", "xlsx"])
def test_the_dry_run_says_where_the_header_was_found(settings: Settings, layout: str) -> None:
    sample = generate_sample(settings.home / "src", clinics=3, weeks=16, dyads_per_clinic=6, today=TODAY)
    wide = _wide(sample, layout)
    shaped, offset = _shaped(sample, layout, settings.home)
    drafted, _ = _drafted(shaped, wide.clinic_id)
    add_profiles(settings.clinics_file, {wide.clinic_id: drafted.model_dump(exclude={"id"}, exclude_defaults=True)})
    seen = rehearse(shaped, settings, wide.clinic_id)
    where = f"line {offset + 1}" if layout == "us_csv" else f"sheet 'Sessions {TODAY:%Y-%m}' row {offset + 1}"
    assert seen.header == f"{where} (header_row)"
    assert seen.quarantined.get("no_rating", 0) >= FOOTERS


def _footer_oracle(frame: pl.DataFrame) -> list[bool]:
    """The rule as written: the first filled cell of the row, in column order, is a summary label."""
    label = re.compile(FOOTER_LABEL)
    cells = [c for c in frame.columns if c != "source_line"]
    firsts = [next((v.strip() for v in row if v is not None and v.strip()), None) for row in frame.select(cells).rows()]
    return [first is not None and label.search(first) is not None for first in firsts]


CELL = st.sampled_from([None, "", "  ", "C-1", "t1", "9", *FOOTER_CELLS, *SESSION_CELLS])


@hypothesis_settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.lists(CELL, min_size=3, max_size=3), min_size=1, max_size=30))
def test_footer_marks_match_the_rule_as_written(rows: list[list[str | None]]) -> None:
    frame = pl.DataFrame(rows, schema={"a": pl.String, "b": pl.String, "c": pl.String}, orient="row")
    frame = frame.with_columns(pl.int_range(2, frame.height + 2).alias("source_line"))
    marked = mark_footer_rows(frame, "quarantine")
    found = marked[FOOTER_ROW].to_list() if FOOTER_ROW in marked.columns else [False] * frame.height
    assert found == _footer_oracle(frame)
