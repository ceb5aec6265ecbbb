"""Hostile and broken exports: every one is rejected with a clear message or quarantined row by row with a
reason; nothing from other files is lost; no unhandled exception; no silent lossy decode."""

from __future__ import annotations

import codecs
import io
import json
import os
import struct
import zipfile
from collections.abc import Callable
from datetime import date
from pathlib import Path

import duckdb
import polars as pl
import pytest
import xlsxwriter
from hypothesis import given, settings
from hypothesis import strategies as st

from alliance.clinics import ExportProfile
from alliance.errors import ConfigError, ExportRejected
from alliance.readers import ReadLimits, decode, read_export
from alliance.settings import Settings
from alliance.storage import Warehouse, writer_lease
from alliance.storage.session import Session
from flows.events import is_candidate
from flows.pipeline import ExportResult, inbox_files, ingest_file
from tests.conftest import add_clinic

NORTH = """
[clinics.north]
name = "North"
timezone = "America/Chicago"

[clinics.north.export]
date_format = "%m/%d/%Y"
instruments = ["SRS"]

[clinics.north.export.columns]
"Client ID" = "client_ref"
"Clinician" = "therapist_id"
"Session Date" = "session_date"
"Session #" = "session_number"
"SRS Relationship" = "srs_relationship"
"SRS Goals" = "srs_goals"
"SRS Approach" = "srs_approach"
"SRS Overall" = "srs_overall"
"""
SOUTH = NORTH.replace("clinics.north", "clinics.south").replace('"North"', '"South"')
BERLIN = """
[clinics.berlin]
name = "Berlin"
timezone = "Europe/Berlin"

[clinics.berlin.export]
date_format = "%d.%m.%Y"
instruments = ["SRS"]

[clinics.berlin.export.columns]
"Klient" = "client_ref"
"Therapeut" = "therapist_id"
"Datum" = "session_date"
"Sitzung" = "session_number"
"Summe" = "srs_total"
"""
HARBOR = """
[clinics.harbor]
name = "Harbor"

[clinics.harbor.export]
format = "xlsx"
instruments = ["SRS"]

[clinics.harbor.export.columns]
"Client" = "client_ref"
"Therapist" = "therapist_id"
"Date" = "session_date"
"No" = "session_number"
"Total" = "srs_total"
"""
HEADER = (
    "Client ID,Clinician,Session Date,Session #,SRS Relationship,SRS Goals,SRS Approach,SRS Overall,ORS Total,Notes"
)
GOOD = "C-{n},t1,01/05/2026,{n},9.5,9.0,9.1,9.2,20,fine"

COLUMNS = {
    "Client": "client_ref",
    "Therapist": "therapist_id",
    "Date": "session_date",
    "No": "session_number",
    "Total": "srs_total",
}


def profile(**overrides: object) -> ExportProfile:
    base: dict[str, object] = {"instruments": ["SRS"], "columns": COLUMNS}
    return ExportProfile(**{**base, **overrides})


@pytest.fixture
def home(settings: Settings) -> Settings:
    """North (test_pipeline's layout, SRS only: one GX run per load), South (the same), Berlin, Harbor (XLSX)."""
    for text in (NORTH, SOUTH, BERLIN, HARBOR):
        add_clinic(settings, text)
    for clinic in ("north", "south", "berlin", "harbor"):
        (settings.inbox / clinic).mkdir()
    return settings


def put(settings: Settings, clinic: str, name: str, data: bytes | str) -> Path:
    path = settings.inbox / clinic / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def csv_text(*rows: str, header: str = HEADER) -> str:
    return header + "\n" + "\n".join(rows) + "\n"


