"""Property-based fuzzing of the reader, the mapping and validation, and the whole pipeline.

Invariants: any bytes either read into a frame or raise ExportRejected; any frame of strings splits into
accepted + quarantined == candidates with accepted scores inside the instrument's range; every ingest
accounts for every row (rows_total == new + updated + unchanged + quarantined).
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import math
import zipfile
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import polars as pl
import pytest
import xlsxwriter
from hypothesis import HealthCheck, Phase, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from alliance.clinics import ExportProfile, normalise_column
from alliance.errors import ExportRejected
from alliance.home import init_home
from alliance.instruments import instrument
from alliance.readers import FOOTER_ROW, HIDDEN_ROW, SOURCE_LINE, ReadLimits, read_export
from alliance.settings import Settings, load_settings
from expectations import validate_ratings
from flows.pipeline import ingest_file
from tests.conftest import TEST_KEY, add_clinic
from transforms.mapping import rating_candidates, resolve_columns, to_canonical, unrated_rows
from transforms.quarantine import foreign_therapists, screen

SRS = instrument("SRS")
COLUMNS = {
    "Client": "client_ref",
    "Therapist": "therapist_id",
    "Date": "session_date",
    "No": "session_number",
    "Rel": "srs_relationship",
    "Goals": "srs_goals",
    "Approach": "srs_approach",
    "Overall": "srs_overall",
    "Total": "srs_total",
}
PROFILES = {
    "csv": ExportProfile(instruments=["SRS"], columns=COLUMNS, date_format="%d.%m.%Y"),
    "csv-eu": ExportProfile(
        instruments=["SRS"], columns=COLUMNS, date_format="%d.%m.%Y", decimal_comma=True, delimiter=";"
    ),
    "json": ExportProfile(format="json", instruments=["SRS"], columns=COLUMNS),
    "json-nested": ExportProfile(format="json", instruments=["SRS"], columns=COLUMNS, records="clients.sessions"),
    "ndjson": ExportProfile(format="ndjson", instruments=["SRS"], columns=COLUMNS),
    "xlsx": ExportProfile(format="xlsx", instruments=["SRS"], columns=COLUMNS),
}
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


_names = itertools.count()


def read_bytes(
    folder: Path, data: bytes, suffix: str, profile: ExportProfile, final_newline: bool = True
) -> pl.DataFrame | None:
    """read_export on the bytes: a frame of strings with source lines, or None for an ExportRejected."""
    path = folder / f"f{next(_names)}{suffix}"
    path.write_bytes(data)
    limits = ReadLimits(max_xlsx_cells=2_000_000, require_final_newline=final_newline)
    try:
        frame = read_export(path, profile, max_bytes=10_000_000, limits=limits)
    except ExportRejected as rejection:
        assert rejection.problem and str(rejection).startswith(f"{path.name}: ")
        if currently_in_test_context():
            event(f"rejected: {' '.join(rejection.problem.split()[:4])}")
        return None
    finally:
        path.unlink()
    assert frame.schema.get(SOURCE_LINE) == pl.Int64
    marks = (SOURCE_LINE, HIDDEN_ROW, FOOTER_ROW)
    assert all(dtype == pl.String for name, dtype in frame.schema.items() if name not in marks)
    assert frame.schema.get(HIDDEN_ROW, pl.Boolean) == pl.Boolean
    assert frame.schema.get(FOOTER_ROW, pl.Boolean) == pl.Boolean
    assert frame[SOURCE_LINE].null_count() == 0
    if currently_in_test_context():
        event("read")
    return frame


# ------------------------------------------------------------------------------------------------ any bytes


TOKENS = [
    *',,,;;\t|""\n\n\r x1.9-Kt/:é€{}[]',
    "\x00",
    "Client",
    "Total",
    "nan",
    "05.01.2026",
    "Client;Total\n",
    "*",
    "^.*$",
]
TEXTY = st.lists(st.sampled_from(TOKENS), max_size=150).map("".join)
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "cp1252", "latin-1"]


@st.composite
def encoded_text(draw: st.DrawFn) -> bytes:
    """Text of CSV-ish tokens, usually starting with the profile's header, in some encoding."""
    header = draw(st.sampled_from(["", ",".join(COLUMNS) + "\n", ";".join(COLUMNS) + "\n"]))
    text = header + draw(TEXTY) + draw(st.sampled_from(["", "\n", "\r\n"]))
    encoding = draw(st.sampled_from(ENCODINGS))
    return text.encode(encoding, errors="replace")


