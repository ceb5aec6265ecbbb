"""Reading clinic export files into raw frames: every column a string, every row with its source line.

Hostile input is refused before any engine sees it: binary files posing as text, zip bombs, macro-enabled
or binary workbooks, sheets whose used range would not fit in memory, files still being written, and
headers that make the mapping ambiguous. Every refusal is an ExportRejected naming the file and the problem.
"""

from __future__ import annotations

import codecs
import csv
import decimal
import hashlib
import io
import json
import math
import posixpath
import re
import xml.etree.ElementTree as ET
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from alliance.clinics import ExportProfile, normalise_column
from alliance.errors import ExportRejected
from alliance.redaction import engine_problem, value_kind

if TYPE_CHECKING:
    from alliance.settings import Settings

SOURCE_LINE = "source_line"
HIDDEN_ROW = "__hidden_row"  # true on XLSX rows hidden in the workbook (transforms.mapping reads it)
SNIFF_DELIMITERS = ",;\t|"

# Workbook kinds that are refused by name: macros are never run, binary and old workbooks cannot be checked.
REFUSED_SUFFIXES = {
    ".xlsm": "a macro-enabled workbook (.xlsm): macros are never run and such files are refused",
    ".xltm": "a macro-enabled template (.xltm): macros are never run and such files are refused",
    ".xlsb": "a binary workbook (.xlsb), which cannot be checked before reading",
    ".xls": "an old binary Excel workbook (.xls), which cannot be checked before reading",
}
EXPORT_AS = "export it as .xlsx (without macros) or CSV"
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
# Leading bytes of files that are certainly not text exports.
BINARY_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"PK\x03\x04", "a ZIP archive (an XLSX workbook?)"),
    (b"PK\x05\x06", "an empty ZIP archive"),
    (OLE2_MAGIC, "an old binary Excel (.xls) or password-protected workbook"),
    (b"%PDF-", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"\x7fELF", "an executable program"),
)
# A UTF-8 multi-byte sequence: its presence next to invalid bytes means the file mixes encodings.
UTF8_SEQUENCE = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]"
    rb"|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2}"
)
MAX_WORKBOOK_PARTS = 10_000  # a normal workbook has a few dozen
MAX_METADATA_BYTES = 16_000_000  # workbook.xml, its relationships and the content types
MB = 1_000_000