def query(settings: Settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        return con.execute(sql).fetchall()


def quarantine_by_line(settings: Settings, export_id: str) -> dict[int, list[str]]:
    rows = query(
        settings, f"SELECT source_line, rules FROM quarantine WHERE export_id = '{export_id}' ORDER BY source_line"
    )
    found: dict[int, list[str]] = {}
    for line, rules in rows:
        found.setdefault(line, []).extend(rules)
    return found


def ledger_consistent(settings: Settings) -> None:
    ((total, accounted),) = query(
        settings,
        "SELECT sum(rows_total), sum(rows_new + rows_updated + rows_unchanged + rows_quarantined) FROM exports",
    )
    assert total == accounted


def rejected(result: ExportResult, *fragments: str) -> None:
    assert result.status == "rejected", result
    for fragment in fragments:
        assert fragment in (result.error or ""), result.error


# ------------------------------------------------------------------------------------------------ XLSX


def workbook(
    rows: list[list[object]],
    header: list[str | None] | None = None,
    formulas: dict[tuple[int, int], tuple[str, object]] | None = None,
) -> bytes:
    """An XLSX (xlsxwriter) with a header row and rows; formulas: (row, col) -> (formula, cached value or None)."""
    buffer = io.BytesIO()
    book = xlsxwriter.Workbook(buffer, {"in_memory": True})
    sheet = book.add_worksheet("Sessions")
    sheet.write_row(0, 0, header if header is not None else list(COLUMNS))
    for r, row in enumerate(rows, start=1):
        sheet.write_row(r, 0, row)
    for (r, c), (formula, value) in (formulas or {}).items():
        if value is None:
            sheet.write_formula(r, c, formula)
        else:
            sheet.write_formula(r, c, formula, None, value)
    book.close()
    return buffer.getvalue()


def rezip(data: bytes, change: Callable[[str, bytes], bytes | None], extra: dict[str, bytes] | None = None) -> bytes:
    """The same workbook with some parts changed (None drops a part) and some added."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            changed = change(info.filename, source.read(info.filename))
            if changed is not None:
                target.writestr(info.filename, changed)
        for name, payload in (extra or {}).items():
            target.writestr(name, payload)
    return out.getvalue()


def as_calculated(data: bytes) -> bytes:
    """What a spreadsheet program saves: formula results stored, no 'recalculate on load' flag."""
    return rezip(
        data, lambda name, part: part.replace(b' fullCalcOnLoad="1"', b"") if name == "xl/workbook.xml" else part
    )


ROWS: list[list[object]] = [["K1", "t1", "2026-01-05", 1, 30], ["K2", "t1", "2026-01-12", 2, 31.5]]


def read_xlsx_data(tmp_path: Path, data: bytes, name: str = "w.xlsx", **limits: object) -> pl.DataFrame:
    path = tmp_path / name
    path.write_bytes(data)
    return read_export(path, profile(format="xlsx"), limits=ReadLimits(**limits))  # type: ignore[arg-type]


def xlsx_rejection(tmp_path: Path, data: bytes, name: str = "w.xlsx", **limits: object) -> str:
    with pytest.raises(ExportRejected) as info:
        read_xlsx_data(tmp_path, data, name, **limits)
    assert str(info.value).startswith(f"{name}: ")
    return info.value.problem


def test_a_plain_workbook_reads(tmp_path: Path) -> None:
    frame = read_xlsx_data(tmp_path, workbook(ROWS))
    assert frame["Total"].to_list() == ["30", "31.5"]
    assert frame["source_line"].to_list() == [2, 3]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"this is not a workbook at all", "cannot read as XLSX: not a zip archive"),
        (b"PK\x03\x04" + b"\x00" * 40, "cannot read as XLSX: the zip archive is truncated or damaged"),
        (codecs.BOM_UTF8 + b"Client,Therapist\n", "cannot read as XLSX: not a zip archive"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100, "password-protected or old binary (.xls) workbook"),
    ],
    ids=["garbage", "zip-header-only", "csv-named-xlsx", "ole2-encrypted-or-xls"],
)
def test_files_that_are_not_workbooks_are_rejected(tmp_path: Path, data: bytes, message: str) -> None:
    assert message in xlsx_rejection(tmp_path, data)


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_workbook_is_rejected(tmp_path: Path, keep: float) -> None:
    whole = workbook(ROWS)
    problem = xlsx_rejection(tmp_path, whole[: int(len(whole) * keep)])
    assert problem.startswith("cannot read as XLSX: the zip archive is")


def test_zip_bomb_by_ratio_is_rejected(tmp_path: Path) -> None:
    bomb = rezip(workbook(ROWS), lambda _n, part: part, extra={"xl/media/zeros.bin": b"\x00" * 20_000_000})
    assert len(bomb) < 200_000
    problem = xlsx_rejection(tmp_path, bomb)
    assert "expands to more than 100 times its size (ALLIANCE_MAX_XLSX_RATIO)" in problem
    assert "zip bomb" in problem


def test_zip_bomb_by_size_is_rejected(tmp_path: Path) -> None:
    noise = os.urandom(3_000_000)  # incompressible: a low ratio, but over the size cap
    big = rezip(workbook(ROWS), lambda _n, part: part, extra={"xl/media/noise.bin": noise})
    problem = xlsx_rejection(tmp_path, big, max_xlsx_uncompressed_bytes=2_000_000)
    assert "expands to more than 2 MB (ALLIANCE_MAX_XLSX_UNCOMPRESSED_MB)" in problem


def test_a_part_lying_about_its_size_is_rejected(tmp_path: Path) -> None:
    data = bytearray(workbook(ROWS))
    # shrink the sheet's declared size in the central directory: it would inflate past what it claims
    name = b"xl/worksheets/sheet1.xml"
    entry = data.find(b"PK\x01\x02")
    while entry >= 0:
        name_len = struct.unpack_from("<H", data, entry + 28)[0]
        if bytes(data[entry + 46 : entry + 46 + name_len]) == name:
            struct.pack_into("<I", data, entry + 24, 10)
            break
        entry = data.find(b"PK\x01\x02", entry + 4)
    assert entry >= 0
    assert "damaged" in xlsx_rejection(tmp_path, bytes(data))


def test_a_stray_cell_far_away_is_rejected_before_calamine_allocates(tmp_path: Path) -> None:
    # calamine would allocate the whole 1,048,576 × 16,384 range and abort the process
    far = rezip(
        workbook(ROWS),
        lambda n, part: (
            part.replace(b"</sheetData>", b'<row r="1048576"><c r="XFD1048576"><v>1</v></c></row></sheetData>')
            if n == "xl/worksheets/sheet1.xml"
            else part
        ),
    )
    problem = xlsx_rejection(tmp_path, far)
    assert "the sheet's cells reach XFD1048576 (1,048,576 rows × 16,384 columns" in problem
    assert "(ALLIANCE_MAX_XLSX_CELLS)" in problem


def test_cells_placed_by_position_count_too(tmp_path: Path) -> None:
    # no r= attributes: calamine places cells one after another; the scan must count them the same way
    sheet = (
        b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
        b"<row>" + b'<c t="inlineStr"><is><t>x</t></is></c>' * 40 + b"</row></sheetData></worksheet>"
    )
    data = rezip(workbook(ROWS), lambda n, part: sheet if n == "xl/worksheets/sheet1.xml" else part)
    assert "1 rows × 40 columns = 40 cells" in xlsx_rejection(tmp_path, data, max_xlsx_cells=39)


def test_sheet_rows_over_the_cap_are_rejected(tmp_path: Path) -> None:
    rows = [[f"K{i}", "t1", "2026-01-05", i, 30] for i in range(1, 11)]
    problem = xlsx_rejection(tmp_path, workbook(rows), max_rows=5)
    assert problem == "the file has 10 sheet rows, over the limit of 5 (ALLIANCE_MAX_ROWS)"


@pytest.mark.parametrize("suffix", [".xlsm", ".xlsb", ".xls", ".XLSM"])
def test_macro_binary_and_old_workbook_extensions_are_refused(tmp_path: Path, suffix: str) -> None:
    problem = xlsx_rejection(tmp_path, workbook(ROWS), name=f"w{suffix}")
    assert problem.endswith("export it as .xlsx (without macros) or CSV")
    if suffix.lower() == ".xlsm":
        assert "macros are never run and such files are refused" in problem


def test_a_vba_project_inside_an_xlsx_is_refused(tmp_path: Path) -> None:
    data = rezip(workbook(ROWS), lambda _n, part: part, extra={"xl/vbaProject.bin": b"\x00" * 64})
    problem = xlsx_rejection(tmp_path, data)
    assert problem.startswith("a macro-enabled workbook: macros are never run and such files are refused")


def test_a_macro_enabled_content_type_is_refused(tmp_path: Path) -> None:
    main = b"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"
    data = rezip(
        workbook(ROWS),
        lambda n, part: (
            part.replace(main, b"application/vnd.ms-excel.sheet.macroEnabled.main+xml")
            if n == "[Content_Types].xml"
            else part
        ),
    )
    assert "macro-enabled workbook" in xlsx_rejection(tmp_path, data)


def test_an_opendocument_spreadsheet_is_not_an_xlsx(tmp_path: Path) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as ods:
        ods.writestr("mimetype", "application/vnd.oasis.opendocument.spreadsheet")
        ods.writestr("content.xml", "<office:document-content/>")
    assert "no xl/workbook.xml" in xlsx_rejection(tmp_path, out.getvalue())


def test_formula_without_calculated_result_never_becomes_a_score(tmp_path: Path) -> None:
    # xlsxwriter stores 0 as the result of a formula it was not told the value of, and flags the workbook
    # 'fullCalcOnLoad': calamine alone would return "0", a valid SRS total.
    data = workbook([["K1", "t1", "2026-01-05", 1]], formulas={(1, 4): ("=10*3", None)})
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert b"<f>10*3</f><v>0</v>" in archive.read("xl/worksheets/sheet1.xml")
    problem = xlsx_rejection(tmp_path, data)
    assert problem.startswith("column 'Total' holds formulas whose results were never calculated (cell E2)")
    assert "recalculated when opened" in problem


def test_formula_with_a_given_value_in_a_recalculate_on_load_workbook_is_refused_too(tmp_path: Path) -> None:
    data = workbook(
        [["K1", "t1", "2026-01-05", 1], ["K2", "t1", "2026-01-05", 2]],
        formulas={(1, 4): ("=10*3", 30), (2, 4): ("=10*3", 30)},
    )
    assert "(cell E2, and 1 more)" in xlsx_rejection(tmp_path, data)


def test_formula_result_of_a_calculated_workbook_is_the_value_used(tmp_path: Path) -> None:
    data = as_calculated(workbook([["K1", "t1", "2026-01-05", 1]], formulas={(1, 4): ("=10*3", 30)}))
    assert read_xlsx_data(tmp_path, data)["Total"].to_list() == ["30"]


def test_formula_with_no_stored_result_is_refused_even_in_a_calculated_workbook(tmp_path: Path) -> None:
    data = as_calculated(workbook([["K1", "t1", "2026-01-05", 1]], formulas={(1, 4): ("=10*3", 30)}))
    data = rezip(data, lambda n, part: part.replace(b"<v>30</v>", b"") if n == "xl/worksheets/sheet1.xml" else part)
    problem = xlsx_rejection(tmp_path, data)
    assert "(cell E2): the formulas have no stored result" in problem


def test_formula_in_an_unmapped_column_is_ignored(tmp_path: Path) -> None:
    data = workbook(
        [["K1", "t1", "2026-01-05", 1, 30]],
        header=[*COLUMNS, "Note"],
        formulas={(1, 5): ('="note "&A2', None)},
    )
    assert read_xlsx_data(tmp_path, data)["Total"].to_list() == ["30"]


def test_error_cell_in_a_mapped_column_reads_as_no_value(tmp_path: Path) -> None:
    data = as_calculated(workbook([["K1", "t1", "2026-01-05", 1]], formulas={(1, 4): ("=1/0", "#DIV/0!")}))
    assert read_xlsx_data(tmp_path, data)["Total"].to_list() == [None]  # -> missing:total, quarantined


def test_duplicate_mapped_header_in_a_workbook_is_rejected(tmp_path: Path) -> None:
    data = workbook(
        [["K1", "t1", "2026-01-05", "2026-01-06", 1, 30]], header=["Client", "Therapist", "Date", "date", "No", "Total"]
    )
    problem = xlsx_rejection(tmp_path, data)
    assert problem.startswith("the header has 2 columns named 'Date' (column C, column D), mapped to session_date")


def test_blank_header_cell_in_a_workbook_is_an_unnamed_unmapped_column(tmp_path: Path) -> None:
    data = workbook([["K1", "t1", "2026-01-05", 1, 30, "secret"]], header=[*COLUMNS, None])
    frame = read_xlsx_data(tmp_path, data)
    assert frame.columns == [*COLUMNS, "__UNNAMED__5", "source_line"]


# ------------------------------------------------------------------------------------------------ row caps


@pytest.mark.parametrize(
    ("name", "export_format", "data", "unit"),
    [
        ("r.csv", "csv", ("Client,Therapist,Date,No,Total\n" + "K,t,2026-01-05,1,30\n" * 6).encode(), "rows"),
        ("r.json", "json", json.dumps([{"a": i} for i in range(6)]).encode(), "records"),
        ("r.ndjson", "ndjson", b'{"a": 1}\n' * 6, "records"),
    ],
)
def test_row_cap_for_text_exports(tmp_path: Path, name: str, export_format: str, data: bytes, unit: str) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ExportRejected) as info:
        read_export(path, profile(format=export_format), limits=ReadLimits(max_rows=5))
    assert info.value.problem == f"the file has 6 {unit}, over the limit of 5 (ALLIANCE_MAX_ROWS)"
    assert read_export(path, profile(format=export_format), limits=ReadLimits(max_rows=6)).height == 6


# ------------------------------------------------------------------------------------------------ bytes


TEXT = "Klient;Therapeut;Datum\nK1;Müller;05.01.2026\nK2;Jäger;12.01.2026\n"


def test_utf16_big_endian_with_bom_reads() -> None:
    assert decode(codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be"), "auto", "x.csv") == TEXT
    assert decode(codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be"), "cp1252", "x.csv") == TEXT  # the BOM wins


def test_utf16_cut_mid_character_names_the_line() -> None:
    data = codecs.BOM_UTF16_LE + TEXT.encode("utf-16-le") + b"K"
    with pytest.raises(ExportRejected, match=r"not valid utf-16 at line 4"):
        decode(data, "auto", "x.csv")


LONE_BYTE = b"Klient;Therapeut;Datum\nK1;M\xfcller;05.01.2026\nK2;Jaeger;12.01.2026\n"


def test_lone_invalid_byte_declared_utf8_is_rejected_naming_the_line() -> None:
    with pytest.raises(ExportRejected) as info:
        decode(LONE_BYTE, "utf-8", "x.csv")
    assert info.value.problem.startswith("not valid UTF-8 at line 2 (byte 0xFC)")


def test_lone_invalid_byte_auto_falls_back_to_cp1252_only_when_the_whole_file_is_cp1252() -> None:
    text = decode(LONE_BYTE, "auto", "x.csv")
    assert "Müller" in text
    assert text.encode("cp1252") == LONE_BYTE  # round trip: no character replaced or dropped
    assert "\ufffd" not in text


def test_utf8_text_with_a_lone_invalid_byte_is_mixed_and_rejected() -> None:
    mixed = "Klient;Therapeut\nK1;Jäger\n".encode() + b"K2;M\xfcller\n"
    with pytest.raises(ExportRejected) as info:
        decode(mixed, "auto", "x.csv")
    assert info.value.problem.startswith("mixed encodings: UTF-8 text (line 2) and a byte that is not UTF-8 (0xFC")


def test_byte_undefined_in_cp1252_is_rejected() -> None:
    with pytest.raises(ExportRejected, match=r"unknown encoding: not UTF-8 \(line 2\) and not cp1252 \(byte 0x81"):
        decode(b"a;b\nK1;\x81\n", "auto", "x.csv")


@pytest.mark.parametrize("declared", ["auto", "utf-8", "cp1252"])
def test_nul_byte_is_rejected_naming_the_line(declared: str) -> None:
    with pytest.raises(ExportRejected) as info:
        decode(b"a;b\nK1;x\nK2;\x00y\n", declared, "x.csv")
    assert info.value.problem.startswith("contains NUL bytes (first at line 3)")


def test_nul_character_in_utf16_is_rejected() -> None:
    with pytest.raises(ExportRejected, match="contains NUL bytes"):
        decode("a;b\nK1;\x00\n".encode("utf-16"), "auto", "x.csv")


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"


@pytest.mark.parametrize(
    ("name", "export_format", "data", "what"),
    [
        ("photo.csv", "csv", PNG, "a PNG image"),
        ("photo.json", "json", PNG, "a PNG image"),
        ("book.csv", "csv", workbook(ROWS), "a ZIP archive (an XLSX workbook?)"),
        ("doc.ndjson", "ndjson", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "a PDF document"),
        ("old.csv", "csv", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64, "an old binary Excel (.xls) or"),
    ],
    ids=["png-as-csv", "png-as-json", "xlsx-as-csv", "pdf-as-ndjson", "xls-as-csv"],
)
def test_binary_files_posing_as_text_are_rejected(
    tmp_path: Path, name: str, export_format: str, data: bytes, what: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ExportRejected) as info:
        read_export(path, profile(format=export_format))
    assert info.value.problem.startswith(f"this is {what}")
    assert f"not a {export_format.upper()} text export; check the file" in info.value.problem


def test_random_binary_without_a_known_signature_is_rejected_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "noise.csv"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ExportRejected):
        read_export(path, profile())


# ------------------------------------------------------------------------------------------------ CSV layout


def test_ragged_row_is_rejected_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("Client,Therapist,Date,No,Total\nK1,t,2026-01-05,1,30\nK2,t,2026-01-05,2,30,extra,more\n")
    with pytest.raises(ExportRejected) as info:
        read_export(path, profile())
    assert info.value.problem.endswith("line 3 has 7 fields, the header has 5")


def test_json_with_a_key_given_twice_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "twice.json"
    path.write_text('[{"Client": "K1", "Date": "2026-01-05", "Date": "2026-01-06"}]')
    with pytest.raises(ExportRejected) as info:
        read_export(path, profile(format="json"))
    assert info.value.problem == "a JSON object has the key 'Date' twice: which value to use is ambiguous"


def test_json_keys_colliding_when_flattened_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "dots.json"
    path.write_text('[{"srs.total": "30", "srs": {"total": "31"}}]')
    with pytest.raises(ExportRejected, match=r"two fields flatten to the same name \(text\)"):
        read_export(path, profile(format="json"))


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("[" * 5000 + "]" * 5000, "JSON nested too deeply"),
        ('[{"Client": "\\ud800"}]', "not valid Unicode (a lone surrogate"),
        ('{"a": 1}\n', "unexpected JSON shape"),
    ],
    ids=["deep", "lone-surrogate", "no-records-path"],
)
def test_hostile_json_shapes_are_rejected(tmp_path: Path, document: str, message: str) -> None:
    path = tmp_path / "h.json"
    path.write_text(document)
    with pytest.raises(ExportRejected, match=message.replace("(", r"\(")):
        read_export(path, profile(format="json", records="clients.sessions" if "shape" in message else None))


# ------------------------------------------------------------------------------------------------ pipeline


def test_columns_renamed_missing_extra_recased_duplicated_and_blank(home: Settings) -> None:
    def ingest(name: str, header: str, row: str = GOOD.format(n=1)) -> ExportResult:
        return ingest_file(put(home, "north", name, csv_text(row, header=header)), home)

    renamed = ingest("renamed.csv", HEADER.replace("Session Date", "Date of Session"))
    rejected(renamed, "renamed.csv: missing required column(s) 'Session Date' (-> session_date)")
    dropped = ingest("missing.csv", HEADER.replace(",SRS Goals", ""), "C-1,t1,01/05/2026,1,9.5,9.1,9.2,20,x")
    rejected(dropped, "missing required column(s) 'SRS Goals' (-> srs_goals)")
    duplicate = ingest("twice.csv", HEADER.replace("Session #", "Session Date"))
    rejected(
        duplicate,
        "the header has 2 columns named 'Session Date' (column 3, column 4), mapped to session_date",
        "the mapping is ambiguous",
    )
    recased = ingest(
        "recased.csv", HEADER.replace("Session Date", "  session   DATE ").replace("Clinician", "CLINICIAN")
    )
    assert (recased.status, recased.rows_new, recased.rows_quarantined) == ("loaded", 1, 0)
    extra = HEADER + ",Therapist Notes,,Notes"  # an extra column, a blank header cell, an unmapped repeat
    row = GOOD.format(n=2) + ",EXTRA-SECRET-1,BLANK-SECRET-2,REPEAT-SECRET-3"
    with_extra = ingest_file(put(home, "north", "extra.csv", csv_text(row, header=extra)), home)
    assert (with_extra.status, with_extra.rows_new) == ("loaded", 1)
    with duckdb.connect(str(home.warehouse), read_only=True) as con:
        tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        dump = " ".join(str(con.execute(f'SELECT * FROM "{table}"').fetchall()) for table in tables)
    assert {"ratings", "quarantine", "exports", "client_refs"} <= set(tables)
    for secret in ("EXTRA-SECRET", "BLANK-SECRET", "REPEAT-SECRET"):
        assert secret not in dump, secret
    ledger_consistent(home)


def test_bad_values_are_quarantined_with_their_rule(home: Settings) -> None:
    bad = {
        3: ("12.5", "out_of_range:srs_goals"),
        4: ("abc", "not_a_number:srs_goals"),
        5: ("-1", "out_of_range:srs_goals"),
        6: ("nan", "not_a_number:srs_goals"),
        7: ("inf", "not_a_number:srs_goals"),
        8: ("-inf", "not_a_number:srs_goals"),
        9: ("1e3", "not_a_number:srs_goals"),
        10: ("NaN", "not_a_number:srs_goals"),
        11: ("1e0", "not_a_number:srs_goals"),
    }
    rows = [GOOD.format(n=1)]  # line 2
    rows += [f"C-{line},t1,01/05/2026,1,9.5,{goals},9.1,9.2,," for line, (goals, _rule) in bad.items()]
    rows += [
        "C-12,t1,01/05/2099,1,9.5,9,9.1,9.2,,",  # line 12: future
        "C-13,t1,02/30/2026,1,9.5,9,9.1,9.2,,",  # line 13: impossible date
        "C-14,t1,01/05/2026,0,9.5,9,9.1,9.2,,",  # line 14: session 0
        "C-15,t1,01/05/2026,1.5,9.5,9,9.1,9.2,,",  # line 15: not whole
        "C-16,t1,01/05/2026,1,,,,,20,",  # line 16: no SRS value at all (ORS Total is not mapped)
    ]
    lenient = home.model_copy(update={"quarantine_file_share": 1.0})
    result = ingest_file(put(home, "north", "values.csv", csv_text(*rows)), lenient)
    assert result.status == "loaded"
    found = quarantine_by_line(home, result.export_id)
    for line, (_goals, rule) in bad.items():
        assert rule in found[line], (line, found[line])
    assert "date_in_future:session_date" in found[12]
    assert "bad_date:session_date" in found[13]
    assert "out_of_range:session_number" in found[14]
    assert "not_an_integer:session_number" in found[15]
    assert found[16] == ["no_rating"]
    # only line 2 loads; no NaN or infinity ever reaches the warehouse
    assert query(home, "SELECT source_line, instrument FROM ratings") == [(2, "SRS")]
    assert query(home, "SELECT count(*) FROM ratings WHERE isnan(total) OR isinf(total)") == [(0,)]
    assert (result.rows_total, result.rows_new, result.rows_quarantined) == (15, 1, 14)
    ledger_consistent(home)


def test_date_times_in_dst_gaps_and_overlaps_load_with_their_clinic_date(home: Settings) -> None:
    rows = [
        "K1;t1;2026-03-29 02:30;1;30",  # Berlin: 02:30 does not exist that night (gap)
        "K1;t1;2026-10-25 02:30;2;31",  # Berlin: 02:30 happens twice that night (overlap)
        "K1;t1;2026-10-25T02:30:00;3;32",
        "K1;t1;2026-03-29T01:30:00Z;4;33",  # = 03:30 CEST on the 29th
        "K1;t1;2026-10-24T23:30:00Z;5;34",  # = 01:30 CEST on the 25th in Berlin, still the 24th in UTC
        "K1;t1;2026-10-25T02:30:00+01:00;6;35",
        "K1;t1;29.03.2026;7;36",
    ]
    path = put(home, "berlin", "dst.csv", "Klient;Therapeut;Datum;Sitzung;Summe\n" + "\n".join(rows) + "\n")
    result = ingest_file(path, home)
    assert (result.status, result.rows_new, result.rows_quarantined) == ("loaded", 7, 0)
    dates = query(home, "SELECT session_number, session_date FROM ratings ORDER BY 1")
    assert dates == [
        (1, date(2026, 3, 29)),
        (2, date(2026, 10, 25)),
        (3, date(2026, 10, 25)),
        (4, date(2026, 3, 29)),
        (5, date(2026, 10, 25)),
        (6, date(2026, 10, 25)),
        (7, date(2026, 3, 29)),
    ]


def test_duplicate_keys_within_a_file_and_across_files(home: Settings) -> None:
    within = [GOOD.format(n=1), GOOD.format(n=1).replace("9.2,20", "8.2,20"), *(GOOD.format(n=n) for n in (2, 5, 6))]
    first = ingest_file(put(home, "north", "a.csv", csv_text(*within)), home)
    found = quarantine_by_line(home, first.export_id)
    # both copies, never one silently chosen
    assert found == {2: ["duplicate_in_file:session_number"], 3: ["duplicate_in_file:session_number"]}
    assert (first.status, first.rows_total, first.rows_new, first.rows_quarantined) == ("loaded", 5, 3, 2)
    # across files: the later file updates, unchanged stays unchanged, new is new
    second_rows = [GOOD.format(n=2).replace("9.0,9.1", "7.0,9.1"), *(GOOD.format(n=n) for n in (1, 3, 5))]
    second = ingest_file(put(home, "north", "b.csv", csv_text(*second_rows)), home)
    assert (second.rows_new, second.rows_updated, second.rows_unchanged, second.rows_quarantined) == (2, 1, 1, 0)
    third = ingest_file(put(home, "north", "c.csv", csv_text(*second_rows, GOOD.format(n=4))), home)
    assert (third.rows_new, third.rows_updated, third.rows_unchanged) == (1, 0, 4)
    assert query(home, "SELECT count(*) FROM ratings") == [(6,)]
    assert query(home, "SELECT count(*) FROM rating_history") == [(1,)]
    ((dupes,),) = query(
        home,
        "SELECT count(*) FROM (SELECT 1 FROM ratings GROUP BY clinic_id, client_id, therapist_id, instrument, "
        "session_date, session_number HAVING count(*) > 1)",
    )
    assert dupes == 0
    ledger_consistent(home)


def test_zero_byte_and_half_written_files(home: Settings) -> None:
    empty = ingest_file(put(home, "north", "empty.csv", b""), home)
    rejected(empty, "empty.csv: the file is empty (0 bytes)")
    # still being written: the last line stops after "9" of "9.2": it would parse as a valid item
    cut = csv_text(GOOD.format(n=1)) + "C-2,t1,01/05/2026,2,9.5,9.0,9.1,9"
    half = ingest_file(put(home, "north", "half.csv", cut), home)
    rejected(half, "the file does not end with a newline: still being written or truncated (line 3 may be cut short)")
    assert query(home, "SELECT count(*) FROM ratings") == [(0,)]
    assert query(home, "SELECT file_name, status FROM exports ORDER BY 1") == [
        ("empty.csv", "rejected"),
        ("half.csv", "rejected"),
    ]
    assert (home.archive / "north" / "rejected").exists()
    assert not list((home.inbox / "north").iterdir())
    # a vendor that never writes a final newline can be accepted network-wide
    relaxed = home.model_copy(update={"require_final_newline": False})
    complete = ingest_file(put(home, "north", "nonl.csv", csv_text(GOOD.format(n=1)).rstrip("\n")), relaxed)
    assert (complete.status, complete.rows_new) == ("loaded", 1)


def test_rows_over_the_cap_reject_the_file(home: Settings) -> None:
    capped = home.model_copy(update={"max_rows": 2})
    result = ingest_file(put(home, "north", "many.csv", csv_text(*(GOOD.format(n=n) for n in range(1, 4)))), capped)
    rejected(result, "many.csv: the file has 3 rows, over the limit of 2 (ALLIANCE_MAX_ROWS)")


def test_xlsx_formula_total_is_rejected_in_the_pipeline_and_nothing_loads(home: Settings) -> None:
    data = workbook(
        [["K1", "t1", "2026-01-05", 1], ["K2", "t1", "2026-01-05", 1]],
        formulas={(1, 4): ("=30", None), (2, 4): ("=31", None)},
    )
    result = ingest_file(put(home, "harbor", "formulas.xlsx", data), home)
    rejected(result, "column 'Total' holds formulas whose results were never calculated (cell E2, and 1 more)")
    assert query(home, "SELECT count(*) FROM ratings") == [(0,)]
    calculated = as_calculated(workbook([["K1", "t1", "2026-01-05", 1]], formulas={(1, 4): ("=30", 30)}))
    loaded = ingest_file(put(home, "harbor", "calculated.xlsx", calculated), home)
    assert (loaded.status, loaded.rows_new) == ("loaded", 1)
    assert query(home, "SELECT total FROM ratings") == [(30.0,)]


def test_therapist_of_another_clinic_is_quarantined(home: Settings) -> None:
    south = ingest_file(put(home, "south", "s.csv", csv_text(GOOD.format(n=1).replace(",t1,", ",t-shared,"))), home)
    assert south.rows_new == 1
    north_rows = [
        GOOD.format(n=1).replace(",t1,", ",t-shared,"),  # line 2: known only at south
        GOOD.format(n=2),  # line 3: new everywhere
        GOOD.format(n=3),
    ]
    north = ingest_file(put(home, "north", "n.csv", csv_text(*north_rows)), home)
    assert (north.status, north.rows_new, north.rows_quarantined) == ("loaded", 2, 1)
    rows = query(home, f"SELECT source_line, rules, reasons FROM quarantine WHERE export_id = '{north.export_id}'")
    assert [(line, rules) for line, rules, _ in rows] == [(2, ["foreign_therapist:therapist_id"])]
    assert rows[0][2] == [
        "line 2, column 'Clinician' (therapist_id): is a therapist id of clinic 'south', never seen at this clinic"
    ]
    assert query(home, "SELECT DISTINCT clinic_id FROM ratings WHERE therapist_id = 't-shared'") == [("south",)]
    # t1 now belongs to north: the same id in south's inbox is refused there, and north keeps taking it
    again = ingest_file(put(home, "south", "s2.csv", csv_text(GOOD.format(n=5))), home)
    assert (again.rows_new, again.rows_quarantined) == (0, 1) and again.status == "quarantined"
    more = ingest_file(put(home, "north", "n2.csv", csv_text(GOOD.format(n=6))), home)
    assert (more.rows_new, more.rows_quarantined) == (1, 0)
    ledger_consistent(home)


def test_paths_dot_dot_absolute_and_links_out_of_the_inbox(home: Settings, tmp_path: Path) -> None:
    inbox = home.inbox
    outside = tmp_path / "secret.csv"
    outside.write_text(csv_text(GOOD.format(n=1)))
    link = inbox / "north" / "link.csv"
    link.symlink_to(outside)
    (inbox / "north" / "cross.csv").symlink_to(put(home, "south", "theirs.csv", csv_text(GOOD.format(n=9))))
    dotted = inbox / "north" / ".." / ".." / ".." / "secret.csv"
    odd_name = put(home, "north", "a..b.csv", csv_text(GOOD.format(n=2)))
    put(home, "north", "half.csv.part", "Client")
    # the watcher's definition: links out of the folder, dot-dot paths and temporary names are not candidates
    assert not is_candidate(link, inbox)
    assert not is_candidate(dotted, inbox)
    assert not is_candidate(inbox / "north" / "half.csv.part", inbox)
    assert is_candidate(odd_name, inbox)
    assert {p.name for p in inbox_files(home)} == {"a..b.csv", "theirs.csv", "cross.csv"}
    # one clinic's sweep lists its own folder only, by the same definition
    assert {p.name for p in inbox_files(home, "north")} == {"a..b.csv", "cross.csv"}
    assert {p.name for p in inbox_files(home, "south")} == {"theirs.csv"}
    # ingest_file refuses a link in the inbox resolving outside it (or into another clinic), even with --clinic
    for path, clinic in ((link, None), (link, "north"), (inbox / "north" / "cross.csv", None)):
        with pytest.raises(ConfigError, match="a link in the inbox to a file outside its clinic's folder; refused"):
            ingest_file(path, home, clinic_id=clinic)
    assert link.is_symlink() and outside.exists()
    # a dot-dot path leaving the inbox is a file from elsewhere: it needs --clinic and is copied, never moved
    with pytest.raises(ConfigError, match="not in an inbox/<clinic_id>/ folder; pass --clinic"):
        ingest_file(dotted, home)
    assert ingest_file(dotted, home, clinic_id="north").status == "loaded"
    assert outside.exists()
    # an absolute path inside the inbox is an ordinary inbox file
    result = ingest_file(odd_name.resolve(), home)
    assert (result.status, result.clinic_id) == ("loaded", "north") and not odd_name.exists()
    assert query(home, "SELECT count(*) FROM exports") == [(2,)]


def test_hostile_files_in_one_sweep_lose_nothing_from_the_good_ones(home: Settings) -> None:
    good = put(home, "north", "0-good.csv", csv_text(*(GOOD.format(n=n) for n in range(1, 6))))
    hostile = {
        "north": {
            "1-png.csv": PNG,
            "2-empty.csv": b"",
            "3-nul.csv": (HEADER + "\n" + GOOD.format(n=7) + "\x00\n").encode(),
            "4-cut.csv": (HEADER + "\n" + GOOD.format(n=8)).encode(),
            "5-book.xlsm": workbook(ROWS),
        },
        "harbor": {"6-bomb.xlsx": rezip(workbook(ROWS), lambda _n, p: p, {"z.bin": b"\x00" * 5_000_000})},
    }
    for clinic, files in hostile.items():
        for name, data in files.items():
            put(home, clinic, name, data)
    results = [ingest_file(good, home)]
    results += [ingest_file(path, home) for path in sorted(inbox_files(home), key=lambda p: p.name)]
    assert [r.status for r in results] == ["loaded"] + ["rejected"] * 6
    for result in results[1:]:
        assert result.error and result.error.startswith(f"{result.file_name}: ")
    assert query(home, "SELECT count(*) FROM ratings") == [(5,)]
    assert query(home, "SELECT count(*), count(DISTINCT file_name) FROM exports WHERE status = 'rejected'") == [(6, 6)]
    assert inbox_files(home) == []
    ledger_consistent(home)


def test_header_only_and_all_unrated_files_are_accounted_for_not_a_crash(home: Settings) -> None:
    header_only = ingest_file(put(home, "north", "none.csv", HEADER + "\n"), home)
    assert (header_only.status, header_only.rows_total) == ("loaded", 0)
    unrated = ingest_file(put(home, "north", "unrated.csv", csv_text("C-1,t1,01/05/2026,1,,,,,20,x")), home)
    assert (unrated.status, unrated.rows_total, unrated.rows_quarantined) == ("quarantined", 1, 1)
    assert unrated.top_reasons == [("no_rating", 1)]
    ledger_consistent(home)


@pytest.mark.parametrize("document", ["{}", "[{}]", '[{"source_line": "99"}]'])
def test_json_records_without_fields_are_rows_not_a_crash(tmp_path: Path, document: str) -> None:
    path = tmp_path / "e.json"
    path.write_text(document)
    frame = read_export(path, profile(format="json"))
    assert frame.columns == ["source_line"] and frame["source_line"].to_list() == [1]


# ------------------------------------------------------------------------------------------------ pure parts


def test_strict_numbers_on_a_total_only_export() -> None:
    from expectations import validate_ratings
    from transforms.mapping import rating_candidates, resolve_columns, to_canonical
    from transforms.quarantine import screen

    srs = profile().instrument_specs[0]
    totals = ["30", "+30", "30.", " 30 ", "nan", "NaN", "inf", "-inf", "Infinity", "1e3", "3e1", "0x1E", "-1", "41"]
    raw = pl.DataFrame(
        {
            "Client": [f"K{i}" for i in range(len(totals))],
            "Therapist": "t1",
            "Date": "2026-01-05",
            "No": "1",
            "Total": totals,
        }
    ).with_columns(pl.int_range(2, len(totals) + 2).alias("source_line"))
    canonical = to_canonical(raw, resolve_columns(raw.columns, COLUMNS, "t.csv"))
    candidates = rating_candidates(canonical, profile(), srs, date(2026, 6, 1), "UTC")
    candidates = candidates.with_row_index("row_id").with_columns(
        pl.col("row_id").cast(pl.Int64), pl.col("client_ref").alias("client_id")
    )
    screened = screen(candidates, validate_ratings(candidates, srs), srs, {"srs_total": "Total"}, "e", "c")
    rules = dict(zip(screened.quarantined["source_line"], screened.quarantined["rules"], strict=True))
    verdict = [sorted(rules.get(line, [])) for line in candidates["source_line"]]
    assert verdict[:4] == [[], [], [], []]
    for rules_of_row in verdict[4:12]:  # nan, NaN, inf, -inf, Infinity, 1e3, 3e1, 0x1E
        assert "not_a_number:total" in rules_of_row
    assert verdict[12:] == [["out_of_range:total"], ["out_of_range:total"]]
    assert screened.accepted["total"].to_list() == [30.0] * 4


def test_a_batch_reads_known_therapists_once_and_sees_each_files_new_ones(
    home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a batch's lease the known therapists are read once per session, not scanned from all ratings for
    every file: a load adds the therapists it brings; a load rolled back leaves none of its own known."""
    reads: list[str] = []
    frame = Session.frame

    def counted(self: Session, sql: str, params: object = None) -> pl.DataFrame:
        if "DISTINCT clinic_id, therapist_id" in sql:
            reads.append(sql)
        return frame(self, sql, params)  # type: ignore[arg-type]

    monkeypatch.setattr(Session, "frame", counted)
    monkeypatch.setenv("ALLIANCE_FAULT_AT", "load:broken")
    shared = GOOD.format(n=1).replace(",t1,", ",t-shared,")
    ghost = GOOD.format(n=5).replace(",t1,", ",t-ghost,")
    with writer_lease(home.warehouse, lease_s=600):
        south = ingest_file(put(home, "south", "s.csv", csv_text(shared)), home)
        north = ingest_file(put(home, "north", "n.csv", csv_text(shared, GOOD.format(n=2))), home)
        again = [ingest_file(put(home, "north", f"n{n}.csv", csv_text(GOOD.format(n=n))), home) for n in (3, 4)]
        broken = ingest_file(put(home, "north", "broken.csv", csv_text(ghost)), home)
        after = ingest_file(put(home, "south", "s2.csv", csv_text(ghost)), home)
    assert south.rows_new == 1
    assert (north.rows_new, north.rows_quarantined) == (1, 1)  # t-shared came with south's file, in this session
    assert [r.rows_new for r in again] == [1, 1]
    assert broken.status == "rejected"
    assert (after.rows_new, after.rows_quarantined) == (1, 0)  # t-ghost's load was rolled back: nobody's yet
    assert len(reads) == 2  # the first file's, and the first after the rollback


def test_a_batch_keeps_rating_counts_in_step_with_its_loads_and_forgets_a_rolled_back_one(
    home: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ratings per instrument a batch keeps (read once, then added to by each load) equal the table's, also
    after a file whose load was rolled back: its rows were counted before the rollback undid them."""
    monkeypatch.setenv("ALLIANCE_FAULT_AT", "load:broken")
    with writer_lease(home.warehouse, lease_s=600):
        first = ingest_file(put(home, "north", "n1.csv", csv_text(GOOD.format(n=1), GOOD.format(n=2))), home)
        broken = ingest_file(put(home, "north", "broken.csv", csv_text(GOOD.format(n=3))), home)
        last = ingest_file(put(home, "north", "n4.csv", csv_text(GOOD.format(n=4))), home)
        with Warehouse.of(home).writer() as writer:
            kept = writer.rating_counts()
            table = dict(writer.con.execute("SELECT instrument, count(*) FROM ratings GROUP BY 1").fetchall())
    assert (first.rows_new, broken.status, last.rows_new) == (2, "rejected", 1)
    assert kept == table and sum(table.values()) == 3


def test_foreign_therapists_is_a_pure_function() -> None:
    from transforms.quarantine import foreign_therapists

    candidates = pl.DataFrame(
        {"row_id": [0, 1, 2, 3, 4], "therapist_id": ["t-b", "t-both", "t-new", None, "t-bc"]},
        schema={"row_id": pl.Int64, "therapist_id": pl.String},
    )
    known = pl.DataFrame(
        {
            "clinic_id": ["b", "a", "b", "b", "c"],
            "therapist_id": ["t-b", "t-both", "t-both", "t-bc", "t-bc"],
        }
    )
    failures = foreign_therapists(candidates, known, "a")
    assert failures.to_dicts() == [
        {
            "row_id": 0,
            "rule": "foreign_therapist:therapist_id",
            "detail": "is a therapist id of clinic 'b', never seen at this clinic",
        },
        {
            "row_id": 4,
            "rule": "foreign_therapist:therapist_id",
            "detail": "is a therapist id of clinic 'b', 'c', never seen at this clinic",
        },
    ]
    assert foreign_therapists(candidates, known.clear(), "a").is_empty()
    assert foreign_therapists(candidates.clear(), known, "a").is_empty()


THERAPISTS = st.sampled_from(["t1", "t2", "t3", "t4", None])
CLINICS = st.sampled_from(["a", "b", "c"])


@settings(max_examples=200, deadline=None)
@given(
    therapists=st.lists(THERAPISTS, max_size=8),
    known=st.lists(st.tuples(CLINICS, THERAPISTS.filter(bool)), max_size=8, unique=True),
)
def test_foreign_therapists_finds_what_a_row_by_row_reading_of_the_rule_finds(
    therapists: list[str | None], known: list[tuple[str, str]]
) -> None:
    """The rule read row by row (the oracle) against the frame version, whose shortcut for a file of therapists
    all known at its clinic must not hide one known only elsewhere, and against the index of known therapists."""
    from transforms.quarantine import KnownTherapists, foreign_therapists

    candidates = pl.DataFrame(
        {"row_id": list(range(len(therapists))), "therapist_id": therapists},
        schema={"row_id": pl.Int64, "therapist_id": pl.String},
    )
    pairs = pl.DataFrame(known, schema={"clinic_id": pl.String, "therapist_id": pl.String}, orient="row")
    expected = []
    for row_id, therapist in enumerate(therapists):
        owners = sorted({c for c, t in known if t == therapist and c != "a"})
        if therapist is not None and owners and ("a", therapist) not in known:
            clinics = ", ".join(f"'{c}'" for c in owners)
            expected.append((row_id, f"is a therapist id of clinic {clinics}, never seen at this clinic"))
    found = foreign_therapists(candidates, pairs, "a")
    assert [(r["row_id"], r["detail"]) for r in found.to_dicts()] == expected
    # the index a sweep asks instead, built from some pairs and told the rest as files wait in a batch
    index = KnownTherapists(pairs.head(len(known) // 2))
    index.add(pairs.tail(len(known) - len(known) // 2))
    assert index.any_foreign("a", candidates) == bool(expected)


def test_sheet_scan_fast_path_agrees_with_the_cell_by_cell_path() -> None:
    from alliance.readers.workbook import SheetScan

    rows = [[f"K{i}", "t1", "2026-01-05", i, 30] for i in range(1, 300)]
    with zipfile.ZipFile(io.BytesIO(workbook(rows, header=[*COLUMNS, "A", "B"]))) as archive:
        sheet = archive.read("xl/worksheets/sheet1.xml")
    sheet = sheet.replace(b"</sheetData>", b'<row r="400"><c r="AB400"><v>1</v></c></row></sheetData>')
    fast, slow = SheetScan(), SheetScan()
    for start in range(0, len(sheet), 997):  # chunks cut anywhere, rows included
        fast.feed(sheet[start : start + 997])
    fast.close()
    slow._tokens(sheet)
    assert (fast.max_row, fast.max_col) == (slow.max_row, slow.max_col) == (400, 28)


SHEET_FRAGMENTS = [b"<f", b":f", b":c", b":ro", b"w", b">", b" ", b"/", b"\t", b"<c", b"x", b":"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(SHEET_FRAGMENTS), max_size=12))
def test_the_sheet_scans_slow_path_is_chosen_as_by_its_ten_tags(parts: list[bytes]) -> None:
    """The patterns that send a segment cell by cell match exactly where one of the ten tags occurs."""
    from alliance.readers.workbook import _SLOW_PATH_TAGS

    data = b"".join(parts)
    tags = (b"<f>", b"<f ", b"<f/", b":f>", b":f ", b":f/", b":c ", b":c>", b":c/", b":row")
    assert any(pattern.search(data) for pattern in _SLOW_PATH_TAGS) == any(tag in data for tag in tags)


def test_headers_that_look_like_polars_patterns_are_plain_names(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("Client,*,^.*$,Therapist,Date,No,Total\nK1,,,t1,2026-01-05,1,30\n,,,,,,\n,x,,,,,\n")
    frame = read_export(path, profile())
    assert frame.columns == ["Client", "*", "^.*$", "Therapist", "Date", "No", "Total", "source_line"]
    assert frame["source_line"].to_list() == [2, 4]  # the blank line 3 dropped, line 4 kept for its '*' value


@pytest.mark.parametrize(
    "far_cell",
    [
        b"<c r='XFD1048576'><v>1</v></c>",  # single quotes
        b'<c x=">" r="XFD1048576"><v>1</v></c>',  # a '>' inside an attribute value
        b'<c r = "XFD1048576"><v>1</v></c>',  # spaces around '='
        b'<x:c r="XFD1048576"><x:v>1</x:v></x:c>',  # a namespace prefix
    ],
    ids=["single-quotes", "gt-in-attribute", "spaced-equals", "prefixed"],
)
def test_far_cells_written_unusually_are_still_found(tmp_path: Path, far_cell: bytes) -> None:
    row = b'<row r="1048576">' + far_cell + b"</row></sheetData>"
    data = rezip(workbook(ROWS), lambda n, p: p.replace(b"</sheetData>", row) if n.endswith("sheet1.xml") else p)
    assert "the sheet's cells reach XFD1048576" in xlsx_rejection(tmp_path, data)


@pytest.mark.parametrize("reference", [b"&#88;FD1048576", b"xfd1048576", b"A01", b"XFDA1"])
def test_cell_positions_that_cannot_be_checked_are_refused(tmp_path: Path, reference: bytes) -> None:
    row = b'<row r="3"><c r="' + reference + b'"><v>1</v></c></row></sheetData>'
    data = rezip(workbook(ROWS), lambda n, p: p.replace(b"</sheetData>", row) if n.endswith("sheet1.xml") else p)
    assert "a cell position written as" in xlsx_rejection(tmp_path, data)