ANY_BYTES = st.one_of(st.binary(max_size=2000), encoded_text())


@FUZZ
@given(data=ANY_BYTES, which=st.sampled_from(["csv", "csv-eu"]), final_newline=st.booleans())
def test_any_bytes_as_csv_read_or_reject(folder: Path, data: bytes, which: str, final_newline: bool) -> None:
    read_bytes(folder, data, ".csv", PROFILES[which], final_newline)


@st.composite
def json_documents(draw: st.DrawFn) -> bytes:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8))
    value = st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.sampled_from(["clients", "sessions", "Total", "a.b", "a"]), inner, max_size=4),
        ),
        max_leaves=25,
    )
    text = json.dumps(draw(value))
    if draw(st.booleans()):  # cut or poke it
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=3)) + text[cut:]
    return text.encode("utf-8", errors="surrogatepass")


@FUZZ
@given(data=st.one_of(ANY_BYTES, json_documents()), which=st.sampled_from(["json", "json-nested"]))
def test_any_bytes_as_json_read_or_reject(folder: Path, data: bytes, which: str) -> None:
    read_bytes(folder, data, ".json", PROFILES[which])


@FUZZ
@given(lines=st.lists(st.one_of(json_documents(), st.binary(max_size=40)), max_size=5))
def test_any_bytes_as_ndjson_read_or_reject(folder: Path, lines: list[bytes]) -> None:
    read_bytes(folder, b"\n".join(lines), ".ndjson", PROFILES["ndjson"])


def _workbook() -> bytes:
    buffer = io.BytesIO()
    book = xlsxwriter.Workbook(buffer, {"in_memory": True})
    sheet = book.add_worksheet("Sessions")
    sheet.write_row(0, 0, [*COLUMNS, "Note"])
    date_format = book.add_format({"num_format": "yyyy-mm-dd"})
    for r in range(1, 6):
        sheet.write_row(r, 0, [f"K{r}", "t1"])
        sheet.write_datetime(r, 2, datetime(2026, 1, r), date_format)
        sheet.write_row(r, 3, [r, 9.5, 9, 9.1, 9.2, 36.8, "note"])
    book.close()
    return buffer.getvalue()


WORKBOOK = _workbook()
with zipfile.ZipFile(io.BytesIO(WORKBOOK)) as _archive:
    PARTS = {name: _archive.read(name) for name in _archive.namelist()}