@dataclass(frozen=True)
class ReadLimits:
    """Safety caps applied while reading; the defaults hold for direct callers, the pipeline passes settings."""

    max_rows: int = 2_000_000
    max_xlsx_uncompressed_bytes: int = 1024 * MB
    max_xlsx_ratio: float = 100.0
    max_xlsx_cells: int = 25_000_000
    require_final_newline: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> ReadLimits:
        return cls(
            max_rows=settings.max_rows,
            max_xlsx_uncompressed_bytes=int(settings.max_xlsx_uncompressed_mb * MB),
            max_xlsx_ratio=settings.max_xlsx_ratio,
            max_xlsx_cells=settings.max_xlsx_cells,
            require_final_newline=settings.require_final_newline,
        )


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks so large exports stay out of memory."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _engine_failure(exc: BaseException) -> bool:
    """True for errors of a parsing engine, including Rust panics (which are not Exceptions)."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def decode(data: bytes, declared: str, file_name: str) -> str:
    """Text of an export; BOMs win, then the declared encoding; 'auto' tries UTF-8 then cp1252, never lossy.

    'auto' falls back to cp1252 only when the whole file decodes as cp1252 and holds no UTF-8 sequence:
    a file mixing the two is refused rather than half of it turned into mojibake.
    """
    if data.startswith(codecs.BOM_UTF8):
        text = _strict(data[len(codecs.BOM_UTF8) :], "utf-8", file_name)
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = _strict(data, "utf-16", file_name)
    elif declared == "utf-16":
        raise ExportRejected(file_name, "declared UTF-16 but the file has no byte-order mark")
    elif declared == "cp1252":
        text = _strict(data, "cp1252", file_name)
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            if declared == "utf-8":
                raise ExportRejected(
                    file_name,
                    f"not valid UTF-8 at line {_line_of(data, exc.start)} (byte 0x{data[exc.start]:02X}); "
                    'set encoding = "cp1252" in the clinic\'s profile if the vendor writes Windows-1252',
                ) from None
            mixed = UTF8_SEQUENCE.search(data)
            if mixed is not None:
                raise ExportRejected(
                    file_name,
                    f"mixed encodings: UTF-8 text (line {_line_of(data, mixed.start())}) and a byte that is not "
                    f"UTF-8 (0x{data[exc.start]:02X} at line {_line_of(data, exc.start)}); re-export the file in "
                    'one encoding, or set encoding = "cp1252" in the clinic\'s profile if it is Windows-1252',
                ) from None
            try:
                text = data.decode("cp1252")
            except UnicodeDecodeError as exc2:
                raise ExportRejected(
                    file_name,
                    f"unknown encoding: not UTF-8 (line {_line_of(data, exc.start)}) and not cp1252 "
                    f"(byte 0x{data[exc2.start]:02X} at line {_line_of(data, exc2.start)})",
                ) from None
    nul = text.find("\x00")
    if nul >= 0:
        raise ExportRejected(
            file_name,
            f"contains NUL bytes (first at line {text.count(chr(10), 0, nul) + 1}): "
            "UTF-16 without a byte-order mark, or not a text file",
        )
    return text


def _strict(payload: bytes, encoding: str, file_name: str) -> str:
    try:
        return payload.decode(encoding)
    except UnicodeDecodeError as exc:
        # lines counted on the decoded prefix, so UTF-16 files are numbered right too
        line = payload[: exc.start].decode(encoding, errors="replace").count("\n") + 1
        raise ExportRejected(file_name, f"not valid {encoding} at line {line}") from None


def _refuse_binary(data: bytes, export_format: str, file_name: str) -> None:
    """A text export that is really an image, an archive or a workbook is refused before decoding."""
    for magic, what in BINARY_SIGNATURES:
        if data.startswith(magic):
            raise ExportRejected(
                file_name,
                f"this is {what}, not a {export_format.upper()} text export; check the file and the "
                "clinic's export format",
            )


def sniff_delimiter(text: str) -> str:
    """The delimiter of a CSV text, chosen among , ; tab and | from its first lines."""
    head = "\n".join(text.splitlines()[:20])
    try:
        return csv.Sniffer().sniff(head, delimiters=SNIFF_DELIMITERS).delimiter
    except csv.Error:
        header = text.split("\n", 1)[0]
        return max(SNIFF_DELIMITERS, key=header.count)


def _csv_records(
    text: str, delimiter: str, file_name: str, columns: Sequence[str] = ()
) -> Iterator[tuple[int, list[str]]]:
    """(start line, fields) of every CSV record, as Python's csv module reads them."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    line = 1
    try:
        for record in reader:
            yield line, record
            line = reader.line_num + 1
    except csv.Error as exc:
        problem = engine_problem(exc, columns)
        if "new-line character seen in unquoted field" in problem:
            problem = "a line break inside a field that is not quoted (fields with line breaks must be in quotes)"
        raise ExportRejected(file_name, f"cannot parse as CSV at line {line}: {problem}") from None


def _check_header(
    names: Sequence[str | None], profile: ExportProfile, file_name: str, label: Callable[[int], str]
) -> None:
    """Refuse a header where a mapped vendor column appears more than once: which one to load is ambiguous."""
    mapped = {normalise_column(vendor): vendor for vendor in profile.columns}
    seen: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        if name is not None and normalise_column(name) in mapped:
            seen.setdefault(normalise_column(name), []).append(index)
    for key, positions in seen.items():
        if len(positions) > 1:
            vendor = mapped[key]
            raise ExportRejected(
                file_name,
                f"the header has {len(positions)} columns named {vendor!r} ({', '.join(map(label, positions))}), "
                f"mapped to {profile.columns[vendor]}: the mapping is ambiguous; remove or rename the duplicate",
            )


def _too_many_rows(file_name: str, count: int, limits: ReadLimits, unit: str = "rows") -> ExportRejected:
    return ExportRejected(
        file_name, f"the file has {count:,} {unit}, over the limit of {limits.max_rows:,} (ALLIANCE_MAX_ROWS)"
    )


def read_csv_text(text: str, profile: ExportProfile, file_name: str, limits: ReadLimits | None = None) -> pl.DataFrame:
    """All-string frame of a CSV text with the source line of each record."""
    limits = limits or ReadLimits()
    if not text.strip():
        raise ExportRejected(file_name, "the file is empty")
    if limits.require_final_newline and not text.endswith(("\n", "\r")):
        last = text.count("\n") + 1
        raise ExportRejected(
            file_name,
            f"the file does not end with a newline: still being written or truncated (line {last} may be cut "
            "short); ingest it again once complete",
        )
    delimiter = sniff_delimiter(text) if profile.delimiter == "auto" else profile.delimiter
    records = _csv_records(text, delimiter, file_name, list(profile.columns))
    header = next(records, (1, []))[1]
    _check_header(header, profile, file_name, lambda i: f"column {i + 1}")
    try:
        frame = pl.read_csv(
            io.BytesIO(text.encode("utf-8")),
            separator=delimiter,
            infer_schema=False,
            raise_if_empty=False,
        )
    except BaseException as exc:
        if not _engine_failure(exc):
            raise
        raise ExportRejected(
            file_name,
            f"cannot parse as CSV with delimiter {delimiter!r}: "
            f"{_csv_problem(records, header, exc, profile, (text, delimiter))}",
        ) from None
    if frame.height > limits.max_rows:
        raise _too_many_rows(file_name, frame.height, limits)
    body_lines = text.rstrip("\r\n").count("\n")
    if body_lines == frame.height:
        lines = pl.int_range(2, frame.height + 2, eager=True)
    else:
        starts = [line for line, _record in records]
        if len(starts) != frame.height:
            raise ExportRejected(
                file_name,
                f"cannot parse as CSV with delimiter {delimiter!r}: the records do not line up "
                f"({frame.height} read, {len(starts)} counted); check the quoting",
            )
        lines = pl.Series(starts)
    return _without_blank_rows(frame.with_columns(lines.cast(pl.Int64).alias(SOURCE_LINE)))


