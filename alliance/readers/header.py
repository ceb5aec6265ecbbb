"""Header rows: mapped columns that appear twice, and frame column names for blank or repeated headers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from alliance.clinics import ExportProfile, normalise_column
from alliance.errors import ExportRejected


def check_header(
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