def _zip(parts: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, payload in parts.items():
            archive.writestr(name, payload)
    return out.getvalue()


@st.composite
def mutated_workbooks(draw: st.DrawFn) -> bytes:
    """A valid workbook truncated, with bytes flipped, or with one of its XML parts mangled and re-zipped."""
    how = draw(st.sampled_from(["truncate", "flip", "xml", "xml-splice"]))
    if how == "truncate":
        return WORKBOOK[: draw(st.integers(0, len(WORKBOOK)))]
    if how == "flip":
        data = bytearray(WORKBOOK)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    name = draw(st.sampled_from(sorted(PARTS)))
    part = bytearray(PARTS[name])
    if how == "xml":
        for _ in range(draw(st.integers(1, 6))):
            part[draw(st.integers(0, len(part) - 1))] = draw(st.sampled_from(b'<>/"= 0123456789AZr'))
    else:
        at = draw(st.integers(0, len(part)))
        junk = draw(
            st.sampled_from(
                [
                    b'<c r="B3"><f>A1</f></c>',
                    b'<c r="ZZ9"><v>1</v></c>',
                    b'<row r="0">',
                    b"</row>",
                    b"<c/>",
                    b'<c r="A1" t="s"><v>999</v></c>',
                    b'<c r="A2" t="e"><v>#N/A</v></c>',
                    b"&amp;",
                    b"<!--",
                ]
            )
        )
        part[at:at] = junk
    return _zip({**PARTS, name: bytes(part)})


@FUZZ
@given(data=st.one_of(st.binary(max_size=500), mutated_workbooks()))
def test_any_bytes_as_xlsx_read_or_reject(folder: Path, data: bytes) -> None:
    read_bytes(folder, data, ".xlsx", PROFILES["xlsx"])


CELL_STYLES = ["plain", "single-quoted", "no-ref", "spaced", "gt-attr", "formula", "formula-no-value", "inline"]


@st.composite
def sheets(draw: st.DrawFn) -> bytes:
    """Sheet XML with cells placed by reference (in varied spellings) or by position, rows in any order."""
    cells = draw(st.lists(st.tuples(st.integers(1, 60), st.integers(1, 30), st.sampled_from(CELL_STYLES)), max_size=30))
    rows: dict[int, list[bytes]] = {}
    for row, col, style in cells:
        ref = f"{_letters(col)}{row}".encode()
        tag = {
            "plain": b'<c r="%s"><v>1</v></c>',
            "single-quoted": b"<c r='%s'><v>2</v></c>",
            "no-ref": b"<c><v>3</v></c>",
            "spaced": b'<c  r = "%s" ><v>4</v></c>',
            "gt-attr": b'<c s="1" x=">" r="%s"><v>5</v></c>',
            "formula": b'<c r="%s"><f>1+1</f><v>2</v></c>',
            "formula-no-value": b'<c r="%s"><f>1+1</f></c>',
            "inline": b'<c r="%s" t="inlineStr"><is><t>x&gt;y</t></is></c>',
        }[style]
        rows.setdefault(row, []).append(tag.replace(b"%s", ref))
    order = draw(st.permutations(sorted(rows)))
    body = b"".join(
        (b'<row r="%d">' % row if draw(st.booleans()) else b"<row>") + b"".join(rows[row]) + b"</row>" for row in order
    )
    return (
        b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>'
        + body
        + b"</sheetData></worksheet>"
    )


def _letters(col: int) -> str:
    out = ""
    while col:
        col, rest = divmod(col - 1, 26)
        out = chr(65 + rest) + out
    return out


@FUZZ
@given(sheet=sheets())
def test_the_sheet_scan_never_underestimates_what_calamine_allocates(sheet: bytes) -> None:
    import fastexcel

    from alliance.readers.workbook import inspect_xlsx

    data = _zip({**PARTS, "xl/worksheets/sheet1.xml": sheet})
    try:
        scan = inspect_xlsx(data, PROFILES["xlsx"], "s.xlsx", ReadLimits()).scan
    except ExportRejected as rejection:
        event(f"rejected: {rejection.problem[:40]}")
        return
    try:
        loaded = fastexcel.read_excel(data).load_sheet(0, header_row=None, dtypes="string")
        columns = loaded.available_columns()
    except Exception:
        event("calamine refused it")
        return
    event("read")
    assert loaded.height <= scan.max_row
    assert all(column.absolute_index + 1 <= scan.max_col for column in columns)


def test_the_unmutated_workbook_reads(folder: Path) -> None:
    frame = read_bytes(folder, WORKBOOK, ".xlsx", PROFILES["xlsx"])
    assert frame is not None and frame["Date"].to_list()[0].startswith("2026-01-01")


# ------------------------------------------------------------------------------------------------ frames

NUMBERS = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "Infinity",
            "1e3",
            "1e0",
            "-1",
            "-0",
            "0",
            "10",
            "10.0",
            "10.5",
            "9,5",
            "+9",
            ".5",
            "9.",
            "abc",
            "n/a",
            "١",
            "\u00a0",
            "0x10",
            "1_0",
            "36",
            "40",
            "40.4",
            "41",
            "1" * 400,
        ]
    ),
    st.decimals(min_value=-2, max_value=42, places=1).map(str),
    st.text(max_size=5),
)
DATES = st.one_of(
    st.sampled_from(
        [
            "",
            "05.01.2026",
            "2026-01-05",
            "31.02.2026",
            "2026-02-30",
            "2026-03-29 02:30",
            "2026-10-25 02:30",
            "2026-10-25T02:30:00+01:00",
            "2026-03-28T23:30:00Z",
            "2099-01-01",
            "01.01.0001",
            "9999-12-31T23:59:59-23:59",
            "yesterday",
            "2026-13-01",
        ]
    ),
    st.tuples(st.dates(min_value=date(1, 1, 1)), st.sampled_from(["%d.%m.%Y", "%Y-%m-%d", "%m/%d/%Y"])).map(
        lambda pair: pair[0].strftime(pair[1])
    ),
    st.text(max_size=12),
)
SESSIONS = st.one_of(st.sampled_from(["1", "2", "3", "0", "-1", "1.5", "1e0", "10001", "x", ""]), st.text(max_size=3))
THERAPISTS = st.sampled_from(["t1", "t2", "t-south", "", " ", "T1"])
CLIENTS = st.sampled_from(["K1", "K2", "K3", "", "  "])
FIELDS = {
    "client_ref": CLIENTS,
    "therapist_id": THERAPISTS,
    "session_date": DATES,
    "session_number": SESSIONS,
}


