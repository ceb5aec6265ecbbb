"""XLSX exports: one sheet read by fastexcel (calamine) after the workbook's safety scan."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from alliance.clinics import ExportProfile, normalise_column
from alliance.errors import ExportRejected
from alliance.readers.frames import HIDDEN_ROW, SOURCE_LINE, engine_failure, without_blank_rows
from alliance.readers.header import check_header, unique_names
from alliance.readers.limits import ReadLimits, too_many_rows
from alliance.readers.workbook import Inspection, column_letters, inspect_xlsx
from alliance.redaction import engine_problem


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
    inspection = inspect_xlsx(data, profile, file_name, limits)
    sheet = f" (sheet {profile.sheet!r})" if profile.sheet else ""
    try:
        reader = fastexcel.read_excel(data)
        chosen = profile.sheet or inspection.sheet_name or 0  # the sheet that was inspected
        loaded = reader.load_sheet(chosen, header_row=None, dtypes="string")
        absolute = [column.absolute_index for column in loaded.available_columns()]
        grid = pl.DataFrame(loaded.to_arrow())
    except BaseException as exc:  # fastexcel raises its own types for every kind of broken workbook
        if not engine_failure(exc):
            raise
        problem = engine_problem(exc, [*profile.columns, profile.sheet or ""])
        raise ExportRejected(file_name, f"cannot read as XLSX{sheet}: {problem}") from None
    grid = grid.select(pl.col(c).cast(pl.String) for c in grid.columns)
    header: list[str | None] = list(grid.row(0)) if grid.height else []
    check_header(header, profile, file_name, lambda i: f"column {column_letters(absolute[i] + 1)}")
    names = unique_names(header)
    _refuse_uncalculated(inspection, dict(zip(absolute, names, strict=True)), profile, file_name)
    frame = grid.slice(1).rename(dict(zip(grid.columns, names, strict=True)))
    if frame.height > limits.max_rows:
        raise too_many_rows(file_name, frame.height, limits)
    # the grid starts at the first row with a value: line numbers are sheet rows, as the clinic sees them
    first = inspection.scan.first_row or 1
    numbered = frame.with_columns(pl.int_range(first + 1, first + 1 + frame.height).cast(pl.Int64).alias(SOURCE_LINE))
    lines = without_blank_rows(numbered)
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
            f"{column_letters(col)}{row}{more}): {why}; open and save the workbook in a spreadsheet program, "
            "or export values (CSV)",
        )
