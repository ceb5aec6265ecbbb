"""XLSX exports: one sheet read by fastexcel (calamine) after the workbook's safety scan."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from alliance.clinics import ExportProfile, normalise_column
from alliance.errors import ExportRejected
from alliance.readers.frames import HIDDEN_ROW, SOURCE_LINE, engine_failure, mark_footer_rows, without_blank_rows
from alliance.readers.header import HEADER_SEARCH_ROWS, check_header, check_mapped, choose_header, unique_names
from alliance.readers.limits import ReadLimits, too_many_rows
from alliance.readers.workbook import Inspection, column_letters, inspect_xlsx, sheet_list
from alliance.redaction import engine_problem


def read_xlsx(path: Path, profile: ExportProfile, limits: ReadLimits | None = None) -> pl.DataFrame:
    """All-string frame of one sheet of an XLSX workbook (fastexcel), header found as the profile says."""
    return read_xlsx_bytes(path.read_bytes(), profile, path.name, limits)


def read_xlsx_bytes(
    data: bytes, profile: ExportProfile, file_name: str, limits: ReadLimits | None = None, complete: bool = False
) -> pl.DataFrame:
    """All-string frame of one sheet of an XLSX workbook given as bytes; checked as a zip first.

    ``complete`` refuses a header without every mapped column, naming the sheet, its row and the workbook's sheets.
    When the sheet hides rows, a boolean ``__hidden_row`` column marks them (the rows are kept).
    """
    import fastexcel

    limits = limits or ReadLimits()
    inspection = inspect_xlsx(data, profile, file_name, limits)
    chosen = inspection.sheet_name or profile.sheet or 0  # the sheet that was inspected
    sheet = f" (sheet {chosen!r})" if isinstance(chosen, str) else ""
    try:
        reader = fastexcel.read_excel(data)
        loaded = reader.load_sheet(chosen, header_row=None, dtypes="string")
        absolute = [column.absolute_index for column in loaded.available_columns()]
        grid = pl.DataFrame(loaded.to_arrow())
    except BaseException as exc:  # fastexcel raises its own types for every kind of broken workbook
        if not engine_failure(exc):
            raise
        problem = engine_problem(exc, [*profile.header_columns, *inspection.sheet_names])
        raise ExportRejected(file_name, f"cannot read as XLSX{sheet}: {problem}") from None
    grid = grid.select(pl.col(c).cast(pl.String) for c in grid.columns)
    # the grid starts at the first row with a value: line numbers are sheet rows, as the clinic sees them
    first = inspection.scan.first_row or 1
    choice = choose_header(grid.head(HEADER_SEARCH_ROWS).rows(), profile, first)
    where = f"sheet {chosen!r} row {first + choice.index}, {choice.how}" if sheet else f"row {first + choice.index}"
    sheets = f"; the workbook's sheets: {sheet_list(inspection.sheet_names)}"
    if not 0 <= choice.index < max(grid.height, 1):
        raise ExportRejected(
            file_name,
            f"header_row is {profile.header_row} but the sheet{sheet} has its first value in row {first}{sheets}",
        )
    header: list[str | None] = list(grid.row(choice.index)) if grid.height else []
    check_header(header, profile, file_name, lambda i: f"column {column_letters(absolute[i] + 1)}")
    if complete:
        check_mapped(header, profile, file_name, where, sheets)
    names = unique_names(header)
    _refuse_uncalculated(inspection, dict(zip(absolute, names, strict=True)), profile, file_name)
    frame = grid.slice(choice.index + 1).rename(dict(zip(grid.columns, names, strict=True)))
    if frame.height > limits.max_rows:
        raise too_many_rows(file_name, frame.height, limits)
    top = first + choice.index + 1
    numbered = frame.with_columns(pl.int_range(top, top + frame.height).cast(pl.Int64).alias(SOURCE_LINE))
    lines = mark_footer_rows(without_blank_rows(numbered), profile.footer_rows)
    if not inspection.scan.hidden_rows:
        return lines
    # marked, not dropped: the mapping quarantines them (or loads them, as the profile says)
    hidden = pl.Series(sorted(inspection.scan.hidden_rows), dtype=pl.Int64)
    return lines.with_columns(pl.col(SOURCE_LINE).is_in(hidden.implode()).alias(HIDDEN_ROW))


def _refuse_uncalculated(
    inspection: Inspection, name_of: dict[int, str], profile: ExportProfile, file_name: str
) -> None:
    """A formula whose stored result was never calculated must not become a score: refuse such mapped cells.

    calamine returns a formula's stored (cached) result. A workbook saved by a spreadsheet program has real
    results, and they are the values used. One written by a library flags itself 'fullCalcOnLoad' and its
    stored results are placeholders (xlsxwriter stores 0 unless told a value, openpyxl stores nothing).
    """
    mapped = {normalise_column(vendor) for vendor in profile.header_columns}
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
            f"{column_letters(col)}{row}{more}): {why}; open and save the workbook in a spreadsheet program, "
            "or export values (CSV)",
        )