def _variant(name: str, how: int) -> str:
    """The same column as vendors re-case and re-space it."""
    return [name, name.upper(), f"  {name.lower()} ", f"{name}\t"][how % 4]


FIELD_OF = {normalise_column(vendor): field for vendor, field in COLUMNS.items()}


@st.composite
def raw_frames(draw: st.DrawFn) -> pl.DataFrame:
    """A vendor frame: mapped columns under re-cased names (sometimes one twice), extra columns, any strings."""
    names = [_variant(vendor, draw(st.integers(0, 3))) for vendor in COLUMNS]
    names += draw(st.lists(st.sampled_from(["Notes", "Name", ""]), max_size=2, unique=True))
    if draw(st.integers(0, 9)) == 0:
        names.append(_variant("Goals", 1) + " ")  # a second 'Goals': ambiguous
    if draw(st.integers(0, 9)) == 0:
        names.remove(draw(st.sampled_from(names)))  # a missing column
    height = draw(st.integers(0, 25))
    columns: dict[str, list[str | None]] = {}
    for name in names:
        values = FIELDS.get(FIELD_OF.get(normalise_column(name), ""), NUMBERS)
        columns[name] = draw(st.lists(st.one_of(st.none(), values), min_size=height, max_size=height))
    frame = pl.DataFrame(columns, schema=dict.fromkeys(columns, pl.String))
    return frame.with_columns(pl.int_range(2, height + 2, dtype=pl.Int64).alias(SOURCE_LINE))


KNOWN = pl.DataFrame({"clinic_id": ["south", "north", "south"], "therapist_id": ["t-south", "t2", "t2"]})


