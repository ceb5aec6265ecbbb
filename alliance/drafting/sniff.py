"""What a file is: format, encoding, delimiter, decimal comma, its header and the values under it."""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from alliance.errors import ExportRejected
from alliance.readers import decode, sniff_delimiter

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


def _sniff_xlsx(path: Path) -> Sniffed:
    import fastexcel

    try:
        reader = fastexcel.read_excel(path.read_bytes())
        names = list(reader.sheet_names)
        best: tuple[str, list[str], dict[str, list[str]]] | None = None
        for name in names:
            grid = reader.load_sheet(name, header_row=None, dtypes="string", n_rows=MAX_SAMPLE_ROWS).to_polars()
            rows = [["" if c is None else str(c) for c in row] for row in grid.rows()]
            if rows and (best is None or len(rows[0]) > len(best[1])):
                best = (name, rows[0], _columns(rows[0], rows[1:]))
    except Exception as exc:  # fastexcel raises its own types for broken workbooks
        raise ExportRejected(path.name, f"cannot read as XLSX ({type(exc).__name__})") from None
    if best is None:
        raise ExportRejected(path.name, "the workbook has no sheet with values")
    sheet, header, values = best
    return Sniffed("xlsx", "auto", None, _decimal_comma(values, None), header, values, sheet)


def sniff_export(path: Path) -> Sniffed:
    """The layout of one export file; ExportRejected when it is not a readable CSV or XLSX."""
    if path.suffix.lower() == ".xlsx":
        return _sniff_xlsx(path)
    if path.suffix.lower() in (".json", ".ndjson", ".jsonl"):
        raise ExportRejected(
            path.name, "drafting reads CSV and XLSX exports; a JSON profile needs its records path written by hand"
        )
    data = path.read_bytes()
    text = decode(data, "auto", path.name)
    if not text.strip():
        raise ExportRejected(path.name, "the file is empty")
    delimiter = sniff_delimiter(text)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = next(reader)
        rows = [row for _, row in zip(range(MAX_SAMPLE_ROWS), reader, strict=False)]
    except csv.Error:
        raise ExportRejected(path.name, "cannot parse as CSV") from None
    values = _columns(header, rows)
    return Sniffed("csv", _encoding(data), delimiter, _decimal_comma(values, delimiter), header, values)
