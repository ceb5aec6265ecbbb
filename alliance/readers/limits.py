"""Safety caps applied while reading an export: row counts and how far a workbook may expand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from alliance.errors import ExportRejected

if TYPE_CHECKING:
    from alliance.settings import Settings

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


def too_many_rows(file_name: str, count: int, limits: ReadLimits, unit: str = "rows") -> ExportRejected:
    return ExportRejected(
        file_name, f"the file has {count:,} {unit}, over the limit of {limits.max_rows:,} (ALLIANCE_MAX_ROWS)"
    )


def check_expansion(expanded: int, size: int, file_name: str, limits: ReadLimits) -> None:
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
