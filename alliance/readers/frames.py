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


FOOTER_ROW = "__footer_row"  # true on summary and footer rows (transforms.mapping and the pipeline read it)
# A row whose first filled cell is a summary label ('Total', 'Mittelwert (n=12)', 'Summe: 41') or opens with
# a note of the export program ('Exported by …'); 'Total sessions cancelled' in a notes column is neither.
FOOTER_LABEL = (
    r"(?i)^\s*(?:(?:(?:grand\s+)?totals?|sum|summe|gesamt(?:summe)?|average|avg|mean|mittelwert|durchschnitt"
    r"|median|count|anzahl)\s*(?:[:=].*|\(.*\)|[0-9\s.,;/+-]*)"
    r"|(?:exported|exportiert|generated|erstellt|printed|gedruckt|created)\s+(?:by|von|on|am|at|with|mit)\b.*"
    r"|(?:export|report)\s+(?:date|datum)\b.*)$"
)


def mark_footer_rows(frame: pl.DataFrame, policy: str) -> pl.DataFrame:
    """Mark rows whose first filled cell is a summary label ('Total', 'Mittelwert', 'Exported by …').

    ``policy`` 'skip' drops them (the profile says so), any other keeps them marked for quarantine.
    """
    fields = [i for i, c in enumerate(frame.columns) if c not in (SOURCE_LINE, HIDDEN_ROW)]
    if not fields or frame.is_empty():
        return frame
    # the first column decides most rows; only rows where it is empty look further along (a cost per column)
    lead = frame.select(pl.nth(fields[0]).str.strip_chars().replace("", None)).to_series()
    footer = lead.str.contains(FOOTER_LABEL).fill_null(False)
    empty = lead.is_null()
    if empty.any() and len(fields) > 1:
        first = pl.coalesce(pl.nth(i).str.strip_chars().replace("", None) for i in fields[1:])
        rest = frame.filter(empty).select(first.str.contains(FOOTER_LABEL).fill_null(False)).to_series()
        footer = footer.scatter(empty.arg_true(), rest)
    marked = frame.with_columns(footer.alias(FOOTER_ROW))
    if not marked[FOOTER_ROW].any():
        return frame  # like hidden rows: the mark is there only when a row carries it
    if policy == "skip":
        return marked.filter(~pl.col(FOOTER_ROW)).drop(FOOTER_ROW)
    return marked
