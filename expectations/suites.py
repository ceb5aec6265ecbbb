"""Suites derived from the instrument registry and kept as JSON files beside this module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alliance.instruments import Instrument, registry

SUITE_DIR = Path(__file__).parent
KEY_COLUMNS = ["client_ref", "therapist_id", "session_date", "session_number"]
# Dates and numbers are checked on their raw text: a value that failed to parse is not also "missing".
REQUIRED_COLUMNS = ["client_ref", "therapist_id", "session_date__raw", "session_number__raw"]
MAX_SESSION_NUMBER = 10_000


def _expect(kind: str, rule: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "meta": {"rule": rule}}


def build_suite(inst: Instrument) -> dict[str, Any]:
    """The row-level rules for one instrument, as a GX suite dictionary."""
    expectations = [
        _expect("expect_column_values_to_not_be_null", f"missing:{field}", column=column)
        for field, column in zip(KEY_COLUMNS, REQUIRED_COLUMNS, strict=True)
    ]
    expectations += [
        _expect("expect_column_values_to_not_be_null", f"missing:{field}", column=f"{field}__raw")
        for field in inst.item_fields
    ]
    expectations += [
        _expect("expect_column_values_to_not_be_null", "missing:total", column="total"),
        *(
            _expect(
                "expect_column_values_to_be_between",
                f"out_of_range:{field}",
                column=field,
                min_value=inst.item_min,
                max_value=inst.item_max,
            )
            for field in inst.item_fields
        ),
        _expect(
            "expect_column_values_to_be_between",
            "out_of_range:total",
            column="total",
            min_value=inst.total_min,
            max_value=inst.total_max,
        ),
        _expect(
            "expect_column_values_to_be_between",
            "total_mismatch:total",
            column="total_gap",
            min_value=0,
            max_value=0.5,
        ),
        _expect(
            "expect_column_values_to_be_between",
            "out_of_range:session_number",
            column="session_number",
            min_value=1,
            max_value=MAX_SESSION_NUMBER,
        ),
        _expect(
            "expect_column_values_to_be_between",
            "date_in_future:session_date",
            column="days_ahead",
            max_value=0,
        ),
        _expect(
            "expect_compound_columns_to_be_unique",
            "duplicate_in_file:session_number",
            column_list=KEY_COLUMNS,
        ),
    ]
    return {
        "name": f"ratings_{inst.code.lower()}",
        "expectations": expectations,
        "meta": {"instrument": inst.code, "generated_from": "alliance/instruments.toml"},
    }


def suite_path(code: str) -> Path:
    return SUITE_DIR / f"{code.lower()}.json"


def write_suites() -> list[Path]:
    """Regenerate every suite file from the registry; returns the files written."""
    written = []
    for inst in registry().values():
        path = suite_path(inst.code)
        path.write_text(json.dumps(build_suite(inst), indent=2) + "\n", encoding="utf-8")
        written.append(path)
    return written