def _csv_problem(
    records: Iterator[tuple[int, list[str]]],
    header: list[str],
    exc: BaseException,
    profile: ExportProfile,
    source: tuple[str, str],
) -> str:
    """Where a CSV the engine refused goes wrong: the first record with more fields than the header, or a cell
    quoted wrongly; otherwise the engine's message with its quoted cells replaced by their kind.

    The engine quotes the cell it choked on, so its message is never passed on as it is. Only mapped headers
    (names from the clinic's profile) are named: other headers may be client data in a file without one.
    """
    try:
        for line, record in records:
            if len(record) > len(header):
                return f"line {line} has {len(record)} fields, the header has {len(header)}"
    except ExportRejected as rejection:
        return rejection.problem
    unparsed = _UNPARSED.match(str(exc))
    if unparsed is None:
        return engine_problem(exc, list(profile.columns))
    number = int(unparsed.group("number"))
    name = header[number - 1] if 0 < number <= len(header) else None
    mapped = {normalise_column(vendor) for vendor in profile.columns}
    column = f"column {number}" + (f" ({name!r})" if name and normalise_column(name) in mapped else "")
    where = _bad_quoting_line(*source)
    kind = value_kind(unparsed.group("value"))
    return (
        f"{'line ' + str(where) + ', ' if where else ''}{column}: a {kind} cell is quoted wrongly "
        "(a quote inside a field must be doubled, and a quoted field must end with a quote)"
    )


# Polars' message for a cell it cannot split: it quotes the cell, which is why only its shape is kept.
_UNPARSED = re.compile(
    r"could not parse `(?P<value>.*)` as dtype `\w+` at column '.*' \(column number (?P<number>\d+)\)", re.DOTALL
)


def _bad_quoting_line(text: str, delimiter: str) -> int | None:
    """The line where strict CSV quoting first breaks (Python's csv module, which Polars does not tell)."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, strict=True)
    try:
        for _record in reader:
            pass
    except csv.Error:
        return reader.line_num
    return None


def _without_blank_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows whose every field is empty are layout, not ratings: dropped after their lines are numbered."""
    fields = [i for i, c in enumerate(frame.columns) if c != SOURCE_LINE]
    if not fields:
        return frame
    # by position: a header such as '*' or '^.*$' would be a wildcard or a pattern to pl.col
    return frame.filter(~pl.all_horizontal(pl.nth(fields).str.strip_chars().replace("", None).is_null()))


# ---------------------------------------------------------------------------------------------- XLSX

_PREFIX = rb"(?:[A-Za-z_][\w.-]*:)?"
# fast path: every cell written as <c r="B7" …>, the way spreadsheet programs and libraries write them
_ROW_REF = re.compile(rb'<row r="([1-9][0-9]{0,6})"')
_CELL_LETTERS = re.compile(rb'<c r="([A-Z]{1,3})[1-9][0-9]{0,6}"')
_CELL_ROWS = re.compile(rb'<c r="[A-Z]{1,3}([1-9][0-9]{0,6})"')
# formulas and namespace-prefixed cells need the cell-by-cell path (plain 'in' checks: fast, may over-match)
_SLOW_PATH_TAGS = (b"<f>", b"<f ", b"<f/", b":f>", b":f ", b":f/", b":c ", b":c>", b":c/", b":row")
_FORMULA = re.compile(rb"<" + _PREFIX + rb"f[\s/>]")
# cell by cell: attribute values may hold '>' and use either quote
_TOKEN = re.compile(rb"<" + _PREFIX + rb"(row|c)(?=[\s/>])((?:[^>\"']|\"[^\"]*\"|'[^']*')*)>")
_CELL_END = re.compile(rb"</" + _PREFIX + rb"c>")
_ROW_END = re.compile(rb"</" + _PREFIX + rb"row>")
_CACHED = re.compile(rb"<" + _PREFIX + rb"v>\s*[^<\s]")
_ATTR_R = re.compile(rb"\sr\s*=\s*([\"'])(.*?)\1", re.DOTALL)
_PLAIN_ROW = re.compile(rb"[1-9][0-9]{0,6}")
# a cell holding a value (calamine's range starts at the first such cell, not at sheet row 1)
_VALUED_CELL = re.compile(rb'<c r="[A-Z]{1,3}([1-9][0-9]{0,6})"[^>]*>\s*<(?:v|is)[\s>]')
_HAS_VALUE = re.compile(rb"<" + _PREFIX + rb"(?:v|is)[\s>]")
_ATTR_HIDDEN = re.compile(rb"\shidden\s*=\s*([\"'])\s*(?:1|true)\s*\1", re.IGNORECASE)
_PLAIN_CELL = re.compile(rb"([A-Z]{1,3})([1-9][0-9]{0,6})")
REL_NS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"


