"""Benchmark of the real pipeline against the issue's targets, each scenario judged in the same run.

Scenarios (scale 1.0 is the issue's full size; rows are session rows, i.e. file lines or JSON records):
  backfill  100 clinics x 5 years (260 weeks), ~7M rows, into an empty warehouse as `alliance ingest FILE...`
            loads them, against a plain Polars read + DuckDB append floor: >= 1/3 of the floor, < 4 GB
  night     1,000 clinics x 5 files (~200k rows; 5% of clinics send one full cumulative re-export) on top of a
            7M-row history: `run_nightly` (as `alliance nightly`) < 3 min and < 4 GB; then the same night on a
            copy of the same home through the Prefect nightly flow: <= 15% slower than the plain function
  history   the same night over histories of 1M, 7M and 20M rows: flat within +-20%
  latency   file landing -> alert delivered under `alliance serve` at a 10M-rating history: < 15 s
  peer      a hand-written pandas + GX + DuckDB script (benchmarks/peer.py) and `alliance ingest` on the same
            exports: at least as fast, aiming at 3x
  all       every scenario above, in turn
Scale K multiplies the rows (backfill and peer: clinics x dyads; night, history and latency: clinics and
history rows, so each clinic keeps its real shape).

The timed workload runs in a fresh child process that calls the real functions (benchmarks/child.py). Stage
timers are wrappers patched onto the module attributes those functions look up (benchmarks/clock.py), each
charging its exclusive time. Peak memory is the child's own high-water RSS (VmHWM). Workloads come from the one
seeded generator (benchmarks/workload.py); reports and verdicts are benchmarks/report.py.

Example: ``python -m benchmarks.bench --scenario night --scale 0.01``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from benchmarks.child import child_main
from benchmarks.report import BenchReport, format_report, targets
from benchmarks.scenarios import ALIASES, SCENARIOS, run, run_many

__all__ = ["BenchReport", "format_report", "main", "run", "run_many", "targets"]


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.bench [--scenario NAME] [--scale K] [--workdir DIR] [--json FILE] [--profile]``."""
    parser = argparse.ArgumentParser(
        prog="bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=[*SCENARIOS, *ALIASES], default="night")
    parser.add_argument("--scale", type=float, default=0.01, help="1.0 = the issue's full size (default 0.01)")
    parser.add_argument("--workdir", type=Path, help="keep generated files, homes and logs here")
    parser.add_argument("--json", type=Path, help="also write the report(s) as JSON")
    parser.add_argument("--profile", action="store_true", help="cProfile the timed run (slower; keeps profile_*.txt)")
    parser.add_argument(
        "--alert-delay-ms",
        type=float,
        default=0.0,
        help="the alert receiver answers each message this late (a remote channel)",
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child)
        return 0
    if args.profile and args.workdir is None:
        parser.error("--profile needs --workdir to keep the profile files")
    reports = run_many([args.scenario], args.scale, args.workdir, args.profile, args.alert_delay_ms / 1000)
    print("\n".join(format_report(r) for r in reports))
    sys.stdout.flush()
    if args.json:
        data = [json.loads(r.to_json()) for r in reports]
        args.json.write_text(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
