"""Conventions shared by every reader: all-string frames, each row numbered by its line in the file."""

from __future__ import annotations

import polars as pl

SOURCE_LINE = "source_line"
HIDDEN_ROW = "__hidden_row"  # true on XLSX rows hidden in the workbook (transforms.mapping reads it)


def engine_failure(exc: BaseException) -> bool:
    """True for errors of a parsing engine, including Rust panics (which are not Exceptions)."""
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


def without_blank_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows whose every field is empty are layout, not ratings: dropped after their lines are numbered."""
    fields = [i for i, c in enumerate(frame.columns) if c != SOURCE_LINE]
    if not fields:
        return frame
    # by position: a header such as '*' or '^.*$' would be a wildcard or a pattern to pl.col
    return frame.filter(~pl.all_horizontal(pl.nth(fields).str.strip_chars().replace("", None).is_null()))