def _column_index(letters: bytes) -> int:
    """1-based column number of 'A', 'Z', 'AA', … 'XFD'."""
    number = 0
    for char in letters:
        number = number * 26 + (char - 64)
    return number


def _column_letters(number: int) -> str:
    letters = ""
    while number > 0:
        number, rest = divmod(number - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


@dataclass
class _Formulas:
    """Formula cells of one sheet column: how many, and how many have no calculated result at all."""

    count: int = 0
    first: tuple[int, int] = (0, 0)
    uncached: int = 0
    first_uncached: tuple[int, int] = (0, 0)


@dataclass
class _SheetScan:
    """What a worksheet's XML holds before calamine reads it: the extent of its cells and its formulas."""

    max_row: int = 0
    max_col: int = 0
    formulas: dict[int, _Formulas] = field(default_factory=dict)  # by sheet column (1-based), header row excluded
    hidden_rows: set[int] = field(default_factory=set)  # sheet row numbers (1-based) hidden in the workbook
    first_row: int = 0  # sheet row of the first cell with a value (0: none seen yet)
    _row: int = 0
    _col: int = 0
    _buffer: bytes = b""

    def feed(self, chunk: bytes) -> None:
        """Scan whole rows as they arrive; the tail after the last row end waits for the next chunk."""
        self._buffer += chunk
        cut = self._buffer.rfind(b"</row>") + len(b"</row>")
        if b":row>" in chunk:  # rows written with a namespace prefix
            ends = [m.end() for m in _ROW_END.finditer(self._buffer, max(0, len(self._buffer) - len(chunk) - 64))]
            cut = max(cut, ends[-1] if ends else 0)
        if cut >= len(b"</row>"):
            self._segment(self._buffer[:cut])
            self._buffer = self._buffer[cut:]

    def close(self) -> None:
        self._segment(self._buffer)
        self._buffer = b""

    def _segment(self, data: bytes) -> None:
        if not data:
            return
        # hidden rows are rare: the cell-by-cell path finds them wherever their attributes are written
        if b"hidden" not in data and not any(tag in data for tag in _SLOW_PATH_TAGS):
            cells = data.count(b"<c ") + data.count(b"<c>") + data.count(b"<c/")
            letters = _CELL_LETTERS.findall(data)
            numbers = _CELL_ROWS.findall(data)
            if len(letters) == len(numbers) == cells:
                # every cell names its position plainly (calamine places cells by it): the fast path
                if letters:
                    self.max_col = max(self.max_col, max(_column_index(x) for x in set(letters)))
                    self.max_row = max(self.max_row, max(map(int, numbers)))
                rows = _ROW_REF.findall(data)
                self._row = max(self._row, self.max_row, *(int(r) for r in rows[-1:]))
                if not self.first_row:
                    valued = _VALUED_CELL.findall(data)
                    self.first_row = min(map(int, valued)) if valued else 0
                return
        self._tokens(data)

    def _tokens(self, data: bytes) -> None:
        """Cell by cell, for sheets with formulas or cells placed by position rather than by reference.

        A position a cell does not state is over-estimated, never under-estimated: the next row after the
        furthest seen so far, the next column after both the cells counted and the last one referenced.
        """
        for match in _TOKEN.finditer(data):
            kind, attrs = match.group(1), match.group(2)
            ref = _ATTR_R.search(attrs)
            if kind == b"row":
                if ref is not None and not _PLAIN_ROW.fullmatch(ref.group(2)):
                    raise _OddReference(ref.group(2))
                self._row = int(ref.group(2)) if ref else max(self._row, self.max_row) + 1
                self._col = 0
                if _ATTR_HIDDEN.search(attrs):
                    self.hidden_rows.add(self._row)
                continue
            if ref is not None:
                plain = _PLAIN_CELL.fullmatch(ref.group(2))
                if plain is None:
                    raise _OddReference(ref.group(2))
                col, row = _column_index(plain.group(1)), int(plain.group(2))
                self._col = max(self._col + 1, col)
            else:
                self._col += 1
                col, row = self._col, max(self._row, 1)
            self.max_row = max(self.max_row, row)
            self.max_col = max(self.max_col, col)
            looking = not self.first_row or row < self.first_row
            if attrs.endswith(b"/") or (row <= 1 and not looking):
                continue
            end = _CELL_END.search(data, match.end())
            body = data[match.end() : end.start() if end else len(data)]
            if looking and _HAS_VALUE.search(body) is not None:
                self.first_row = row
            if row <= 1:
                continue
            if _FORMULA.search(body) is not None:
                seen = self.formulas.setdefault(col, _Formulas(first=(row, col)))
                seen.count += 1
                if _CACHED.search(body) is None:
                    seen.uncached += 1
                    if seen.uncached == 1:
                        seen.first_uncached = (row, col)


class _OddReference(ValueError):
    """A cell or row position not written as plain 'B7' / '7': it cannot be checked, so it is not read."""


def _read_part(archive: zipfile.ZipFile, name: str) -> bytes | None:
    try:
        info = archive.getinfo(name)
    except KeyError:
        return None
    if info.file_size > MAX_METADATA_BYTES:
        return None
    with archive.open(info) as handle:
        return handle.read(MAX_METADATA_BYTES + 1)[:MAX_METADATA_BYTES]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _sheet_part(archive: zipfile.ZipFile, sheet: str | None) -> tuple[str | None, bool, str | None]:
    """The zip part of the sheet to read (None when it cannot be told), whether the workbook asks for its
    formulas to be recalculated on load (so their stored results are not real), and the sheet's name.

    Without a sheet named in the profile it is the first visible one: a hidden sheet (an old copy, a lookup
    table) is not what the clinic sees as its export.
    """
    try:
        workbook = ET.fromstring(_read_part(archive, "xl/workbook.xml") or b"")
        rels = ET.fromstring(_read_part(archive, "xl/_rels/workbook.xml.rels") or b"")
    except (ET.ParseError, LookupError, ValueError):
        return None, True, None  # unreadable metadata: no stored formula result is trusted
    full_calc = any(
        _local(el.tag) == "calcPr" and el.get("fullCalcOnLoad", "").lower() in ("1", "true") for el in workbook.iter()
    )
    sheets = [el for el in workbook.iter() if _local(el.tag) == "sheet"]
    visible = [el for el in sheets if el.get("state", "visible").lower() not in ("hidden", "veryhidden")]
    if sheet is None:
        chosen = next(iter(visible or sheets), None)
    else:
        chosen = next((el for el in sheets if el.get("name") == sheet), None)
    if chosen is None:
        return None, full_calc, None
    name = chosen.get("name")
    rel_id = chosen.get(f"{{{REL_NS}}}id") or next((v for k, v in chosen.attrib.items() if k.endswith("}id")), None)
    target = next((el.get("Target") for el in rels.iter() if el.get("Id") == rel_id), None)
    if not target:
        return None, full_calc, name
    part = target.lstrip("/") if target.startswith("/") else posixpath.normpath(posixpath.join("xl", target))
    return part, full_calc, name


@dataclass(frozen=True)
class _Inspection:
    scan: _SheetScan
    full_calc: bool
    sheet_name: str | None = None


def _inspect_xlsx(data: bytes, profile: ExportProfile, file_name: str, limits: ReadLimits) -> _Inspection:
    """Check an XLSX as the zip it is before fastexcel opens it: complete, no bomb, no macros, a sane extent."""
    if data.startswith(OLE2_MAGIC):
        raise ExportRejected(
            file_name, f"cannot read as XLSX: this is a password-protected or old binary (.xls) workbook; {EXPORT_AS}"
        )
    if not data.startswith(b"PK"):
        raise ExportRejected(
            file_name,
            "cannot read as XLSX: not a zip archive (every XLSX is one); the file is damaged or not a workbook",
        )
    try:
        return _inspect_archive(zipfile.ZipFile(io.BytesIO(data)), len(data), profile, file_name, limits)
    except _OddReference as exc:
        written = bytes(exc.args[0])[:24].decode("ascii", "replace")
        raise ExportRejected(
            file_name, f"cannot read as XLSX: a cell position written as {written!r}, not plainly like 'B7'"
        ) from None
    except ZIP_ERRORS as exc:
        raise ExportRejected(
            file_name,
            f"cannot read as XLSX: the zip archive is truncated or damaged (still being written?): "
            f"{engine_problem(exc)}",
        ) from None


# What zipfile raises for truncated, corrupt or unsupported archives.
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, NotImplementedError,
              RuntimeError, ValueError, KeyError)  # fmt: skip


