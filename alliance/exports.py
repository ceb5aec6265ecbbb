"""Reading clinic export files into raw frames: every column a string, every row with its source line."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from alliance.clinics import ExportProfile
from alliance.errors import ExportRejected

SOURCE_LINE = "source_line"
SNIFF_DELIMITERS = ",;\t|"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large exports stay out of memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def decode(data: bytes, declared: str, file_name: str) -> str:
    """Text of an export; BOMs win, then the declared encoding; 'auto' tries UTF-8 then cp1252, never lossy."""
    if data.startswith(codecs.BOM_UTF8):
        return _strict(data[len(codecs.BOM_UTF8) :], "utf-8", file_name, data, len(codecs.BOM_UTF8))
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return _strict(data, "utf-16", file_name, data, 0)
    if declared == "utf-16":
        raise ExportRejected(file_name, "declared UTF-16 but the file has no byte-order mark")
    if declared == "cp1252":
        return _strict(data, "cp1252", file_name, data, 0)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if declared == "utf-8":
            raise ExportRejected(
                file_name,
                f"not valid UTF-8 at line {_line_of(data, exc.start)} (byte 0x{data[exc.start]:02X}); "
                'set encoding = "cp1252" in the clinic\'s profile if the vendor writes Windows-1252',
            ) from None
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError as exc2:
            raise ExportRejected(
                file_name,
                f"unknown encoding: not UTF-8 (line {_line_of(data, exc.start)}) and not cp1252 "
                f"(byte 0x{data[exc2.start]:02X} at line {_line_of(data, exc2.start)})",
            ) from None
    if "\x00" in text:
        raise ExportRejected(file_name, "contains NUL bytes: UTF-16 without a byte-order mark, or not a text file")
    return text


def _strict(payload: bytes, encoding: str, file_name: str, data: bytes, shift: int) -> str:
    try:
        return payload.decode(encoding)
    except UnicodeDecodeError as exc:
        line = _line_of(data, exc.start + shift)
        raise ExportRejected(file_name, f"not valid {encoding} at line {line}") from None


def sniff_delimiter(text: str) -> str:
    """The delimiter of a CSV text, chosen among , ; tab and | from its first lines."""
    head = "\n".join(text.splitlines()[:20])
    try:
        return csv.Sniffer().sniff(head, delimiters=SNIFF_DELIMITERS).delimiter
    except csv.Error:
        header = text.split("\n", 1)[0]
        return max(SNIFF_DELIMITERS, key=header.count)


def _record_lines(text: str, delimiter: str) -> list[int]:
    """Line on which each data record starts, for files whose quoted fields span lines."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    starts: list[int] = []
    line = 1
    for index, _record in enumerate(reader):
        if index > 0:
            starts.append(line)
        line = reader.line_num + 1
    return starts


def read_csv_text(text: str, profile: ExportProfile, file_name: str) -> pl.DataFrame:
    """All-string frame of a CSV text with the source line of each record."""
    if not text.strip():
        raise ExportRejected(file_name, "the file is empty")
    delimiter = sniff_delimiter(text) if profile.delimiter == "auto" else profile.delimiter
    try:
        frame = pl.read_csv(
            io.BytesIO(text.encode("utf-8")),
            separator=delimiter,
            infer_schema=False,
            raise_if_empty=False,
        )
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ExportRejected(
            file_name, f"cannot parse as CSV with delimiter {delimiter!r}: {_first_line(exc)}"
        ) from None
    body_lines = text.rstrip("\r\n").count("\n")
    if body_lines == frame.height:
        lines = pl.int_range(2, frame.height + 2, eager=True)
    else:
        lines = pl.Series(_record_lines(text, delimiter)[: frame.height])
    return _without_blank_rows(frame.with_columns(lines.cast(pl.Int64).alias(SOURCE_LINE)))


