"""CSV exports: delimiter sniffing, Polars for the frame, Python's csv module for line numbers and diagnoses."""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterator, Sequence

import polars as pl

from alliance.clinics import ExportProfile, normalise_column
from alliance.errors import ExportRejected
from alliance.readers.frames import SOURCE_LINE, engine_failure, mark_footer_rows, without_blank_rows
from alliance.readers.header import HEADER_SEARCH_ROWS, check_header, check_mapped, choose_header
from alliance.readers.limits import ReadLimits, too_many_rows
from alliance.redaction import engine_problem, value_kind

SNIFF_DELIMITERS = ",;\t|"
log = logging.getLogger("alliance.readers")


def sniff_delimiter(text: str) -> str:
    """The delimiter of a CSV text, chosen among , ; tab and | from its first lines."""
    head = "\n".join(text.splitlines()[:20])
    try:
        return csv.Sniffer().sniff(head, delimiters=SNIFF_DELIMITERS).delimiter
    except csv.Error:
        header = text.split("\n", 1)[0]
        return max(SNIFF_DELIMITERS, key=header.count)


def _csv_records(
    text: str, delimiter: str, file_name: str, columns: Sequence[str] = (), first_line: int = 1
) -> Iterator[tuple[int, list[str]]]:
    """(start line, fields) of every CSV record, as Python's csv module reads them; lines from ``first_line``."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    line = first_line
    try:
        for record in reader:
            yield line, record
            line = first_line + reader.line_num
    except csv.Error as exc:
        problem = engine_problem(exc, columns)
        if "new-line character seen in unquoted field" in problem:
            problem = "a line break inside a field that is not quoted (fields with line breaks must be in quotes)"
        raise ExportRejected(file_name, f"cannot parse as CSV at line {line}: {problem}") from None


def read_csv_text(
    text: str, profile: ExportProfile, file_name: str, limits: ReadLimits | None = None, complete: bool = False
) -> pl.DataFrame:
    """All-string frame of a CSV text with the source line of each record.

    ``complete`` refuses a header without every mapped column, naming the header line and the columns found.
    """
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
    delimiter, skipped, how = header_line(text, profile)
    if skipped:
        # the lines above the header (a title, an export date, blanks) are layout: read from the header on
        cut = 0
        for _ in range(skipped):
            cut = text.find("\n", cut) + 1
            if cut == 0:
                raise ExportRejected(file_name, f"header_row is {skipped + 1} but the file has fewer lines")
        text = text[cut:]
        log.info("%s: header on line %d (%s)", file_name, skipped + 1, how)
    records = _csv_records(text, delimiter, file_name, list(profile.header_columns), first_line=skipped + 1)
    header = next(records, (1, []))[1]
    check_header(header, profile, file_name, lambda i: f"column {i + 1}")
    if complete:
        check_mapped(header, profile, file_name, f"line {skipped + 1}, {how}")
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
            f"{_csv_problem(records, header, exc, profile, (text, delimiter, skipped))}",
        ) from None
    if frame.height > limits.max_rows:
        raise too_many_rows(file_name, frame.height, limits)
    body_lines = text.rstrip("\r\n").count("\n")
    if body_lines == frame.height:
        lines = pl.int_range(skipped + 2, skipped + frame.height + 2, eager=True)
    else:
        starts = [line for line, _record in records]
        if len(starts) != frame.height:
            raise ExportRejected(
                file_name,
                f"cannot parse as CSV with delimiter {delimiter!r}: the records do not line up "
                f"({frame.height} read, {len(starts)} counted); check the quoting",
            )
        lines = pl.Series(starts)
    numbered = without_blank_rows(frame.with_columns(lines.cast(pl.Int64).alias(SOURCE_LINE)))
    return mark_footer_rows(numbered, profile.footer_rows)


def header_line(text: str, profile: ExportProfile) -> tuple[str, int, str]:
    """The delimiter, how many lines lie above the header, and how the header was found.

    With delimiter 'auto' each candidate is tried on the leading lines: a title line cannot mislead the sniffer.
    """
    auto = profile.delimiter == "auto"
    if profile.header_row is not None:
        skipped = profile.header_row - 1
        rest = text.split("\n", skipped)[-1] if skipped else text
        return (sniff_delimiter(rest) if auto else profile.delimiter), skipped, "header_row"
    head = "\n".join(text.split("\n", HEADER_SEARCH_ROWS)[:HEADER_SEARCH_ROWS])
    best: tuple[int, str, int] | None = None  # mapped names found, delimiter, header line
    for delimiter in SNIFF_DELIMITERS if auto else profile.delimiter:
        try:
            rows = list(_csv_records(head, delimiter, ""))
        except ExportRejected:
            continue
        choice = choose_header([fields for _line, fields in rows], profile)
        if choice.how == "first row":
            continue
        line, fields = rows[choice.index]
        found = len({normalise_column(c) for c in fields} & _mapped(profile))
        if best is None or found > best[0]:
            best = (found, delimiter, line)
    if best is None:
        return (sniff_delimiter(text) if auto else profile.delimiter), 0, "first row"
    return best[1], best[2] - 1, "detected"


def _mapped(profile: ExportProfile) -> set[str]:
    return {normalise_column(vendor) for vendor in profile.header_columns}


def _csv_problem(
    records: Iterator[tuple[int, list[str]]],
    header: list[str],
    exc: BaseException,
    profile: ExportProfile,
    source: tuple[str, str, int],
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
        return engine_problem(exc, list(profile.header_columns))
    number = int(unparsed.group("number"))
    name = header[number - 1] if 0 < number <= len(header) else None
    mapped = {normalise_column(vendor) for vendor in profile.header_columns}
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


def _bad_quoting_line(text: str, delimiter: str, skipped: int = 0) -> int | None:
    """The line where strict CSV quoting first breaks (Python's csv module, which Polars does not tell)."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, strict=True)
    try:
        for _record in reader:
            pass
    except csv.Error:
        return skipped + reader.line_num
    return None