def _inspect_archive(
    archive: zipfile.ZipFile, size: int, profile: ExportProfile, file_name: str, limits: ReadLimits
) -> _Inspection:
    infos = archive.infolist()
    names = [info.filename for info in infos]
    if len(infos) > MAX_WORKBOOK_PARTS:
        raise ExportRejected(file_name, f"cannot read as XLSX: the archive holds {len(infos):,} parts; not a workbook")
    if len(set(names)) != len(names):
        raise ExportRejected(file_name, "cannot read as XLSX: the archive holds two parts with the same name")
    lowered = {name.lower() for name in names}
    types = (_read_part(archive, "[Content_Types].xml") or b"").lower()
    if "xl/vbaproject.bin" in lowered or b"macroenabled" in types:
        raise ExportRejected(
            file_name, f"a macro-enabled workbook: macros are never run and such files are refused; {EXPORT_AS}"
        )
    if "xl/workbook.bin" in lowered:
        raise ExportRejected(file_name, f"a binary workbook (.xlsb), which cannot be checked; {EXPORT_AS}")
    if "xl/workbook.xml" not in lowered:
        raise ExportRejected(
            file_name,
            "cannot read as XLSX: the archive has no xl/workbook.xml (an OpenDocument file, or not a workbook)",
        )
    if any(info.flag_bits & 0x1 for info in infos):
        raise ExportRejected(file_name, f"cannot read as XLSX: the archive is encrypted; {EXPORT_AS}")
    declared = sum(info.file_size for info in infos)
    _check_expansion(declared, size, file_name, limits)
    part, full_calc, sheet_name = _sheet_part(archive, profile.sheet)
    scan = _SheetScan()
    worksheets = {part} if part in names else {n for n in names if n.startswith("xl/worksheets/")}
    expanded = 0  # every part inflated for real: declared sizes are not trusted
    for info in infos:
        sheet_scan = scan if info.filename in worksheets else None
        with archive.open(info) as handle:
            while chunk := handle.read(1 << 22):
                expanded += len(chunk)
                _check_expansion(expanded, size, file_name, limits)
                if sheet_scan is not None:
                    sheet_scan.feed(chunk)
        if sheet_scan is not None:
            sheet_scan.close()
    if scan.max_row - 1 > limits.max_rows:
        raise _too_many_rows(file_name, scan.max_row - 1, limits, unit="sheet rows")
    cells = scan.max_row * scan.max_col
    if cells > limits.max_xlsx_cells:
        raise ExportRejected(
            file_name,
            f"cannot read as XLSX: the sheet's cells reach {_column_letters(scan.max_col)}{scan.max_row} "
            f"({scan.max_row:,} rows × {scan.max_col:,} columns = {cells:,} cells), over the limit of "
            f"{limits.max_xlsx_cells:,} (ALLIANCE_MAX_XLSX_CELLS); delete stray cells far from the data, or export CSV",
        )
    return _Inspection(scan, full_calc, sheet_name)


