"""Great Expectations suites (one JSON file per instrument) and the one function that runs them."""

from expectations.suites import build_suite, suite_path, write_suites
from expectations.validate import Prevalidated, validate_exports, validate_ratings, warm_up

__all__ = [
    "Prevalidated",
    "build_suite",
    "suite_path",
    "validate_exports",
    "validate_ratings",
    "warm_up",
    "write_suites",
]
