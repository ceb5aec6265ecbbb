"""Reading clinic export files into raw frames: every column a string, every row with its source line.

Hostile input is refused before any engine sees it: binary files posing as text, zip bombs, macro-enabled
or binary workbooks, sheets whose used range would not fit in memory, files still being written, and
headers that make the mapping ambiguous. Every refusal is an ExportRejected naming the file and the problem.

Each format has its module (decoding, csv, xlsx with its workbook scan, json); limits holds the safety caps.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl

from alliance.clinics import ExportProfile
from alliance.errors import ExportRejected
from alliance.readers.csv import header_line, read_csv_text, sniff_delimiter
from alliance.readers.decoding import EXPORT_AS, REFUSED_SUFFIXES, decode, refuse_binary
from alliance.readers.frames import FOOTER_ROW, HIDDEN_ROW, SOURCE_LINE
from alliance.readers.header import HEADER_SEARCH_ROWS, choose_header
from alliance.readers.json import json_records, read_json_text, read_ndjson_text
from alliance.readers.limits import ReadLimits
from alliance.readers.workbook import chosen_sheet, first_valued_row
from alliance.readers.xlsx import read_xlsx, read_xlsx_bytes

__all__ = [
    "FOOTER_ROW",
    "HIDDEN_ROW",
    "SOURCE_LINE",
    "ReadLimits",
    "decode",
    "header_position",
    "json_records",
    "read_csv_text",
    "read_export",
    "read_json_text",
    "read_ndjson_text",
    "read_xlsx",
    "read_xlsx_bytes",
    "sha256_of",
    "sniff_delimiter",
]


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large exports stay out of memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_export(
    path: Path,
    profile: ExportProfile,
    max_bytes: int | None = None,
    limits: ReadLimits | None = None,
    data: bytes | None = None,
    complete: bool = False,
) -> pl.DataFrame:
    """Raw frame of one export as its profile describes it; ExportRejected when it cannot be read at all.

    ``complete`` (the pipeline's choice) refuses a CSV or XLSX header without every mapped column, showing the
    header found. ``data``, when given, are the file's bytes already read (and hashed) by the caller: they are
    parsed instead.
    """
    limits = limits or ReadLimits()
    refused = REFUSED_SUFFIXES.get(path.suffix.lower())
    if refused:
        raise ExportRejected(path.name, f"{refused}; {EXPORT_AS}")
    size = path.stat().st_size if data is None else len(data)
    if size == 0:
        raise ExportRejected(path.name, "the file is empty (0 bytes)")
    if max_bytes is not None and size > max_bytes:
        raise ExportRejected(path.name, f"the file is {size / 1e6:.0f} MB, over the {max_bytes / 1e6:.0f} MB limit")
    if data is None:
        data = path.read_bytes()
    if profile.format == "xlsx":
        return read_xlsx_bytes(data, profile, path.name, limits, complete)
    refuse_binary(data, profile.format, path.name)
    text = decode(data, profile.encoding, path.name)
    if profile.format == "json":
        return read_json_text(text, profile, path.name, limits)
    if profile.format == "ndjson":
        return read_ndjson_text(text, profile, path.name, limits)
    return read_csv_text(text, profile, path.name, limits, complete)


def header_position(data: bytes, profile: ExportProfile, file_name: str) -> str | None:
    """Where the readers take the header from, e.g. 'line 4 (detected)'; None for JSON (it has no header row).

    For a file already read once (the dry run): the same choice as the reader's, told rather than used.
    """
    if profile.format in ("json", "ndjson"):
        return None
    if profile.format == "xlsx":
        import fastexcel

        sheet = chosen_sheet(data, profile)
        grid = fastexcel.read_excel(data).load_sheet(
            sheet or 0, header_row=None, dtypes="string", n_rows=HEADER_SEARCH_ROWS
        )
        first = first_valued_row(data, sheet) if sheet else 1
        choice = choose_header(pl.DataFrame(grid.to_arrow()).rows(), profile, first)
        return f"sheet {sheet!r} row {first + choice.index} ({choice.how})"
    _delimiter, skipped, how = header_line(decode(data, profile.encoding, file_name), profile)
    return f"line {skipped + 1} ({how})"
