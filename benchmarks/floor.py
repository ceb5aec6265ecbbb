"""The floor: the same files read with plain Polars and appended into a fresh DuckDB file, no checks, no scoring."""

from __future__ import annotations

import json
from pathlib import Path
from time import perf_counter

import duckdb
import polars as pl

from alliance.clinics import Clinic
from alliance.readers import json_records
from benchmarks.workload import TimedFile


def floor_frame(path: Path, clinic: Clinic) -> pl.DataFrame:
    """The file as plain Polars reads it: same delimiter, encoding, sheet and JSON flattening, no checks."""
    profile = clinic.export
    if profile.format == "xlsx":
        frame = pl.read_excel(path, sheet_name=profile.sheet, engine="calamine")
        return frame.select(pl.all().cast(pl.String))
    if profile.format == "json":
        return pl.from_dicts(json_records(json.loads(path.read_bytes()), profile.records), infer_schema_length=None)
    encoding = "windows-1252" if profile.encoding == "cp1252" else "utf8"
    return pl.read_csv(path, separator=profile.delimiter, encoding=encoding, infer_schema=False)


def run_floor(files: list[TimedFile], clinics: dict[str, Clinic], database: Path) -> tuple[float, int]:
    """(seconds, rows) to read every file and append it to a fresh DuckDB table per layout."""
    database.unlink(missing_ok=True)
    con = duckdb.connect(str(database))
    columns: dict[str, set[str]] = {}
    rows = 0
    start = perf_counter()
    try:
        for f in files:
            clinic = clinics[f.clinic_id]
            frame = floor_frame(f.source, clinic)
            rows += frame.height
            table = f"floor_{clinic.export.format}_{len(clinic.export.columns)}"
            if table not in columns:
                con.execute(f"CREATE TABLE {table} AS SELECT * FROM frame")
                columns[table] = set(frame.columns)
            else:
                for extra in sorted(set(frame.columns) - columns[table]):
                    con.execute(f'ALTER TABLE {table} ADD COLUMN "{extra}" VARCHAR')
                    columns[table].add(extra)
                con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM frame")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return perf_counter() - start, rows