def check_screening(raw: pl.DataFrame, profile: ExportProfile, timezone: str) -> None:
    """The accounting invariant and the range of accepted scores, on one frame."""
    try:
        resolved = resolve_columns(raw.columns, profile.columns, "f.csv")
    except ExportRejected:
        return
    canonical = to_canonical(raw, resolved)
    today = datetime.now(ZoneInfo(timezone)).date()
    candidates = rating_candidates(canonical, profile, SRS, today, timezone)
    unrated = unrated_rows(canonical, profile)
    assert candidates.height + unrated.height == canonical.height
    if candidates.is_empty():
        return
    candidates = candidates.with_row_index("row_id").with_columns(
        pl.col("row_id").cast(pl.Int64), pl.col("client_ref").alias("client_id")
    )
    for column in (*SRS.item_fields, "total"):
        values = [v for v in candidates[column].to_list() if v is not None]
        assert all(math.isfinite(v) for v in values), column  # no nan or infinity ever parses as a number
    failures = pl.concat(
        [validate_ratings(candidates, SRS), foreign_therapists(candidates, KNOWN, "north")], how="diagonal_relaxed"
    )
    screened = screen(candidates, failures, SRS, {v: k for k, v in resolved.items()}, "e", "north")
    accepted, quarantined = screened.accepted, screened.quarantined
    assert accepted.height + quarantined.height == candidates.height
    assert sorted([*accepted["source_line"], *quarantined["source_line"]]) == sorted(candidates["source_line"])
    assert all(len(rules) == len(reasons) > 0 for rules, reasons in quarantined.select("rules", "reasons").rows())
    for row in accepted.iter_rows(named=True):
        assert SRS.total_min <= row["total"] <= SRS.total_max
        assert all(SRS.item_min <= row[item] <= SRS.item_max for item in SRS.item_fields)
        assert abs(row["total"] - sum(row[item] for item in SRS.item_fields)) <= 0.5 + 1e-9
        assert 1 <= row["session_number"] <= 10_000
        assert row["session_date"] is not None and row["session_date"] <= today
        assert row["client_ref"] and row["therapist_id"] and row["therapist_id"] != "t-south"
    keys = accepted.select("client_ref", "therapist_id", "session_date", "session_number")
    assert keys.height == keys.unique().height  # a repeated key never loads one copy


GX_EXAMPLES = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@GX_EXAMPLES
@given(raw=raw_frames(), which=st.sampled_from(["csv", "csv-eu"]), tz=st.sampled_from(["UTC", "Europe/Berlin"]))
def test_any_frame_of_strings_is_accounted_for(raw: pl.DataFrame, which: str, tz: str) -> None:
    check_screening(raw, PROFILES[which], tz)


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=raw_frames(), which=st.sampled_from(["csv", "csv-eu"]), tz=st.sampled_from(["UTC", "Pacific/Kiritimati"]))
def test_any_frame_of_strings_is_accounted_for_at_length(raw: pl.DataFrame, which: str, tz: str) -> None:
    check_screening(raw, PROFILES[which], tz)


@FUZZ
@given(raw=raw_frames(), which=st.sampled_from(["csv", "csv-eu"]))
def test_parsing_any_frame_never_raises_and_never_yields_nan(raw: pl.DataFrame, which: str) -> None:
    """The pure-Polars half of the above at full count: resolve, canonicalise, type."""
    try:
        resolved = resolve_columns(raw.columns, PROFILES[which].columns, "f.csv")
    except ExportRejected:
        return
    candidates = rating_candidates(to_canonical(raw, resolved), PROFILES[which], SRS, date(2026, 6, 1), "Asia/Tokyo")
    for column in (*SRS.item_fields, "total", "total_gap"):
        if column in candidates.columns:
            assert candidates[column].is_nan().sum() == 0 and candidates[column].is_infinite().sum() == 0
    if candidates.height:
        parsed = candidates.filter(pl.col("parse_errors").list.len() == 0)
        assert parsed["session_number"].null_count() == parsed["session_number__raw"].null_count()


# ------------------------------------------------------------------------------------------------ pipeline

