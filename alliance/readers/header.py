"""Header rows: mapped columns that appear twice, and frame column names for blank or repeated headers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from alliance.clinics import ExportProfile, normalise_column
from alliance.errors import ExportRejected
from alliance.vocabulary import field_named


def check_header(
    names: Sequence[str | None], profile: ExportProfile, file_name: str, label: Callable[[int], str]
) -> None:
    """Refuse a header where a mapped vendor column appears more than once: which one to load is ambiguous."""
    mapped = {normalise_column(vendor): vendor for vendor in profile.header_columns}
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
                f"mapped to {profile.header_columns[vendor]}: the mapping is ambiguous; remove or rename the duplicate",
            )


def unique_names(header: Sequence[str | None]) -> list[str]:
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


HEADER_SEARCH_ROWS = 50  # a report title, export date and blank lines take a few rows, never dozens


@dataclass(frozen=True)
class HeaderChoice:
    """Which row of the file holds the header (0-based among the rows read) and how that was decided."""

    index: int
    how: str  # 'header_row', 'detected' or 'first row' (no row holds a mapped column name)


def choose_header(rows: Sequence[Sequence[str | None]], profile: ExportProfile, first: int = 1) -> HeaderChoice:
    """The profile's header_row, else the first of the leading rows holding the most mapped column names.

    ``first`` is the line or sheet row number of ``rows[0]``, so header_row counts as the clinic sees the file.
    """
    if profile.header_row is not None:
        return HeaderChoice(profile.header_row - first, "header_row")
    mapped = {normalise_column(vendor) for vendor in profile.header_columns}
    counts = [len({normalise_column(c) for c in row if c is not None} & mapped) for row in rows[:HEADER_SEARCH_ROWS]]
    best = max(counts, default=0)
    if best == 0:
        return HeaderChoice(0, "first row")
    return HeaderChoice(counts.index(best), "detected")


def check_mapped(
    names: Sequence[str | None], profile: ExportProfile, file_name: str, where: str, more: str = ""
) -> None:
    """Refuse a header without every mapped column; the header found is shown when it is one (names only).

    A row holding none of the mapped names may be a data row (a file without a header): it is not echoed.
    """
    present = {normalise_column(n) for n in names if n is not None}
    missing = [
        f"{vendor!r} (-> {field})"
        for vendor, field in profile.header_columns.items()
        if normalise_column(vendor) not in present
    ]
    if not missing:
        return
    found = [n for n in names if n is not None]
    if len(missing) == len(profile.header_columns):
        shown = (
            f"no row among the first {HEADER_SEARCH_ROWS} holds a mapped column name; check the clinic's "
            "[export.columns] and header_row"
        )
    else:
        shown = f"the header found ({where}) has {_known_names(found, profile)}; check the clinic's [export.columns]"
    raise ExportRejected(
        file_name,
        f"missing required column(s) {', '.join(missing)} among the file's {len(found)} columns; {shown}{more}",
    )


def _known_names(found: Sequence[str], profile: ExportProfile) -> str:
    """The header's mapped names and the names of our fields it uses; any other cell is only counted.

    A header cell can hold client data (a name typed into it), and this message reaches the ledger.
    """
    mapped = {normalise_column(vendor) for vendor in profile.header_columns}
    shown: list[str] = []
    others = 0
    for name in found:
        field = field_named(name)
        if normalise_column(name) in mapped:
            shown.append(repr(name))
        elif field is not None:
            shown.append(f"{name!r} (looks like {field})")
        else:
            others += 1
    if others:
        shown.append(
            f"{others} other column(s) not named here (a header cell may hold client data; "
            "`alliance profile draft FILE` lists them)"
        )
    return ", ".join(shown)
