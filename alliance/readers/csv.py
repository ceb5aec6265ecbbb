"""CSV exports: delimiter sniffing, Polars for the frame, Python's csv module for line numbers and diagnoses."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Sequence

import polars as pl

from alliance.clinics import ExportProfile, normalise_column
from alliance.errors import ExportRejected
from alliance.readers.frames import SOURCE_LINE, engine_failure, without_blank_rows
from alliance.readers.header import check_header
from alliance.readers.limits import ReadLimits, too_many_rows
from alliance.redaction import engine_problem, value_kind

SNIFF_DELIMITERS = ",;\t|"


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
    check_header(header, profile, file_name, lambda i: f"column {i + 1}")
    try:
        frame = pl.read_csv(
            io.BytesIO(text.encode("utf-8")),
            separator=delimiter,
            infer_schema=False,
            raise_if_empty=False,
        )
    except BaseException as exc:
        if not engine_failure(exc):
            raise
        raise ExportRejected(
            file_name,
            f"cannot parse as CSV with delimiter {delimiter!r}: "
            f"{_csv_problem(records, header, exc, profile, (text, delimiter))}",
        ) from None
    if frame.height > limits.max_rows:
        raise too_many_rows(file_name, frame.height, limits)
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
    return without_blank_rows(frame.with_columns(lines.cast(pl.Int64).alias(SOURCE_LINE)))


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