def _check_expansion(expanded: int, size: int, file_name: str, limits: ReadLimits) -> None:
    if expanded > limits.max_xlsx_uncompressed_bytes:
        raise ExportRejected(
            file_name,
            f"cannot read as XLSX: it expands to more than {limits.max_xlsx_uncompressed_bytes / MB:,.0f} MB "
            "(ALLIANCE_MAX_XLSX_UNCOMPRESSED_MB); refused as a possible zip bomb",
        )
    if expanded > limits.max_xlsx_ratio * max(size, 1):
        raise ExportRejected(
            file_name,
            f"cannot read as XLSX: it expands to more than {limits.max_xlsx_ratio:g} times its size "
            "(ALLIANCE_MAX_XLSX_RATIO); refused as a possible zip bomb",
        )


def _unique_names(header: Sequence[str | None]) -> list[str]:
    """Frame column names from a header row: blanks named by position, repeats made distinct."""
    names: list[str] = []
    taken: set[str] = set()
    for index, cell in enumerate(header):
        name = f"__UNNAMED__{index}" if cell is None else cell
        base, copy = name, 0
        while name in taken:
            name = f"{base}_duplicated_{copy}"
            copy += 1
        taken.add(name)
        names.append(name)
    return names


def read_xlsx(path: Path, profile: ExportProfile, limits: ReadLimits | None = None) -> pl.DataFrame:
    """All-string frame of one sheet of an XLSX workbook (fastexcel), header on sheet row 1."""
    return read_xlsx_bytes(path.read_bytes(), profile, path.name, limits)


