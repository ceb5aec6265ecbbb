"""Reading real files in real encodings and layouts."""

from __future__ import annotations

import codecs
import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest

from alliance.clinics import ExportProfile
from alliance.errors import ExportRejected
from alliance.readers import decode, json_records, read_export, sniff_delimiter

COLUMNS = {
    "Klient": "client_ref",
    "Therapeut": "therapist_id",
    "Datum": "session_date",
    "Sitzung": "session_number",
    "Summe": "srs_total",
}
TEXT = "Klient;Therapeut;Datum;Sitzung;Summe;Notiz\nK1;Müller;05.01.2026;1;37,5;Grüße\nK2;Jäger;12.01.2026;2;30,0;ok\n"


def profile(**overrides: object) -> ExportProfile:
    base: dict[str, object] = {"instruments": ["SRS"], "columns": COLUMNS, "date_format": "%d.%m.%Y"}
    return ExportProfile(**{**base, **overrides})


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("encoded", "declared"),
    [
        (TEXT.encode("utf-8"), "auto"),
        (codecs.BOM_UTF8 + TEXT.encode("utf-8"), "auto"),
        (TEXT.encode("utf-16"), "auto"),  # Python writes the BOM
        (TEXT.encode("cp1252"), "cp1252"),
        (TEXT.encode("cp1252"), "auto"),  # detected: not UTF-8, valid cp1252
        (codecs.BOM_UTF8 + TEXT.encode("utf-8"), "cp1252"),  # a BOM wins over the declaration
    ],
    ids=["utf8", "utf8-bom", "utf16-bom", "cp1252-declared", "cp1252-detected", "bom-wins"],
)
def test_every_encoding_reads_the_same_frame(tmp_path: Path, encoded: bytes, declared: str) -> None:
    frame = read_export(write(tmp_path, "e.csv", encoded), profile(encoding=declared))
    assert frame["Therapeut"].to_list() == ["Müller", "Jäger"]
    assert frame["Notiz"].to_list() == ["Grüße", "ok"]
    assert frame.columns[0] == "Klient"  # no BOM left on the first header
    assert frame["source_line"].to_list() == [2, 3]


def test_cp1252_bytes_declared_utf8_are_rejected_with_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", TEXT.encode("cp1252"))
    with pytest.raises(ExportRejected) as info:
        read_export(path, profile(encoding="utf-8"))
    assert str(info.value).startswith("bad.csv: not valid UTF-8 at line 2 (byte 0xFC)")


def test_bytes_neither_utf8_nor_cp1252_are_rejected_never_lossy() -> None:
    data = b"K1;ok\n" + b"K2;\x81\x8d\n"
    with pytest.raises(ExportRejected, match=r"unknown encoding: not UTF-8 \(line 2\) and not cp1252"):
        decode(data, "auto", "x.csv")


def test_utf16_without_bom_is_rejected() -> None:
    with pytest.raises(ExportRejected, match="NUL bytes"):
        decode(TEXT.encode("utf-16-le"), "auto", "x.csv")


@pytest.mark.parametrize(
    ("text", "delimiter"), [("a,b,c\n1,2,3\n", ","), ("a;b;c\n1,5;2;3\n", ";"), ("a\tb\n1\t2\n", "\t")]
)
def test_delimiter_is_sniffed(text: str, delimiter: str) -> None:
    assert sniff_delimiter(text) == delimiter


def test_quoted_newlines_keep_true_source_lines(tmp_path: Path) -> None:
    text = 'Klient,Therapeut,Datum,Sitzung,Summe,Notiz\nK1,t,05.01.2026,1,30,"two\nlines"\n\nK2,t,05.01.2026,2,31,x\n'
    frame = read_export(write(tmp_path, "q.csv", text.encode()), profile())
    assert frame["Klient"].to_list() == ["K1", "K2"]
    assert frame["source_line"].to_list() == [2, 5]  # the blank line 4 is dropped, not renumbered


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    with pytest.raises(ExportRejected, match=r"empty \(0 bytes\)"):
        read_export(write(tmp_path, "zero.csv", b""), profile())
    header_only = read_export(write(tmp_path, "h.csv", b"Klient;Therapeut\n"), profile())
    assert header_only.height == 0


