"""Great Expectations suites (one JSON file per instrument) and the one function that runs them."""

from expectations.suites import build_suite, suite_path, write_suites
from expectations.validate import validate_ratings

__all__ = ["build_suite", "suite_path", "validate_ratings", "write_suites"]