def read_xlsx_bytes(
    data: bytes, profile: ExportProfile, file_name: str, limits: ReadLimits | None = None
) -> pl.DataFrame:
    """All-string frame of one sheet of an XLSX workbook given as bytes; checked as a zip first.

    When the sheet hides rows, a boolean ``__hidden_row`` column marks them (the rows are kept).
    """
    import fastexcel

    limits = limits or ReadLimits()
    inspection = _inspect_xlsx(data, profile, file_name, limits)
    sheet = f" (sheet {profile.sheet!r})" if profile.sheet else ""
    try:
        reader = fastexcel.read_excel(data)
        chosen = profile.sheet or inspection.sheet_name or 0  # the sheet that was inspected
        loaded = reader.load_sheet(chosen, header_row=None, dtypes="string")
        absolute = [column.absolute_index for column in loaded.available_columns()]
        grid = pl.DataFrame(loaded.to_arrow())
    except BaseException as exc:  # fastexcel raises its own types for every kind of broken workbook
        if not _engine_failure(exc):
            raise
        problem = engine_problem(exc, [*profile.columns, profile.sheet or ""])
        raise ExportRejected(file_name, f"cannot read as XLSX{sheet}: {problem}") from None
    grid = grid.select(pl.col(c).cast(pl.String) for c in grid.columns)
    header: list[str | None] = list(grid.row(0)) if grid.height else []
    _check_header(header, profile, file_name, lambda i: f"column {_column_letters(absolute[i] + 1)}")
    names = _unique_names(header)
    _refuse_uncalculated(inspection, dict(zip(absolute, names, strict=True)), profile, file_name)
    frame = grid.slice(1).rename(dict(zip(grid.columns, names, strict=True)))
    if frame.height > limits.max_rows:
        raise _too_many_rows(file_name, frame.height, limits)
    # the grid starts at the first row with a value: line numbers are sheet rows, as the clinic sees them
    first = inspection.scan.first_row or 1
    numbered = frame.with_columns(pl.int_range(first + 1, first + 1 + frame.height).cast(pl.Int64).alias(SOURCE_LINE))
    lines = _without_blank_rows(numbered)
    if not inspection.scan.hidden_rows:
        return lines
    # marked, not dropped: the mapping quarantines them (or loads them, as the profile says)
    hidden = pl.Series(sorted(inspection.scan.hidden_rows), dtype=pl.Int64)
    return lines.with_columns(pl.col(SOURCE_LINE).is_in(hidden.implode()).alias(HIDDEN_ROW))


def _refuse_uncalculated(
    inspection: _Inspection, name_of: dict[int, str], profile: ExportProfile, file_name: str
) -> None:
    """A formula whose stored result was never calculated must not become a score: refuse such mapped cells.

    calamine returns a formula's stored (cached) result. A workbook saved by a spreadsheet program has real
    results, and they are the values used. One written by a library flags itself 'fullCalcOnLoad' and its
    stored results are placeholders (xlsxwriter stores 0 unless told a value, openpyxl stores nothing).
    """
    mapped = {normalise_column(vendor) for vendor in profile.columns}
    for column, seen in sorted(inspection.scan.formulas.items()):
        name = name_of.get(column - 1)
        if name is None or normalise_column(name) not in mapped:
            continue  # unmapped columns are never loaded
        if inspection.full_calc:
            count, (row, col) = seen.count, seen.first
            why = (
                "the workbook asks for its formulas to be recalculated when opened: the stored results are placeholders"
            )
        elif seen.uncached:
            count, (row, col) = seen.uncached, seen.first_uncached
            why = "the formulas have no stored result"
        else:
            continue
        more = f", and {count - 1} more" if count > 1 else ""
        raise ExportRejected(
            file_name,
            f"column {name!r} holds formulas whose results were never calculated (cell "
            f"{_column_letters(col)}{row}{more}): {why}; open and save the workbook in a spreadsheet program, "
            "or export values (CSV)",
        )


# ---------------------------------------------------------------------------------------------- JSON


class _DuplicateKey(ValueError):
    pass


