"""What a file is: format, encoding, delimiter, decimal comma, its header and the values under it."""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from alliance.drafting.records import sniff_records
from alliance.errors import ExportRejected
from alliance.readers import decode, sniff_delimiter
from alliance.readers.csv import SNIFF_DELIMITERS
from alliance.readers.frames import FOOTER_LABEL
from alliance.readers.header import HEADER_SEARCH_ROWS
from alliance.readers.workbook import first_valued_row
from alliance.vocabulary import key_field_named

MAX_SAMPLE_ROWS = 5000  # enough rows to see every value range and date shape
COMMA_NUMBER = re.compile(r"^[+-]?[0-9]+,[0-9]+$")


@dataclass(frozen=True)
class Sniffed:
    """A file's layout and, per header name, the values of its first rows (kept in memory, never printed)."""

    format: str
    encoding: str
    delimiter: str | None
    decimal_comma: bool
    header: list[str]
    values: dict[str, list[str]]
    sheet: str | None = None
    header_row: int = 1  # the header's file line (CSV) or sheet row (XLSX)
    footer_rows: int = 0  # summary or footer rows below the header (Total, Average, Exported by …)
    sheets: tuple[str, ...] = ()  # every sheet of a workbook, in order
    records: str | None = None  # json: the dotted path to the session records
    labels: dict[str, str] = field(default_factory=dict)  # json: each field's name within its own object


def _encoding(data: bytes) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "cp1252"
    return "utf-8"


def _columns(header: list[str], rows: list[list[str]]) -> dict[str, list[str]]:
    return {
        name: [row[i].strip() for row in rows if i < len(row) and row[i].strip()]
        for i, name in enumerate(header)
        if name.strip()
    }


def _decimal_comma(values: dict[str, list[str]], delimiter: str | None) -> bool:
    if delimiter == ",":
        return False
    return any(COMMA_NUMBER.match(v) for column in values.values() for v in column)


def header_index(rows: list[list[str]]) -> tuple[int, int]:
    """(index of the header among the leading rows, key fields its names give): above it lie title lines.

    The header is the first row naming the most key fields (client, therapist, date, session) by their
    English or German names; a title, an export date or a blank line names none.
    """
    scores = [len({key_field_named(cell) for cell in row} - {None}) for row in rows[:HEADER_SEARCH_ROWS]]
    best = max(scores, default=0)
    return (scores.index(best), best) if best >= 2 else (0, best)


def _footers(rows: list[list[str]]) -> int:
    """How many rows open with a summary label ('Total', 'Mittelwert', 'Exported by …'), as the readers find them."""
    label = re.compile(FOOTER_LABEL)
    firsts = [next((c.strip() for c in row if c.strip()), "") for row in rows]
    return sum(1 for first in firsts if label.search(first))


def _sniff_xlsx(path: Path) -> Sniffed:
    import fastexcel

    data = path.read_bytes()
    try:
        reader = fastexcel.read_excel(data)
        names = list(reader.sheet_names)
        best: tuple[int, str, list[list[str]], int] | None = None  # score, sheet, rows, header index
        for name in names:
            grid = reader.load_sheet(name, header_row=None, dtypes="string", n_rows=MAX_SAMPLE_ROWS).to_polars()
            rows = [["" if c is None else str(c) for c in row] for row in grid.rows()]
            if not rows:
                continue
            index, score = header_index(rows)
            if best is None or score > best[0]:
                best = (score, name, rows, index)
    except Exception as exc:  # fastexcel raises its own types for broken workbooks
        raise ExportRejected(path.name, f"cannot read as XLSX ({type(exc).__name__})") from None
    if best is None:
        raise ExportRejected(path.name, "the workbook has no sheet with values")
    _score, sheet, rows, index = best
    header, body = rows[index], rows[index + 1 :]
    values = _columns(header, body)
    row = first_valued_row(data, sheet) + index
    return Sniffed(
        "xlsx", "auto", None, _decimal_comma(values, None), header, values, sheet, row, _footers(body), tuple(names)
    )


def sniff_export(path: Path) -> Sniffed:
    """The layout of one export file; ExportRejected when it is not a readable CSV, XLSX, JSON or NDJSON file."""
    if path.suffix.lower() == ".xlsx":
        return _sniff_xlsx(path)
    data = path.read_bytes()
    if path.suffix.lower() in (".json", ".ndjson", ".jsonl"):
        records, names, values, labels = sniff_records(path, data)
        kind = "json" if path.suffix.lower() == ".json" else "ndjson"
        return Sniffed(kind, "auto", None, False, names, values, records=records, labels=labels)
    text = decode(data, "auto", path.name)
    if not text.strip():
        raise ExportRejected(path.name, "the file is empty")
    best: tuple[int, str, list[tuple[int, list[str]]], int] | None = None  # score, delimiter, rows, header index
    for delimiter in (sniff_delimiter(text), *SNIFF_DELIMITERS):
        rows = _csv_rows(text, delimiter, path.name)
        index, score = header_index([row for _line, row in rows])
        if best is None or score > best[0]:
            best = (score, delimiter, rows, index)
    assert best is not None
    _score, delimiter, rows, index = best
    (line, header), body = rows[index] if rows else (1, []), [row for _line, row in rows[index + 1 :]]
    values = _columns(header, body)
    return Sniffed(
        "csv", _encoding(data), delimiter, _decimal_comma(values, delimiter), header, values, None, line, _footers(body)
    )


def _csv_rows(text: str, delimiter: str, file_name: str) -> list[tuple[int, list[str]]]:
    """(line, fields) of the first records; the line is where each record starts."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    rows: list[tuple[int, list[str]]] = []
    line = 1
    try:
        for record in reader:
            rows.append((line, record))
            line = reader.line_num + 1
            if len(rows) > MAX_SAMPLE_ROWS:
                break
    except csv.Error:
        raise ExportRejected(file_name, "cannot parse as CSV") from None
    return rows
