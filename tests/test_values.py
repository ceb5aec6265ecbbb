"""Hostile cell values through the real pipeline: each is quarantined with a rule and a reason that names the
line, the vendor column and the kind of value (never the value); the rest of the file loads and is scored."""

from __future__ import annotations

import io
import json
import zipfile
from datetime import date
from pathlib import Path

import duckdb
import pytest
import xlsxwriter

from alliance.clinics import load_clinics
from alliance.errors import ProfileError
from alliance.settings import Settings
from flows.pipeline import ExportResult, ingest_file
from tests.conftest import add_clinic
from transforms.quarantine import RULE_TEXT

NORTH = """
[clinics.north]
name = "North"
timezone = "America/Chicago"

[clinics.north.export]
date_format = {date_format}
instruments = ["SRS", "ORS"]

[clinics.north.export.columns]
"Client ID" = "client_ref"
"Clinician" = "therapist_id"
"Session Date" = "session_date"
"Session #" = "session_number"
"SRS Relationship" = "srs_relationship"
"SRS Goals" = "srs_goals"
"SRS Approach" = "srs_approach"
"SRS Overall" = "srs_overall"
"ORS Total" = "ors_total"
"""
HEADER = "Client ID,Clinician,Session Date,Session #,SRS Relationship,SRS Goals,SRS Approach,SRS Overall,ORS Total\n"
GOOD = [
    "C-101,t1,01/05/2026,1,9.5,9.0,9.1,9.2,20",
    "C-101,t1,01/12/2026,2,9.5,9.5,9.1,9.2,21",
    "C-102,t2,01/12/2026,1,8.0,8.0,8.0,8.0,18",
]
LAKE = """
[clinics.lake]
name = "Lake"

[clinics.lake.export]
format = "json"
instruments = ["SRS"]

[clinics.lake.export.columns]
"client" = "client_ref"
"therapist" = "therapist_id"
"date" = "session_date"
"session" = "session_number"
"srs" = "srs_total"
"""


def north_home(settings: Settings, date_format: str = '"%m/%d/%Y"') -> Settings:
    add_clinic(settings, NORTH.format(date_format=date_format))
    (settings.inbox / "north").mkdir()
    return settings


@pytest.fixture
def north(settings: Settings) -> Settings:
    return north_home(settings)


