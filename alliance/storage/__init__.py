"""The warehouse: the only package that imports duckdb, knows the file, the writer lock and the tables."""

from alliance.storage.checksums import CHECKSUM_TABLES, VOLATILE_COLUMNS, table_checksums
from alliance.storage.lease import writer_lease
from alliance.storage.ledger import LEDGER_COUNTS, ExportLoad, Ledger, LoadCounts
from alliance.storage.schema import (
    CURRENT_FLAG,
    CURRENT_FLAG_ID,
    DYAD_KEY,
    MIGRATIONS,
    RATING_KEY,
    REVIEW_STATUSES,
    SCHEMA,
    SCHEMA_VERSION,
    UNDATED_CHANGE,
    VIEWS_FILE,
)
from alliance.storage.session import free_mb, is_storage_failure
from alliance.storage.snapshots import NETWORK_REDACTED, SNAPSHOT_TABLES, SNAPSHOT_VERSION
from alliance.storage.warehouse import Reader, Warehouse, Writer

__all__ = [
    "CHECKSUM_TABLES",
    "CURRENT_FLAG",
    "CURRENT_FLAG_ID",
    "DYAD_KEY",
    "LEDGER_COUNTS",
    "MIGRATIONS",
    "NETWORK_REDACTED",
    "RATING_KEY",
    "REVIEW_STATUSES",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SNAPSHOT_TABLES",
    "SNAPSHOT_VERSION",
    "UNDATED_CHANGE",
    "VIEWS_FILE",
    "VOLATILE_COLUMNS",
    "ExportLoad",
    "Ledger",
    "LoadCounts",
    "Reader",
    "Warehouse",
    "Writer",
    "free_mb",
    "is_storage_failure",
    "table_checksums",
    "writer_lease",
]