PIPELINE_CLINIC = """
[clinics.north]
name = "North"
timezone = "America/Chicago"

[clinics.north.export]
date_format = "%m/%d/%Y"
delimiter = ","
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
PIPELINE_HEADER = [
    "Client ID",
    "Clinician",
    "Session Date",
    "Session #",
    "SRS Relationship",
    "SRS Goals",
    "SRS Approach",
    "SRS Overall",
    "Notes",
]
ITEM = st.one_of(st.sampled_from(["9.5", "8", "10", "0", "7.25"]), NUMBERS)


@st.composite
def csv_rows(draw: st.DrawFn) -> list[list[str]]:
    def row() -> list[str]:
        valid = draw(st.booleans())
        day = draw(st.integers(1, 28))
        return [
            draw(st.sampled_from(["C-1", "C-2", "C-3"]) if valid else CLIENTS),
            draw(st.sampled_from(["t1", "t2"]) if valid else THERAPISTS),
            f"01/{day:02d}/2026" if valid else draw(st.one_of(DATES, st.just(f"01/{day:02d}/2026"))),
            draw(st.sampled_from(["1", "2", "3"]) if valid else SESSIONS),
            *(draw(st.sampled_from(["9.5", "8", "10", "7.25"]) if valid else ITEM) for _ in range(4)),
            draw(st.sampled_from(["", "ok", 'said "fine", then\nleft', "Grüße; ja"])),
        ]

    return [row() for _ in range(draw(st.integers(0, 8)))]


@pytest.fixture(scope="module")
def pipeline_home(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """One home for every example: later examples update, repeat and extend what earlier ones loaded."""
    configured = load_settings(tmp_path_factory.mktemp("pipeline") / "home")
    init_home(configured)
    configured.key_file.write_text(TEST_KEY + "\n")
    add_clinic(configured, PIPELINE_CLINIC)
    (configured.inbox / "north").mkdir()
    return configured


def check_ingest(home: Settings, rows: list[list[str]], encoding: str, terminator: str) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=terminator)
    writer.writerows([PIPELINE_HEADER, *rows])
    try:
        data = buffer.getvalue().encode(encoding)
    except UnicodeEncodeError:
        assume(False)
    if encoding == "utf-16":
        assert data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    path = home.inbox / "north" / f"export-{next(_names)}.csv"
    path.write_bytes(data)
    result = ingest_file(path, home)
    if result.status == "rejected":  # only for what the generated text itself makes unreadable
        expected = ("NUL bytes", "mixed encodings", "cannot parse as CSV at line")  # e.g. a bare CR in a field
        assert any(reason in (result.error or "") for reason in expected), result.error
    assert result.status in ("loaded", "quarantined", "duplicate", "rejected"), result.error
    assert result.rows_total == result.rows_new + result.rows_updated + result.rows_unchanged + result.rows_quarantined
    assert not path.exists()
    with duckdb.connect(str(home.warehouse), read_only=True) as con:
        ((total, accounted),) = con.execute(
            "SELECT sum(rows_total), sum(rows_new + rows_updated + rows_unchanged + rows_quarantined) FROM exports"
        ).fetchall()
        assert total == accounted
        ((dupes,),) = con.execute(
            "SELECT count(*) FROM (SELECT 1 FROM ratings GROUP BY clinic_id, client_id, therapist_id, instrument, "
            "session_date, session_number HAVING count(*) > 1)"
        ).fetchall()
        assert dupes == 0
        assert con.execute("SELECT count(*) FROM ratings WHERE NOT total BETWEEN 0 AND 40").fetchall() == [(0,)]


# No shrinking: every step is a full ingest (~1 s); a failure is reported as generated.
PIPELINE = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    "phases": [Phase.explicit, Phase.reuse, Phase.generate],
}


@settings(max_examples=12, **PIPELINE)
@given(
    rows=csv_rows(),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"]),
    terminator=st.sampled_from(["\n", "\r\n"]),
)
def test_every_row_of_every_ingest_is_accounted_for(
    pipeline_home: Settings, rows: list[list[str]], encoding: str, terminator: str
) -> None:
    check_ingest(pipeline_home, rows, encoding, terminator)


@pytest.mark.slow
@settings(max_examples=60, **PIPELINE)
@given(
    rows=csv_rows(),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"]),
    terminator=st.sampled_from(["\n", "\r\n"]),
)
def test_every_row_of_every_ingest_is_accounted_for_at_length(
    pipeline_home: Settings, rows: list[list[str]], encoding: str, terminator: str
) -> None:
    check_ingest(pipeline_home, rows, encoding, terminator)
