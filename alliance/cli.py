"""The `alliance` command line: one thin layer over the library; domain errors become one 'Error:' line."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from alliance.errors import AllianceError
from alliance.settings import Settings, load_settings

app = typer.Typer(
    help="Alliance Watch: ingest clinic session-feedback exports and flag dyads at rupture risk.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(width=None if sys.stdout.isatty() else 160)  # piped output keeps whole table rows
err_console = Console(stderr=True)

HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="Home folder (default: $ALLIANCE_HOME or ./.alliance).", show_default=False),
]
F = TypeVar("F", bound=Callable[..., Any])


def domain_errors(command: F) -> F:
    """Turn an AllianceError into one clear line on stderr and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except AllianceError as exc:
            err_console.print(f"Error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _settings(home: Path | None) -> Settings:
    return load_settings(home)


@app.command()
@domain_errors
def init(home: HomeOption = None) -> None:
    """Create a home folder with an example clinics.toml, inbox/, archive/ and a pseudonym key.

    Example: alliance init --home /srv/alliance
    """
    from alliance.clinics import load_clinics
    from alliance.home import ensure_inboxes, init_home

    settings = _settings(home)
    created = init_home(settings)
    ensure_inboxes(settings, list(load_clinics(settings.clinics_file)))
    for path in created:
        console.print(f"created {path}")
    console.print(f"home ready at {settings.home.resolve()}; describe your clinics in {settings.clinics_file}")


@app.command()
@domain_errors
def sample(
    clinics: Annotated[int, typer.Option(min=1, help="Number of clinics.")] = 4,
    weeks: Annotated[int, typer.Option(min=4, help="Weeks of sessions.")] = 16,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same files.")] = 7,
    dyads: Annotated[int, typer.Option(min=1, help="Client-therapist dyads per clinic.")] = 30,
    out: Annotated[Path | None, typer.Option(help="Write here instead of the home's inbox.")] = None,
    home: HomeOption = None,
) -> None:
    """Generate realistic exports (four vendor layouts) and add their clinics to clinics.toml.

    Example: alliance sample --clinics 8 --weeks 26 --seed 3
    """
    from alliance.home import init_home
    from alliance.samples import add_profiles, generate_sample

    settings = _settings(home)
    init_home(settings)
    target = out or settings.inbox
    with console.status("generating sample exports…"):
        generated = generate_sample(target, clinics=clinics, weeks=weeks, seed=seed, dyads_per_clinic=dyads)
    add_profiles(settings.clinics_file, generated.profiles)
    for file in generated.files:
        console.print(f"wrote {file.path} ({file.layout}, {file.rows_expected} ratings)")
    console.print(f"added {len(generated.profiles)} clinic profile(s) to {settings.clinics_file}")


def _print_results(results: list[Any], settings: Settings) -> None:
    table = Table(title="Exports")
    table.add_column("file", overflow="fold")
    table.add_column("clinic")
    table.add_column("status")
    for column in ("rows", "new", "updated", "unchanged", "quarantined"):
        table.add_column(column, justify="right")
    for r in results:
        counts = (r.rows_total, r.rows_new, r.rows_updated, r.rows_unchanged, r.rows_quarantined)
        table.add_row(r.file_name, r.clinic_id, r.status, *map(str, counts))
    console.print(table)
    for r in results:
        if r.error:
            console.print(f"{r.file_name}: rejected: {r.error}", markup=False)
        elif r.top_reasons:
            reasons = ", ".join(f"{rule} ×{n}" for rule, n in r.top_reasons)
            console.print(f"{r.file_name}: top quarantine reasons: {reasons}", markup=False)
    console.print(f"warehouse: {settings.warehouse.resolve()}", markup=False)


def _ingest_all(paths: list[Path], settings: Settings, clinic: str | None) -> list[Any]:
    from flows.pipeline import ingest_file

    results = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("ingesting", total=len(paths))
        for path in paths:
            progress.update(task, description=f"ingesting {path.name}")
            results.append(ingest_file(path, settings, clinic_id=clinic))
            progress.advance(task)
    return results


@app.command()
@domain_errors
def ingest(
    paths: Annotated[list[Path] | None, typer.Argument(help="Export files; default: everything in the inbox.")] = None,
    clinic: Annotated[str | None, typer.Option(help="Clinic id, when a file is not in inbox/<clinic_id>/.")] = None,
    home: HomeOption = None,
) -> None:
    """Ingest export files: validate, load into the warehouse, quarantine bad rows, archive the file.

    Example: alliance ingest ~/Downloads/northside_2026-11-24.csv --clinic northside
    """
    from flows.pipeline import inbox_files

    settings = _settings(home)
    files = list(paths) if paths else inbox_files(settings)
    if not files:
        console.print(f"nothing to ingest: {settings.inbox} is empty")
        return
    results = _ingest_all(files, settings, clinic)
    _print_results(results, settings)
    if any(r.status == "rejected" for r in results):
        raise typer.Exit(2)


@app.command()
@domain_errors
def status(home: HomeOption = None) -> None:
    """Per clinic: exports received, ratings, dyads, quarantined rows and the last export.

    Example: alliance status
    """
    from alliance.storage import Warehouse

    settings = _settings(home)
    with Warehouse(settings.warehouse, settings.lock_timeout_s).reader() as reader:
        summary = reader.clinic_status()
    if summary.is_empty():
        console.print(f"no exports ingested yet ({settings.warehouse})")
        return
    table = Table(title=f"Warehouse {settings.warehouse}")
    for column in summary.columns:
        table.add_column(column)
    for row in summary.iter_rows():
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


@app.command()
@domain_errors
def demo(
    clinics: Annotated[int, typer.Option(min=1, help="Number of clinics.")] = 4,
    weeks: Annotated[int, typer.Option(min=4, help="Weeks of sessions.")] = 16,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    home: HomeOption = None,
) -> None:
    """Generate sample exports for several clinics and ingest them: the whole pipeline in one command.

    Example: alliance demo --home ./demo-home
    """
    from flows.pipeline import inbox_files

    sample(clinics=clinics, weeks=weeks, seed=seed, dyads=30, out=None, home=home)
    settings = _settings(home)
    results = _ingest_all(inbox_files(settings), settings, None)
    _print_results(results, settings)


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
