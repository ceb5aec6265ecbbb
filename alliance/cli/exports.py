"""Commands that set up a home and bring exports in: init, sample, ingest (and its dry run), status, demo."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from alliance.cli.common import (
    HomeOption,
    _cell,
    _environment,
    _exit_code,
    _print_queue,
    _print_scoring,
    _settings,
    app,
    console,
    domain_errors,
    err_console,
)
from alliance.errors import AllianceError, ConfigError
from alliance.redaction import plain_text
from alliance.settings import Settings


@app.command()
@domain_errors
def init(home: HomeOption = None) -> None:
    """Create a home folder with an example clinics.toml, inbox/, archive/ and a pseudonym key.

    Example: alliance init --home /srv/alliance
    """
    from alliance.clinics import load_clinics
    from alliance.home import ensure_inboxes, init_home

    settings = _environment(home)
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
    profile: Annotated[
        str, typer.Option(help="realistic: the noise of real SRS data; clean: long courses near the ceiling.")
    ] = "realistic",
    noise: Annotated[
        float, typer.Option(min=0.1, help="Scale of session-to-session spread (realistic; 1.0 = 1-2 points).")
    ] = 1.0,
    home: HomeOption = None,
) -> None:
    """Generate realistic exports (four vendor layouts) and add their clinics to clinics.toml.

    Example: alliance sample --clinics 8 --weeks 26 --seed 3 --noise 1.5
    """
    from alliance.home import init_home
    from alliance.samples import PROFILES, add_profiles, generate_sample

    if profile not in PROFILES:
        raise typer.BadParameter(f"choose one of {', '.join(PROFILES)}", param_hint="--profile")
    settings = _environment(home)
    init_home(settings)
    target = out or settings.inbox
    with console.status("generating sample exports…"):
        generated = generate_sample(
            target, clinics=clinics, weeks=weeks, seed=seed, dyads_per_clinic=dyads, profile=profile, noise=noise
        )
    add_profiles(settings.clinics_file, generated.profiles)
    for file in generated.files:
        console.print(f"wrote {file.path} ({file.layout}, {file.rows_expected} ratings)")
    console.print(f"added {len(generated.profiles)} clinic profile(s) to {settings.clinics_file}")


def _print_results(results: list[Any], settings: Settings, settled: Any = None) -> None:
    """The exports table, their problems, the run's totals and its scoring (``settled``: a batch's end)."""
    table = Table(title="Exports")
    table.add_column("file", overflow="fold")
    table.add_column("clinic")
    table.add_column("status")
    for column in ("rows", "new", "updated", "unchanged", "quarantined"):
        table.add_column(column, justify="right")
    for r in results:
        counts = (r.rows_total, r.rows_new, r.rows_updated, r.rows_unchanged, r.rows_quarantined)
        table.add_row(*map(_cell, (r.file_name, r.clinic_id, r.status, *counts)))
    console.print(table)
    for r in results:
        if r.error:
            console.print(plain_text(f"{r.file_name}: {r.status}: {r.error}"), markup=False)
        elif r.top_reasons:
            reasons = ", ".join(f"{rule} ×{n}" for rule, n in r.top_reasons)
            console.print(plain_text(f"{r.file_name}: top quarantine reasons: {reasons}"), markup=False)
    by_status: dict[str, int] = {}
    for r in results:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    totals = [sum(getattr(r, f"rows_{c}") for r in results) for c in ("total", "new", "updated", "quarantined")]
    console.print(
        f"{len(results)} file(s): " + ", ".join(f"{n} {status}" for status, n in sorted(by_status.items()))
        + "; rows: {} ({} new, {} updated, {} quarantined)".format(*totals),
        markup=False,
    )  # fmt: skip
    scored = [*(r.scoring for r in results if r.scoring is not None), *([settled] if settled else [])]
    if scored:
        from flows.scoring import scoring_totals

        _print_scoring(scoring_totals(scored))
    console.print(f"warehouse: {settings.warehouse.resolve()}", markup=False)


def _ingest_all(paths: list[Path], settings: Settings, clinic: str | None) -> tuple[list[Any], Any]:
    """Ingest each file; (what each did, the batch's settling scoring run or None for a single file).

    Several files are one batch: validated ahead in groups, each scored as it loads on the calibration as it
    stands, then the scores settled (reliable change re-estimated once if due) and the snapshots published once.
    """
    from datetime import UTC, datetime

    from alliance.errors import ExportGone, KeyMissing
    from alliance.storage import writer_lease
    from flows.batch import LoadBatch
    from flows.exports import Validator
    from flows.pipeline import ExportResult, ingest_file
    from flows.prevalidation import PREVALIDATE_BYTES, PREVALIDATE_FILES
    from flows.readahead import groups_of, read_ahead
    from flows.reviews import settle_scores

    results = []
    validate: Validator | None = None
    batch, started = len(paths) > 1, datetime.now(UTC)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    leased = writer_lease(settings.warehouse) if batch else contextlib.nullcontext()  # files share a session
    # GX once per instrument for each group of files; later groups read ahead on another core
    groups = groups_of(paths, PREVALIDATE_FILES, PREVALIDATE_BYTES) if batch else []
    progress = Progress(*columns, console=err_console, transient=True, disable=not sys.stderr.isatty())
    with leased, progress, read_ahead(groups, settings, clinic) as ahead:
        loads = LoadBatch(settings) if batch else None  # and their loads one transaction
        task = progress.add_task("ingesting", total=len(paths))
        for k, files in enumerate(groups or [paths]):
            if batch:  # the group's validation, found ahead
                validate = ahead.for_group(k)
            for path in files:
                progress.update(task, description=f"ingesting {path.name}")
                try:
                    results.append(
                        ingest_file(path, settings, clinic_id=clinic, publish=not batch, validate=validate, batch=loads)
                    )
                except ExportGone as gone:  # another run (watcher, nightly) took it first: not an error
                    results.append(ExportResult(path.name, clinic or path.parent.name, "taken", "", error=str(gone)))
                except (ConfigError, OSError) as problem:  # this file's problem (wrong folder, unreadable): go on
                    if len(paths) == 1 or isinstance(problem, KeyMissing):
                        raise
                    error = str(problem) if isinstance(problem, ConfigError) else f"{type(problem).__name__}"
                    results.append(ExportResult(path.name, clinic or path.parent.name, "failed", "", error=error))
                except Exception as exc:  # ingest_file rejects what it can; this is the net around the rest
                    if isinstance(exc, AllianceError):
                        raise
                    error = f"unexpected {type(exc).__name__}; the file was left in place"
                    results.append(ExportResult(path.name, clinic or path.parent.name, "failed", "", error=error))
                progress.advance(task)
        if loads is not None:
            progress.update(task, description="loading")
            try:
                loads.flush()
            except Exception as exc:  # the files it held are marked failed and stay in place
                if isinstance(exc, AllianceError):
                    raise
    if not batch:
        return results, None
    touched = [r.clinic_id for r in results if r.status not in ("unsettled", "taken", "failed")]
    return results, settle_scores(settings, touched, started)


@app.command()
@domain_errors
def ingest(
    paths: Annotated[list[Path] | None, typer.Argument(help="Export files; default: everything in the inbox.")] = None,
    clinic: Annotated[str | None, typer.Option(help="Clinic id, when a file is not in inbox/<clinic_id>/.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read, check and count; write nothing.")] = False,
    home: HomeOption = None,
) -> None:
    """Ingest export files: validate, load into the warehouse, quarantine bad rows, archive the file.

    Exit code 0: all loaded (or already there); 2: a file was rejected; 3: a file was quarantined whole.
    Example: alliance ingest ~/Downloads/northside_2026-11-24.csv --clinic northside
    """
    from flows.pipeline import inbox_files

    settings = _settings(home, clinic)
    files = list(paths) if paths else inbox_files(settings)
    if not files:
        console.print(f"nothing to ingest: {settings.inbox} is empty")
        return
    if dry_run:
        raise typer.Exit(max((_print_rehearsal(path, settings, clinic) for path in files), default=0))
    results, settled = _ingest_all(files, settings, clinic)
    _print_results(results, settings, settled)
    code = _exit_code(results)
    if code:
        raise typer.Exit(code)


def _print_rehearsal(path: Path, settings: Settings, clinic: str | None) -> int:
    """One file's dry run, printed; its exit code."""
    from flows.rehearsal import rehearse

    seen = rehearse(path, settings, clinic)
    console.print(f"{seen.file_name} (clinic {seen.clinic_id}): would be {seen.status}; nothing written", markup=False)
    if seen.error:
        console.print(f"  {plain_text(seen.error)}", markup=False)
        return seen.exit_code
    if seen.header:
        console.print(f"  header: {seen.header}", markup=False)
    console.print(f"  rows read {seen.rows_read}, would load {seen.would_load}, quarantined {seen.quarantined_rows}")
    for rule, count in list(seen.quarantined.items())[:5]:
        lines = ", ".join(map(str, seen.reason_lines[rule]))
        console.print(f"  {count} × {rule} (lines {lines}{', …' if count > len(seen.reason_lines[rule]) else ''})")
    if seen.preview is not None and seen.preview.height:
        table = Table("line", "instrument", "client (pseudonym)", "therapist", "date", "session", "total")
        for row in seen.preview.iter_rows():
            table.add_row(*(_cell(v) for v in row))
        console.print(table)
    return seen.exit_code


@app.command()
@domain_errors
def status(home: HomeOption = None) -> None:
    """Per clinic: exports received, ratings, dyads, quarantined rows and the last export.

    Example: alliance status
    """
    from alliance.storage import Warehouse

    settings = _settings(home)
    with Warehouse.of(settings).reader() as reader:
        summary = reader.clinic_status()
    if summary.is_empty():
        console.print(f"no exports ingested yet ({settings.warehouse})")
        return
    table = Table(title=f"Warehouse {settings.warehouse}")
    for column in summary.columns:
        table.add_column(column)
    for row in summary.iter_rows():
        table.add_row(*map(_cell, row))
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
    results, settled = _ingest_all(inbox_files(settings), settings, None)
    _print_results(results, settings, settled)
    _print_queue(settings)