def test_unterminated_quote_rejects_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "cut.csv", b'Klient,Therapeut\nK1,"t\n')
    with pytest.raises(ExportRejected, match="cut.csv: cannot parse as CSV"):
        read_export(path, profile())


def test_oversized_file_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "big.csv", TEXT.encode() * 10)
    with pytest.raises(ExportRejected, match="over the 0 MB limit"):
        read_export(path, profile(), max_bytes=100)


def _xlsx(tmp_path: Path) -> Path:
    path = tmp_path / "w.xlsx"
    frame = pl.DataFrame(
        {
            "Klient": ["K1", "K2", None],
            "Datum": [dt.date(2026, 1, 5), dt.date(2026, 1, 12), None],
            "Summe": [37.5, None, None],
            "Leer": [None, None, None],
        }
    )
    frame.write_excel(path, worksheet="Sessions")
    return path


def test_xlsx_sheet_reads_as_strings_with_sheet_rows(tmp_path: Path) -> None:
    frame = read_export(_xlsx(tmp_path), profile(format="xlsx", sheet="Sessions"))
    assert frame["Klient"].to_list() == ["K1", "K2"]
    assert frame["Datum"].to_list()[0].startswith("2026-01-05")
    assert "Leer" in frame.columns  # an empty column is kept, so the mapping can tell it is present
    assert frame["source_line"].to_list() == [2, 3]


def test_truncated_xlsx_is_rejected(tmp_path: Path) -> None:
    whole = _xlsx(tmp_path).read_bytes()
    path = write(tmp_path, "cut.xlsx", whole[: len(whole) // 2])
    with pytest.raises(ExportRejected) as info:
        read_export(path, profile(format="xlsx"))
    assert str(info.value).startswith("cut.xlsx: cannot read as XLSX")


def test_missing_sheet_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ExportRejected, match="sheet 'Sitzungen'"):
        read_export(_xlsx(tmp_path), profile(format="xlsx", sheet="Sitzungen"))


NESTED = {
    "export": {"clinic": "lakeview"},
    "clients": [
        {
            "client_ref": "L-1",
            "therapist": "t1",
            "name": "never loaded",
            "sessions": [
                {"date": "2026-01-05", "number": 1, "srs": {"goals": 9.5, "total": 38}, "note": None},
                {"date": "2026-01-12", "number": 2, "srs": {"goals": 9, "total": 37.5}},
            ],
        },
        {"client_ref": "L-2", "therapist": "t2", "sessions": []},
    ],
}


def test_nested_json_flattens_with_parents_carried_down() -> None:
    rows = json_records(NESTED, "clients.sessions")
    assert len(rows) == 2
    assert rows[0]["clients.client_ref"] == "L-1"
    assert rows[1]["clients.sessions.srs.total"] == "37.5"
    assert rows[0]["clients.sessions.note"] is None


def test_json_and_ndjson_files(tmp_path: Path) -> None:
    path = write(tmp_path, "n.json", json.dumps(NESTED).encode())
    frame = read_export(path, profile(format="json", records="clients.sessions"))
    assert frame["clients.sessions.number"].to_list() == ["1", "2"]
    assert frame["source_line"].to_list() == [1, 2]
    lines = "\n".join(json.dumps(r) for r in [{"a": {"b": 1}}, {"a": {"b": 2}, "c": "x"}])
    nd = read_export(write(tmp_path, "n.ndjson", lines.encode()), profile(format="ndjson"))
    assert nd["a.b"].to_list() == ["1", "2"] and nd["c"].to_list() == [None, "x"]


@pytest.mark.parametrize(
    ("document", "records", "message"),
    [
        (b'{"clients": [', None, "not valid JSON at line 1"),
        (b'{"patients": []}', "clients.sessions", "no key 'clients'"),
    ],
)
def test_broken_json_is_rejected(tmp_path: Path, document: bytes, records: str | None, message: str) -> None:
    with pytest.raises(ExportRejected, match=message):
        read_export(write(tmp_path, "b.json", document), profile(format="json", records=records))