def drop_csv(settings: Settings, name: str, rows: list[str]) -> Path:
    path = settings.inbox / "north" / name
    path.write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def query(settings: Settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        return con.execute(sql).fetchall()


def quarantined(settings: Settings) -> list[tuple]:
    """(source_line, instrument, rules, reasons) of every quarantine row, in line order."""
    return query(settings, "SELECT source_line, instrument, rules, reasons FROM quarantine ORDER BY source_line, 2")


def assert_loaded_and_scored(result: ExportResult, new: int) -> None:
    assert result.status == "loaded", result.error
    assert result.rows_new == new
    assert result.scoring is not None and result.scoring.dyads_scored > 0


# ------------------------------------------------------------------------------------------ impossible dates


@pytest.mark.parametrize(("written", "shape"), [("01/05/0000", "99/99/9999"), ("0000-01-01", "9999-99-99")])
def test_a_session_date_in_year_zero_is_quarantined_and_the_rest_is_scored(
    north: Settings, written: str, shape: str
) -> None:
    result = ingest_file(drop_csv(north, "a.csv", [*GOOD, f"C-103,t2,{written},1,8.0,8.0,8.0,8.0,19"]), north)
    assert_loaded_and_scored(result, new=6)
    rows = quarantined(north)
    assert [(line, inst, rules) for line, inst, rules, _ in rows] == [
        (5, "ORS", ["implausible_date:session_date"]),
        (5, "SRS", ["implausible_date:session_date"]),
    ]
    text = rows[0][3][0]
    assert text.startswith("line 5, column 'Session Date' (session_date): is before 1990")
    assert f"written {shape}" in text and "year 0" in text
    assert written not in text


def test_a_negative_year_is_quarantined(north: Settings) -> None:
    result = ingest_file(drop_csv(north, "a.csv", [*GOOD, "C-103,t2,-0001-01-01,1,8.0,8.0,8.0,8.0,"]), north)
    assert_loaded_and_scored(result, new=6)
    assert [rules for _, _, rules, _ in quarantined(north)] == [["implausible_date:session_date"]]


def test_a_two_digit_year_is_quarantined_and_its_correction_loads_once(north: Settings) -> None:
    first = ingest_file(drop_csv(north, "a.csv", [*GOOD, "C-103,t2,01/13/26,1,8.0,8.0,8.0,8.0,"]), north)
    assert_loaded_and_scored(first, new=6)
    ((line, _, rules, reasons),) = quarantined(north)
    assert (line, rules) == (5, ["implausible_date:session_date"])
    assert reasons[0] == (
        "line 5, column 'Session Date' (session_date): is before 1990, not a plausible session date "
        "(written 99/99/99: a 2-digit year? add '%m/%d/%y' to the clinic's date_format)"
    )
    corrected = ingest_file(drop_csv(north, "b.csv", [*GOOD, "C-103,t2,01/13/2026,1,8.0,8.0,8.0,8.0,"]), north)
    assert (corrected.rows_new, corrected.rows_unchanged, corrected.rows_quarantined) == (1, 6, 0)
    assert query(north, "SELECT session_date FROM ratings WHERE source_line = 5") == [(date(2026, 1, 13),)]
    assert query(north, "SELECT min(session_date) FROM ratings") == [(date(2026, 1, 5),)]


def test_a_profile_may_declare_two_digit_years(settings: Settings) -> None:
    north = north_home(settings, date_format='["%m/%d/%Y", "%m/%d/%y"]')
    first = ingest_file(drop_csv(north, "a.csv", [*GOOD, "C-103,t2,01/13/26,1,8.0,8.0,8.0,8.0,"]), north)
    assert (first.rows_new, first.rows_quarantined) == (7, 0)
    # the same session written with four digits later is the same rating, not a second one
    again = ingest_file(drop_csv(north, "b.csv", [*GOOD, "C-103,t2,01/13/2026,1,8.0,8.0,8.0,8.0,"]), north)
    assert (again.rows_new, again.rows_unchanged) == (0, 7)
    assert query(north, "SELECT count(*) FROM ratings WHERE session_date = DATE '2026-01-13'") == [(1,)]


def test_a_date_before_1990_is_quarantined_with_its_shape(north: Settings) -> None:
    result = ingest_file(drop_csv(north, "a.csv", [*GOOD, "C-103,t2,01/13/1926,1,8.0,8.0,8.0,8.0,"]), north)
    assert_loaded_and_scored(result, new=6)
    ((_, _, rules, reasons),) = quarantined(north)
    assert rules == ["implausible_date:session_date"]
    assert "is before 1990" in reasons[0] and "written 99/99/9999" in reasons[0] and "1926" not in reasons[0]


# ------------------------------------------------------------------------------------------ huge numbers


def test_a_session_number_beyond_int64_in_csv_is_quarantined(north: Settings) -> None:
    row = "C-103,t2,01/13/2026,99999999999999999999,8.0,8.0,8.0,8.0,"
    result = ingest_file(drop_csv(north, "a.csv", [*GOOD, row]), north)
    assert_loaded_and_scored(result, new=6)
    ((line, _, rules, reasons),) = quarantined(north)
    assert (line, rules) == (5, ["out_of_range:session_number"])
    assert reasons[0] == (
        "line 5, column 'Session #' (session_number): is a whole number too large to store "
        "(20 digits), outside the allowed range 1–10000"
    )


def drop_json(settings: Settings, session: str) -> Path:
    records = [
        {"client": f"c{i}", "therapist": "t1", "date": f"2026-01-0{i + 1}", "session": 1, "srs": 38.6} for i in range(3)
    ]
    text = json.dumps(records)[:-1] + ', {"client": "c9", "therapist": "t1", "date": "2026-01-05", '
    path = settings.inbox / "lake" / "a.json"
    path.write_text(text + f'"session": {session}, "srs": 38.6}}]', encoding="utf-8")
    return path


@pytest.mark.parametrize("session", ["99999999999999999999", "1e30", "-1e30"])
def test_a_session_number_beyond_int64_in_json_is_quarantined(settings: Settings, session: str) -> None:
    add_clinic(settings, LAKE)
    (settings.inbox / "lake").mkdir()
    result = ingest_file(drop_json(settings, session), settings)
    assert_loaded_and_scored(result, new=3)
    ((line, _, rules, reasons),) = quarantined(settings)
    assert (line, rules) == (4, ["out_of_range:session_number"])
    assert reasons[0].startswith("line 4, column 'session' (session_number): is a whole number too large to store")
    assert "1e" not in reasons[0] and "9999" not in reasons[0]


def test_a_session_number_in_exponent_notation_in_csv_says_so(north: Settings) -> None:
    ingest_file(drop_csv(north, "a.csv", [*GOOD, "C-103,t2,01/13/2026,1e3,8.0,8.0,8.0,8.0,"]), north)
    ((_, _, rules, reasons),) = quarantined(north)
    assert rules == ["not_an_integer:session_number"]
    assert reasons[0].endswith("(session_number): is a number in exponent notation, not a plain whole number")


# ------------------------------------------------------------------------------------------ stored precision


def test_a_total_summed_from_items_is_stored_as_the_file_has_it(north: Settings) -> None:
    # 8.9 + 10.0 + 9.7 + 10.0 is 38.599999999999994 in floating point
    rows = ["C-101,t1,01/05/2026,1,10,10,10,10,", "C-101,t1,01/12/2026,2,8.9,10.0,9.7,10.0,"]
    ingest_file(drop_csv(north, "a.csv", rows), north)
    assert query(north, "SELECT session_number, items FROM ratings WHERE total = 38.6") == [(2, [8.9, 10.0, 9.7, 10.0])]
    assert query(north, "SELECT score FROM dyad_trajectory WHERE session_number = 2") == [(38.6,)]
    ((evidence,),) = query(north, "SELECT evidence FROM flags WHERE rule = 'drop'")
    scores = [point["score"] for point in json.loads(evidence)["sessions"]]
    assert scores == [40.0, 38.6]
    assert "38.59" not in evidence


def test_rescaled_items_are_stored_at_the_instruments_precision(settings: Settings) -> None:
    profile = NORTH.format(date_format='"%m/%d/%Y"').replace(
        'instruments = ["SRS", "ORS"]', 'instruments = ["SRS", "ORS"]\nitem_max = { SRS = 100 }'
    )
    add_clinic(settings, profile)
    (settings.inbox / "north").mkdir()
    # 73 × 0.1 is 7.300000000000001 in floating point
    ingest_file(drop_csv(settings, "a.csv", ["C-101,t1,01/05/2026,1,73,89,97,100,"]), settings)
    assert query(settings, "SELECT items, total FROM ratings") == [([7.3, 8.9, 9.7, 10.0], 35.9)]


# ------------------------------------------------------------------------------------------ smaller holes


def test_a_total_with_a_decimal_comma_is_not_a_number_not_empty(north: Settings) -> None:
    ingest_file(drop_csv(north, "a.csv", [*GOOD, 'C-103,t2,01/13/2026,1,8.0,8.0,8.0,8.0,"38,0"']), north)
    ((line, inst, rules, reasons),) = quarantined(north)
    assert (line, inst, rules) == (5, "ORS", ["not_a_number:total"])
    assert reasons == [
        "line 5, column 'ORS Total' (total): is not a number (looks like a decimal comma: "
        "set decimal_comma = true in the clinic's export profile)"
    ]


def test_an_empty_total_without_items_is_still_reported_empty(north: Settings) -> None:
    # ORS has only its total mapped: an empty ORS total is not a rating at all, an SRS item missing is
    ingest_file(drop_csv(north, "a.csv", [*GOOD, "C-103,t2,01/13/2026,1,8.0,,8.0,8.0,20"]), north)
    ((_, inst, rules, reasons),) = quarantined(north)
    assert (inst, sorted(rules)) == ("SRS", ["missing:srs_goals", "missing:total"])
    assert dict(zip(rules, reasons, strict=True))["missing:total"] == (
        "line 5, total: is empty, and not every item is there to compute it"
    )


INVISIBLE = ["\u200b", "\ufeff", "\u200d", "\u2060", "\u00ad", "\u200e"]


def test_invisible_characters_in_ids_do_not_make_a_second_client(north: Settings) -> None:
    rows = [f"C-101{mark},t1{mark},01/{5 + i:02d}/2026,{i + 1},9,9,9,9,20" for i, mark in enumerate(["", *INVISIBLE])]
    rows.append("\u200bC-\u2060101,t1,01/20/2026,9,9,9,9,9,20")
    result = ingest_file(drop_csv(north, "a.csv", rows), north)
    assert (result.rows_new, result.rows_quarantined) == (16, 0)
    assert query(north, "SELECT count(DISTINCT client_id), count(DISTINCT therapist_id) FROM ratings") == [(1, 1)]
    assert query(north, "SELECT client_ref FROM client_refs") == [("C-101",)]
    assert query(north, "SELECT DISTINCT therapist_id FROM ratings") == [("t1",)]


def test_a_nul_character_in_a_json_client_reference_is_stripped(settings: Settings) -> None:
    add_clinic(settings, LAKE)
    (settings.inbox / "lake").mkdir()
    records = [
        {"client": ref, "therapist": "t1", "date": f"2026-01-0{i + 1}", "session": i + 1, "srs": 30}
        for i, ref in enumerate(["c1", "c1\u0000", "\u0000c1", "c\u00001"])
    ]
    path = settings.inbox / "lake" / "a.json"
    path.write_text(json.dumps(records), encoding="utf-8")  # \u0000 escapes: valid JSON
    result = ingest_file(path, settings)
    assert (result.rows_new, result.rows_quarantined) == (4, 0)
    assert query(settings, "SELECT client_ref FROM client_refs") == [("c1",)]


def test_an_id_made_only_of_invisible_characters_is_missing(north: Settings) -> None:
    ingest_file(drop_csv(north, "a.csv", [*GOOD, "\u200b\ufeff,t2,01/13/2026,1,8.0,8.0,8.0,8.0,"]), north)
    assert [rules for _, _, rules, _ in quarantined(north)] == [["missing:client_ref"]]


# ------------------------------------------------------------------------------------------ hidden XLSX rows

HARBOR = """
[clinics.harbor]
name = "Harbor"

[clinics.harbor.export]
format = "xlsx"
instruments = ["SRS"]
{option}

[clinics.harbor.export.columns]
"Client" = "client_ref"
"Therapist" = "therapist_id"
"Date" = "session_date"
"Session" = "session_number"
"SRS" = "srs_total"
"""


def hidden_rows_workbook(path: Path, hidden: set[int]) -> Path:
    """Six sessions on sheet rows 2–7 (xlsxwriter), the given sheet rows hidden as a person hides them."""
    buffer = io.BytesIO()
    book = xlsxwriter.Workbook(buffer, {"in_memory": True})
    sheet = book.add_worksheet("Sessions")
    sheet.write_row(0, 0, ["Client", "Therapist", "Date", "Session", "SRS"])
    for i in range(6):
        sheet.write_row(i + 1, 0, [f"h{i % 2}", "t1", f"2026-01-{i + 5:02d}", i + 1, 30 + i])
        if i + 2 in hidden:
            sheet.set_row(i + 1, None, None, {"hidden": True})
    book.close()
    path.write_bytes(buffer.getvalue())
    return path


def harbor(settings: Settings, option: str = "") -> Path:
    add_clinic(settings, HARBOR.format(option=option))
    (settings.inbox / "harbor").mkdir()
    return settings.inbox / "harbor" / "h.xlsx"


def test_hidden_xlsx_rows_are_quarantined_with_their_own_rule(settings: Settings) -> None:
    result = ingest_file(hidden_rows_workbook(harbor(settings), hidden={3, 6}), settings)
    assert (result.status, result.rows_new, result.rows_quarantined) == ("loaded", 4, 2)
    assert result.top_reasons == [("hidden_row", 2)]
    rows = quarantined(settings)
    assert [(line, rules) for line, _, rules, _ in rows] == [(3, ["hidden_row"]), (6, ["hidden_row"])]
    assert rows[0][3] == [
        "line 3: the row is hidden in the workbook; unhide it and export again to load it, "
        'or set hidden_rows = "load" in the clinic\'s export profile'
    ]
    assert query(settings, "SELECT list(source_line ORDER BY source_line) FROM ratings") == [([2, 4, 5, 7],)]


def test_a_profile_may_load_hidden_rows(settings: Settings) -> None:
    result = ingest_file(hidden_rows_workbook(harbor(settings, 'hidden_rows = "load"'), hidden={3, 6}), settings)
    assert (result.rows_new, result.rows_quarantined) == (6, 0)


def test_hidden_rows_are_found_however_the_row_attributes_are_written(settings: Settings) -> None:
    path = hidden_rows_workbook(harbor(settings), hidden={3})
    with zipfile.ZipFile(path) as book:
        parts = {info.filename: book.read(info.filename) for info in book.infolist()}
    sheet = parts["xl/worksheets/sheet1.xml"]
    assert b'<row r="3" spans="1:5" hidden="1">' in sheet
    parts["xl/worksheets/sheet1.xml"] = sheet.replace(
        b'<row r="3" spans="1:5" hidden="1">', b"<row hidden='true' spans=\"1:5\" r='3'>"
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as book:
        for name, data in parts.items():
            book.writestr(name, data)
    result = ingest_file(path, settings)
    assert (result.rows_new, result.top_reasons) == (5, [("hidden_row", 1)])


def test_every_quarantine_rule_is_in_the_readme_rules_table() -> None:
    text = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    table = text[text.index("### Validation rules") : text.index("A file that cannot be read at all")]
    undocumented = [rule for rule in RULE_TEXT if f"| `{rule.partition(':')[0]}" not in table]
    assert undocumented == []


def test_a_date_in_another_format_says_which_format_was_expected(north: Settings) -> None:
    ingest_file(drop_csv(north, "a.csv", [*GOOD, "C-103,t2,13.01.2026,1,8.0,8.0,8.0,8.0,"]), north)
    ((_, _, rules, reasons),) = quarantined(north)
    assert rules == ["bad_date:session_date"]
    assert reasons == [
        "line 5, column 'Session Date' (session_date): is not a date in the clinic's date format %m/%d/%Y "
        "nor ISO (looks like %d.%m.%Y; written 99.99.9999)"
    ]


def test_a_date_hint_names_a_format_only_when_the_value_fits_one(north: Settings) -> None:
    # 31/31/2026 reads in no common format: the reason gives its shape and no guess
    ingest_file(drop_csv(north, "a.csv", [*GOOD, "C-103,t2,31/31/2026,1,8.0,8.0,8.0,8.0,"]), north)
    ((_, _, rules, reasons),) = quarantined(north)
    assert rules == ["bad_date:session_date"]
    assert reasons == [
        "line 5, column 'Session Date' (session_date): is not a date in the clinic's date format %m/%d/%Y "
        "nor ISO (written 99/99/9999)"
    ]


def test_a_day_first_date_is_hinted_as_day_first(north: Settings) -> None:
    ingest_file(drop_csv(north, "a.csv", [*GOOD, "C-103,t2,13/01/2026,1,8.0,8.0,8.0,8.0,"]), north)
    ((_, _, _, reasons),) = quarantined(north)
    assert reasons == [
        "line 5, column 'Session Date' (session_date): is not a date in the clinic's date format %m/%d/%Y "
        "nor ISO (looks like %d/%m/%Y; written 99/99/9999)"
    ]


@pytest.mark.parametrize("formula", [False, True])
def test_xlsx_lines_are_sheet_rows_when_the_table_starts_lower_down(settings: Settings, formula: bool) -> None:
    path = harbor(settings)
    buffer = io.BytesIO()
    book = xlsxwriter.Workbook(buffer, {"in_memory": True})
    sheet = book.add_worksheet("Sessions")
    sheet.write_blank(0, 0, None, book.add_format({"bold": True}))  # a styled, empty cell above the table
    sheet.write_row(2, 0, ["Client", "Therapist", "Date", "Session", "SRS"])
    for i in range(4):
        sheet.write_row(i + 3, 0, ["h1", "t1", f"2026-01-{i + 5:02d}", i + 1, 30 + i])
    if formula:  # a formula in an unmapped column takes the cell-by-cell path
        sheet.write_formula(3, 6, "=1+1", None, 2)
    sheet.write_row(7, 0, ["h1", "t1", "2026-01-09", 5, 55])  # out of range, on sheet row 8
    sheet.set_row(5, None, None, {"hidden": True})  # sheet row 6
    book.close()
    path.write_bytes(buffer.getvalue())
    result = ingest_file(path, settings)
    assert (result.rows_new, result.rows_quarantined) == (3, 2)
    assert [(line, rules) for line, _, rules, _ in quarantined(settings)] == [
        (6, ["hidden_row"]),
        (8, ["out_of_range:total"]),
    ]


def test_hidden_rows_is_refused_for_a_text_export(settings: Settings) -> None:
    add_clinic(
        settings,
        NORTH.format(date_format='"%m/%d/%Y"').replace(
            "[clinics.north.export]\n", '[clinics.north.export]\nhidden_rows = "load"\n'
        ),
    )
    with pytest.raises(ProfileError, match=r"clinic 'north': export: hidden_rows: only for xlsx exports"):
        load_clinics(settings.clinics_file)


def test_alliance_ingest_loads_both_clinics_when_one_file_holds_every_bad_value(settings: Settings) -> None:
    from typer.testing import CliRunner

    from alliance.cli import app

    north = north_home(settings)
    add_clinic(north, NORTH.format(date_format='"%m/%d/%Y"').replace("clinics.north", "clinics.south"))
    (north.inbox / "south").mkdir()
    bad = [
        "C-201,t3,01/05/0000,1,8,8,8,8,",
        "C-202,t3,0000-01-01,1,8,8,8,8,",
        "C-203,t3,-0001-01-01,1,8,8,8,8,",
        "C-204,t3,01/13/2026,99999999999999999999,8,8,8,8,",
        "C-205,t3,01/13/26,1,8,8,8,8,",
        'C-206,t3,01/13/2026,1,8,8,8,8,"38,0"',
    ]
    drop_csv(north, "north.csv", [*GOOD, *bad])
    south = [row.replace(",t", ",s", 1) for row in GOOD]  # south's own therapists
    (north.inbox / "south" / "south.csv").write_text(HEADER + "\n".join(south) + "\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["ingest", "--home", str(north.home)])
    assert result.exit_code == 0, result.output
    assert query(north, "SELECT clinic_id, status, rows_new FROM exports ORDER BY clinic_id") == [
        ("north", "loaded", 7),  # the good rows, and the SRS rating whose ORS total had a decimal comma
        ("south", "loaded", 6),
    ]
    rules = query(north, "SELECT DISTINCT unnest(rules) AS rule FROM quarantine ORDER BY rule")
    assert rules == [("implausible_date:session_date",), ("not_a_number:total",), ("out_of_range:session_number",)]
    assert query(north, "SELECT clinic_id, count(*) FROM dyads GROUP BY ALL ORDER BY 1") == [("north", 3), ("south", 2)]


def test_a_hidden_first_sheet_is_not_read_as_the_export(settings: Settings) -> None:
    path = harbor(settings)
    buffer = io.BytesIO()
    book = xlsxwriter.Workbook(buffer, {"in_memory": True})
    old, sessions = book.add_worksheet("Old copy"), book.add_worksheet("Sessions")
    for sheet, total in ((old, 11), (sessions, 33)):
        sheet.write_row(0, 0, ["Client", "Therapist", "Date", "Session", "SRS"])
        sheet.write_row(1, 0, ["h1", "t1", "2026-01-05", 1, total])
    sessions.activate()
    old.hide()
    book.close()
    path.write_bytes(buffer.getvalue())
    result = ingest_file(path, settings)
    assert (result.status, result.rows_new) == ("loaded", 1)
    assert query(settings, "SELECT total FROM ratings") == [(33.0,)]
