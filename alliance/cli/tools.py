"""Commands for looking and tuning: dashboard, sql, bench, evaluate, expectations, profile draft."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from alliance.cli.common import (
    HomeOption,
    _settings,
    app,
    console,
    domain_errors,
    err_console,
)
from alliance.errors import ConfigError


@app.command()
@domain_errors
def dashboard(
    clinic: Annotated[str | None, typer.Option(help="Only this clinic's data (its own snapshot).")] = None,
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="Port (on ALLIANCE_DASHBOARD_ADDRESS, 127.0.0.1).")
    ] = 8501,
    home: HomeOption = None,
) -> None:
    """Open the supervisor dashboard: review queue, dyads, trends, data health.

    Example: alliance dashboard --clinic northside --port 8501
    """
    from dashboards.launch import run

    settings = _settings(home, clinic)
    raise typer.Exit(run(settings.home, clinic, port, settings))


def _duckdb_shell() -> str:
    """The DuckDB 1.5 CLI installed beside this Python (the duckdb-cli package), else one on PATH."""
    import shutil

    found = shutil.which("duckdb", path=str(Path(sys.executable).parent)) or shutil.which("duckdb")
    if found is None:
        raise ConfigError("the DuckDB CLI is not installed: pip install 'duckdb-cli>=1.5.6,<1.6'")
    return found


@app.command()
@domain_errors
def sql(
    query: Annotated[str | None, typer.Argument(help="SQL to run; without it, an interactive DuckDB shell.")] = None,
    clinic: Annotated[
        str | None, typer.Option(help="Open this clinic's own snapshot (with its client references).")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Open the published snapshot read-only in the DuckDB shell: the network's, or one clinic's with --clinic.

    Example: alliance sql --clinic northside "SELECT dyad_id, risk_score, reason FROM review_queue LIMIT 5"
    """
    import subprocess

    from alliance.storage import Warehouse

    snapshot = Warehouse.of(_settings(home, clinic)).snapshot_path(clinic)
    if not snapshot.exists():
        raise ConfigError(f"{snapshot}: no snapshot yet; snapshots are published after the first ingest")
    command = [_duckdb_shell(), "-readonly", str(snapshot)]
    if query is None:
        err_console.print(f"{snapshot} (read-only; .tables lists the tables and views, .quit leaves)", markup=False)
    raise typer.Exit(subprocess.run([*command, *(["-c", query] if query else [])], check=False).returncode)


@app.command()
@domain_errors
def bench(
    scenario: Annotated[
        str, typer.Option(help="backfill, night, history, latency, peer, or all (scaling = history).")
    ] = "night",
    scale: Annotated[float, typer.Option(min=0.0001, help="1.0 is the issue's full size (a national network).")] = 0.01,
    workdir: Annotated[Path | None, typer.Option(help="Where to generate data (default: a temporary folder).")] = None,
    profile: Annotated[bool, typer.Option("--profile", help="cProfile the timed runs (needs --workdir).")] = False,
    json_file: Annotated[Path | None, typer.Option("--json", help="Also write the report(s) as JSON here.")] = None,
    alert_delay_ms: Annotated[
        float, typer.Option(min=0.0, help="The alert receiver answers each message this late, as a remote channel.")
    ] = 0.0,
) -> None:
    """Benchmark the real pipeline against the issue's targets: each scenario prints its target, figure, ratio
    and verdict (floor, peer and Prefect comparisons are measured in the same run).

    Example: alliance bench --scenario night --scale 0.05
    """
    from benchmarks.bench import main as bench_main

    if profile and workdir is None:
        raise ConfigError("--profile needs --workdir to keep the profile files")
    argv = ["--scenario", scenario, "--scale", str(scale), *(["--profile"] if profile else [])]
    argv += [*(["--workdir", str(workdir)] if workdir else []), *(["--json", str(json_file)] if json_file else [])]
    argv += ["--alert-delay-ms", str(alert_delay_ms)] if alert_delay_ms else []
    try:
        bench_main(argv)
    except ValueError as bad:
        raise ConfigError(str(bad)) from None


@app.command()
def evaluate(
    dyads: Annotated[int, typer.Option(min=50, help="Dyads in the generated network.")] = 2000,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same figures.")] = 3,
    noise: Annotated[float, typer.Option(min=0.1, help="Scale of session-to-session spread (1.0 = 1-2 points).")] = 1.0,
) -> None:
    """Measure detection on realistic generated data, loaded week by week through the scoring rules.

    Example: alliance evaluate --dyads 2000 --seed 3
    """
    from benchmarks.detection import evaluate as run_evaluation
    from benchmarks.detection import format_evaluation

    with console.status("scoring a generated network week by week…"):
        report = run_evaluation(dyads, seed, noise)
    console.print(format_evaluation(report), markup=False, highlight=False, soft_wrap=True)


@app.command()
@domain_errors
def expectations(
    write: Annotated[bool, typer.Option("--write", help="Regenerate the suite files from the registry.")] = False,
    home: HomeOption = None,
) -> None:
    """Show (or regenerate with --write) the Great Expectations suites built from the instrument registry.

    Example: alliance expectations --write
    """
    from alliance.instruments import registry
    from expectations import suite_path, write_suites

    if write:
        for path in write_suites():
            console.print(f"wrote {path}")
        return
    for code, inst in registry().items():
        path = suite_path(code)
        state = "present" if path.exists() else "MISSING (run with --write)"
        console.print(f"{code:8} {inst.name}: {path.name} {state}")


profile_app = typer.Typer(help="Clinic profiles: draft one from an export file.", no_args_is_help=True)
app.add_typer(profile_app, name="profile")


@profile_app.command("draft")
@domain_errors
def profile_draft(
    file: Annotated[Path, typer.Argument(help="One export file (CSV or XLSX) as the vendor writes it.")],
    clinic: Annotated[str, typer.Option(help="Clinic id for the [clinics.<id>] table.")] = "new_clinic",
    write: Annotated[bool, typer.Option("--write", help="Append the draft to the home's clinics.toml.")] = False,
    home: HomeOption = None,
) -> None:
    """Print a commented clinic profile drafted from one export; never prints a client value.

    Example: alliance profile draft ~/Downloads/rheinpark_export.csv --clinic rheinpark
    """
    from alliance.clinics import parse_clinics
    from alliance.drafting import draft_profile, render

    if not file.is_file():
        raise ConfigError(f"{file}: no such file")
    text = render(draft_profile(file, clinic))
    console.print(text, markup=False, highlight=False, soft_wrap=True, end="")
    if write:
        settings = _settings(home)
        existing = settings.clinics_file.read_text(encoding="utf-8") if settings.clinics_file.exists() else ""
        if clinic in parse_clinics(existing):
            raise ConfigError(f"clinic {clinic!r} is already in {settings.clinics_file}; nothing written")
        parse_clinics(existing + "\n" + text)  # the draft must load before it is written
        with settings.clinics_file.open("a", encoding="utf-8") as handle:
            handle.write("\n" + text)
        err_console.print(f"appended [clinics.{clinic}] to {settings.clinics_file}")
