"""The benchmark runs end to end at a tiny scale and reports a floor and a ratio (numbers are not asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow
def test_night_benchmark_smoke(tmp_path: Path) -> None:
    from benchmarks.bench import format_report, run

    report = format_report(run("night", 0.004, tmp_path))
    assert "floor" in report and "ratio" in report