def _without_blank_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows whose every field is empty are layout, not ratings: dropped after their lines are numbered."""
    fields = [c for c in frame.columns if c != SOURCE_LINE]
    if not fields:
        return frame
    return frame.filter(~pl.all_horizontal(pl.col(fields).str.strip_chars().replace("", None).is_null()))


def read_xlsx(path: Path, profile: ExportProfile) -> pl.DataFrame:
    """All-string frame of one sheet of an XLSX workbook (fastexcel), header on sheet row 1."""
    try:
        frame = pl.read_excel(
            path,
            engine="calamine",
            sheet_name=profile.sheet,
            infer_schema_length=0,
            drop_empty_rows=False,
            drop_empty_cols=False,
            raise_if_empty=False,
        )
    except Exception as exc:  # fastexcel raises its own types for every kind of broken workbook
        sheet = f" (sheet {profile.sheet!r})" if profile.sheet else ""
        raise ExportRejected(path.name, f"cannot read as XLSX{sheet}: {_first_line(exc)}") from None
    frame = frame.select(pl.col(c).cast(pl.String) for c in frame.columns)
    return _without_blank_rows(frame.with_columns(pl.int_range(2, frame.height + 2).cast(pl.Int64).alias(SOURCE_LINE)))


def _flatten(node: dict[str, Any], prefix: str, out: dict[str, str | None], skip: str | None = None) -> None:
    for key, value in node.items():
        if key == skip:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _flatten(value, f"{name}.", out)
        elif isinstance(value, list):
            continue  # lists off the record path are not session fields
        else:
            out[name] = None if value is None else str(value)


def _records(node: Any, path: list[str], prefix: str, inherited: dict[str, str | None]) -> Iterator[dict]:
    if isinstance(node, list):
        for item in node:
            yield from _records(item, path, prefix, inherited)
        return
    if not isinstance(node, dict):
        raise ValueError(f"expected an object at {prefix.rstrip('.') or 'the top level'}")
    if not path:
        leaf = dict(inherited)
        _flatten(node, prefix, leaf)
        yield leaf
        return
    head = path[0]
    if head not in node:
        raise ValueError(f"no key {prefix}{head!r} on the records path")
    fields = dict(inherited)
    _flatten(node, prefix, fields, skip=head)
    yield from _records(node[head], path[1:], f"{prefix}{head}.", fields)


def json_records(document: Any, records: str | None) -> list[dict[str, str | None]]:
    """Flat session records of a JSON document: nested objects become dotted names, parents carried down."""
    path = records.split(".") if records else []
    return list(_records(document, path, "", {}))


def _frame_of_records(rows: list[dict[str, str | None]], lines: list[int]) -> pl.DataFrame:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    frame = pl.DataFrame(
        {name: [row.get(name) for row in rows] for name in names}, schema=dict.fromkeys(names, pl.String)
    )
    return frame.with_columns(pl.Series(SOURCE_LINE, lines, dtype=pl.Int64))


def read_json_text(text: str, profile: ExportProfile, file_name: str) -> pl.DataFrame:
    """All-string frame of a JSON document's session records; source_line is the record's ordinal."""
    try:
        document = json.loads(text)
        rows = json_records(document, profile.records)
    except json.JSONDecodeError as exc:
        raise ExportRejected(file_name, f"not valid JSON at line {exc.lineno}, column {exc.colno}") from None
    except ValueError as exc:
        raise ExportRejected(file_name, f"unexpected JSON shape: {exc}") from None
    return _frame_of_records(rows, list(range(1, len(rows) + 1)))


def read_ndjson_text(text: str, profile: ExportProfile, file_name: str) -> pl.DataFrame:
    """All-string frame of newline-delimited JSON; source_line is the file line of each object."""
    rows: list[dict[str, str | None]] = []
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            found = json_records(json.loads(line), profile.records)
        except json.JSONDecodeError as exc:
            raise ExportRejected(file_name, f"not valid JSON at line {number}, column {exc.colno}") from None
        except ValueError as exc:
            raise ExportRejected(file_name, f"line {number}: unexpected JSON shape: {exc}") from None
        rows.extend(found)
        lines.extend([number] * len(found))
    return _frame_of_records(rows, lines)


def read_export(path: Path, profile: ExportProfile, max_bytes: int | None = None) -> pl.DataFrame:
    """Raw frame of one export as its profile describes it; ExportRejected when it cannot be read at all."""
    size = path.stat().st_size
    if size == 0:
        raise ExportRejected(path.name, "the file is empty (0 bytes)")
    if max_bytes is not None and size > max_bytes:
        raise ExportRejected(path.name, f"the file is {size / 1e6:.0f} MB, over the {max_bytes / 1e6:.0f} MB limit")
    if profile.format == "xlsx":
        return read_xlsx(path, profile)
    text = decode(path.read_bytes(), profile.encoding, path.name)
    if profile.format == "json":
        return read_json_text(text, profile, path.name)
    if profile.format == "ndjson":
        return read_ndjson_text(text, profile, path.name)
    return read_csv_text(text, profile, path.name)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