class _Collision(ValueError):
    """Two fields flatten to one dotted name (its args: the name, made of JSON keys)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: a key given twice in one object is ambiguous, not 'the last one wins'."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(key)
        obj[key] = value
    return obj


def _flatten(node: dict[str, Any], prefix: str, out: dict[str, str | None], skip: str | None = None) -> None:
    for key, value in node.items():
        if key == skip:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _flatten(value, f"{name}.", out)
        elif isinstance(value, list):
            continue  # lists off the record path are not session fields
        elif name in out:
            raise _Collision(name)
        else:
            out[name] = _json_text(value)


def _json_text(value: Any) -> str | None:
    """A JSON scalar as text; a number keeps its value in plain digits (1e30 is a whole number, not '1e+30')."""
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value) and "e" in repr(value):
        return format(decimal.Decimal(repr(value)), "f")
    return str(value)


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


def _frame_of_records(rows: list[dict[str, str | None]], lines: list[int], file_name: str) -> pl.DataFrame:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    names.pop(SOURCE_LINE, None)  # a vendor field of that name is not ours; the line number is
    try:
        # built with the line numbers, so records without any field still count as rows
        return pl.DataFrame(
            {**{name: [row.get(name) for row in rows] for name in names}, SOURCE_LINE: lines},
            schema={**dict.fromkeys(names, pl.String), SOURCE_LINE: pl.Int64},
        )
    except UnicodeEncodeError:
        raise ExportRejected(
            file_name, "contains an escaped character that is not valid Unicode (a lone surrogate such as \\ud800)"
        ) from None


def _key_label(exc: ValueError, known: Sequence[str]) -> str:
    """A JSON key as a message may show it: named when the profile names it, else only its kind.

    JSON keyed by client name is common, so a key the profile does not know is never quoted.
    """
    key = str(exc.args[0]) if exc.args else ""
    return repr(key) if normalise_column(key) in {normalise_column(k) for k in known} else f"({value_kind(key)})"


def _json_problem(exc: ValueError | RecursionError, where: str, path: Sequence[str] = ()) -> str:
    if isinstance(exc, RecursionError):
        return f"{where}JSON nested too deeply"
    if isinstance(exc, _DuplicateKey):
        # JSON keyed by client name is common: the key is described, never quoted
        return f"{where}a JSON object has the key {_key_label(exc, path)} twice: which value to use is ambiguous"
    if isinstance(exc, _Collision):
        return f"{where}two fields flatten to the same name {_key_label(exc, path)} (a key with a dot in it?)"
    return f"{where}unexpected JSON shape: {engine_problem(exc, path)}"


def read_json_text(text: str, profile: ExportProfile, file_name: str, limits: ReadLimits | None = None) -> pl.DataFrame:
    """All-string frame of a JSON document's session records; source_line is the record's ordinal."""
    limits = limits or ReadLimits()
    try:
        document = json.loads(text, object_pairs_hook=_unique_keys)
        rows = json_records(document, profile.records)
    except json.JSONDecodeError as exc:
        raise ExportRejected(file_name, f"not valid JSON at line {exc.lineno}, column {exc.colno}") from None
    except (ValueError, RecursionError) as exc:
        raise ExportRejected(file_name, _json_problem(exc, "", _profile_keys(profile))) from None
    if len(rows) > limits.max_rows:
        raise _too_many_rows(file_name, len(rows), limits, unit="records")
    return _frame_of_records(rows, list(range(1, len(rows) + 1)), file_name)


def read_ndjson_text(
    text: str, profile: ExportProfile, file_name: str, limits: ReadLimits | None = None
) -> pl.DataFrame:
    """All-string frame of newline-delimited JSON; source_line is the file line of each object."""
    limits = limits or ReadLimits()
    rows: list[dict[str, str | None]] = []
    lines: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            found = json_records(json.loads(line, object_pairs_hook=_unique_keys), profile.records)
        except json.JSONDecodeError as exc:
            raise ExportRejected(file_name, f"not valid JSON at line {number}, column {exc.colno}") from None
        except (ValueError, RecursionError) as exc:
            raise ExportRejected(file_name, _json_problem(exc, f"line {number}: ", _profile_keys(profile))) from None
        rows.extend(found)
        lines.extend([number] * len(found))
    if len(rows) > limits.max_rows:
        raise _too_many_rows(file_name, len(rows), limits, unit="records")
    return _frame_of_records(rows, lines, file_name)


# ---------------------------------------------------------------------------------------------- any export


def read_export(
    path: Path,
    profile: ExportProfile,
    max_bytes: int | None = None,
    limits: ReadLimits | None = None,
    data: bytes | None = None,
) -> pl.DataFrame:
    """Raw frame of one export as its profile describes it; ExportRejected when it cannot be read at all.

    ``data``, when given, are the file's bytes already read (and hashed) by the caller: they are parsed instead.
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
        return read_xlsx_bytes(data, profile, path.name, limits)
    _refuse_binary(data, profile.format, path.name)
    text = decode(data, profile.encoding, path.name)
    if profile.format == "json":
        return read_json_text(text, profile, path.name, limits)
    if profile.format == "ndjson":
        return read_ndjson_text(text, profile, path.name, limits)
    return read_csv_text(text, profile, path.name, limits)


def _profile_keys(profile: ExportProfile) -> list[str]:
    """Keys named in the profile (records path, mapped columns): configuration, so messages may name them."""
    parts = profile.records.split(".") if profile.records else []
    return [*parts, *(".".join(parts[: i + 1]) for i in range(len(parts))), *profile.columns]
