"""The `alliance` command line: one thin layer over the library; domain errors become one 'Error:' line."""

from __future__ import annotations

import functools
import os
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
    settings = _settings(home)
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
            console.print(f"{r.file_name}: {r.status}: {r.error}", markup=False)
        elif r.top_reasons:
            reasons = ", ".join(f"{rule} ×{n}" for rule, n in r.top_reasons)
            console.print(f"{r.file_name}: top quarantine reasons: {reasons}", markup=False)
    last = next((r.scoring for r in reversed(results) if r.scoring is not None), None)
    if last is not None:
        _print_scoring(last)
    console.print(f"warehouse: {settings.warehouse.resolve()}", markup=False)


def _ingest_all(paths: list[Path], settings: Settings, clinic: str | None) -> list[Any]:
    from alliance.errors import ExportGone
    from flows.pipeline import ExportResult, ingest_file

    results = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("ingesting", total=len(paths))
        for path in paths:
            progress.update(task, description=f"ingesting {path.name}")
            try:
                results.append(ingest_file(path, settings, clinic_id=clinic))
            except ExportGone as gone:  # another run (watcher, nightly) took it first: not an error
                results.append(ExportResult(path.name, clinic or path.parent.name, "taken", "", error=str(gone)))
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
    with Warehouse.of(settings).reader() as reader:
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
    _print_queue(settings)


FLAG_COLUMNS = ("flag_id", "clinic_id", "therapist_id", "dyad_id", "rule", "severity", "status", "risk_score", "reason")


def _neutralise(value: str) -> str:
    """Spreadsheet-safe cell: text starting with = + - @ tab or CR is prefixed with ' so it is not a formula."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _write_flags(frame: Any, fmt: str) -> None:
    import csv
    import json

    if fmt == "json":
        records = frame.with_columns(
            [frame[c].cast(str) for c in frame.columns if frame[c].dtype.is_temporal()]
        ).to_dicts()
        for record in records:
            record["evidence"] = json.loads(record["evidence"]) if record.get("evidence") else None
        sys.stdout.write(json.dumps(records, indent=2, default=str) + "\n")
    elif fmt == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(frame.columns)
        for row in frame.iter_rows():
            writer.writerow(["" if v is None else _neutralise(str(v)) if isinstance(v, str) else v for v in row])
    else:
        table = Table(title=f"{frame.height} flag(s)")
        for column in FLAG_COLUMNS:
            table.add_column(column, overflow="fold")
        for row in frame.select(FLAG_COLUMNS).iter_rows():
            table.add_row(*("" if v is None else str(v) for v in row))
        console.print(table)


@app.command()
@domain_errors
def flags(
    clinic: Annotated[str | None, typer.Option(help="Only this clinic's flags.")] = None,
    status: Annotated[
        str, typer.Option(help="open, acknowledged, resolved, auto_resolved, queue (the review queue) or all.")
    ] = "open",
    format: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    home: HomeOption = None,
) -> None:
    """List flags ranked by dyad risk, with the one-line reason a supervisor reads.

    Example: alliance flags --clinic northside --status queue --format json
    """
    from flows.reviews import list_flags

    if format not in ("table", "json", "csv"):
        raise typer.BadParameter("use table, json or csv", param_hint="--format")
    _write_flags(list_flags(_settings(home), clinic, status), format)


@app.command()
@domain_errors
def review(
    flag_id: Annotated[str, typer.Argument(help="The flag's id (see `alliance flags`).")],
    status: Annotated[str, typer.Option(help="acknowledged, resolved, or open to reopen.")],
    by: Annotated[str, typer.Option("--by", help="Who reviewed it.")],
    note: Annotated[str | None, typer.Option(help="What was decided or done.")] = None,
    home: HomeOption = None,
) -> None:
    """Acknowledge or resolve a flag; recorded with who, when and why in the reviews table.

    Example: alliance review 3f9a2c1b7d0e4a55 --status acknowledged --by "Dr Lee" --note "raised in supervision"
    """
    from flows.reviews import review_flag

    previous = review_flag(_settings(home), flag_id, status, by, note)
    console.print(f"flag {flag_id}: {previous} -> {status} (by {by})", markup=False)


@app.command()
@domain_errors
def rescore(
    recalibrate: Annotated[bool, typer.Option(help="Re-estimate reliable change from all data first.")] = False,
    home: HomeOption = None,
) -> None:
    """Re-score every dyad, e.g. after changing thresholds in clinics.toml; same flags as incremental scoring.

    Example: alliance rescore --recalibrate
    """
    from flows.reviews import rescore as rescore_all

    with console.status("re-scoring every dyad…"):
        result = rescore_all(_settings(home), recalibrate)
    _print_scoring(result)


def _print_scoring(result: Any) -> None:
    share = result.queue_dyads / result.active_dyads if result.active_dyads else 0.0
    console.print(
        f"scored {result.dyads_scored} dyads: {result.new} new, {result.worsened} worsened, "
        f"{result.reopened} reopened, {result.auto_resolved} auto-resolved flags; "
        f"review queue: {result.queue_dyads} of {result.active_dyads} open dyads ({share:.0%})"
        + (" [reliable change re-estimated]" if result.recalibrated else ""),
        markup=False,
    )
    options = getattr(result, "queue_options", None)
    if options is None or options.is_empty():
        return
    table = Table(title="Queue settings: what each would give (first row: current)")
    for column in ("setting", "queued", "share of open", "headline rules"):
        table.add_column(column, overflow="fold")
    for row in options.iter_rows(named=True):
        table.add_row(row["setting"], str(row["queued"]), f"{row['share_of_open']:.0%}", row["headlines"])
    console.print(table)


def _print_queue(settings: Settings, limit: int = 10) -> None:
    import polars as pl

    from flows.reviews import list_flags

    queue = list_flags(settings, status="queue")
    if queue.is_empty():
        console.print("review queue is empty")
        return
    # one line per dyad: its most severe flag (the list is ranked), and how many more it has
    per_dyad = queue.group_by("dyad_id", maintain_order=True).agg(pl.all().first(), pl.len().alias("flags"))
    table = Table(title=f"Review queue: top {min(limit, per_dyad.height)} of {per_dyad.height} dyads")
    for column in ("flag_id", "clinic", "therapist", "dyad", "risk", "severity", "reason"):
        table.add_column(column, overflow="fold")
    for row in per_dyad.head(limit).iter_rows(named=True):
        more = f" (+{row['flags'] - 1} more)" if row["flags"] > 1 else ""
        table.add_row(
            row["flag_id"], row["clinic_id"], row["therapist_id"], row["dyad_id"], f"{row['risk_score']:.0f}",
            row["severity"], row["reason"] + more,
        )  # fmt: skip
    console.print(table)


@app.command()
@domain_errors
def nightly(home: HomeOption = None) -> None:
    """Run the nightly job now, without Prefect: sweep inboxes, re-score, alert, publish snapshots.

    Example: alliance nightly --home /srv/alliance
    """
    from flows.nightly import run_nightly

    settings = _settings(home)
    with console.status("nightly run…"):
        report = run_nightly(settings)
    if report.exports:
        _print_results(report.exports, settings)
    if report.scoring:
        _print_scoring(report.scoring)
    if report.alerts:
        console.print(
            f"alerts: {report.alerts.sent} sent, {report.alerts.failed} failed (retried next run), "
            f"{report.alerts.trend_signals} trend signal(s)"
        )
    table = Table(title="Per clinic")
    for column in report.per_clinic.columns:
        table.add_column(column)
    for row in report.per_clinic.iter_rows():
        table.add_row(*map(str, row))
    console.print(table)
    for error in report.errors:
        err_console.print(f"Error: {error}", markup=False)
    if report.errors:
        raise typer.Exit(2)


@app.command()
@domain_errors
def serve(
    polling: Annotated[bool, typer.Option(help="Poll the inbox instead of OS events (network shares).")] = False,
    home: HomeOption = None,
) -> None:
    """Run everything on this machine until Ctrl-C: Prefect server, file-arrival and nightly deployments, watcher.

    Example: alliance serve --home /srv/alliance   (set PREFECT_API_URL to use an existing Prefect server)
    """
    import logging
    import signal

    from alliance.clinics import load_clinics
    from alliance.home import ensure_inboxes
    from flows.prefect_server import prefect_api

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for chatty in ("httpx", "apprise", "urllib3"):  # request lines and URLs (which may hold tokens) stay out
        logging.getLogger(chatty).setLevel(logging.WARNING)
    settings = _settings(home)
    ensure_inboxes(settings, list(load_clinics(settings.clinics_file)))

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM (systemd, timeout) stops as cleanly as Ctrl-C

    signal.signal(signal.SIGTERM, stop)
    if not os.environ.get("PREFECT_API_URL"):
        console.print("starting a local Prefect server (set PREFECT_API_URL to use an existing one)…")
    with prefect_api(settings) as api:
        from flows.serve import serve_everything  # imports Prefect: only now that its API is known

        console.print(f"Prefect API {api}; drop exports into {settings.inbox}/<clinic_id>/; Ctrl-C stops")
        serve_everything(settings, polling=polling)


@app.command()
@domain_errors
def verify(home: HomeOption = None) -> None:
    """Check the warehouse: ledger sums, orphan ratings, duplicate keys, snapshot checksums; exit 1 on any problem.

    Example: alliance verify --home /srv/alliance
    """
    from alliance.storage import Warehouse

    settings = _settings(home)
    if not settings.warehouse.exists():
        raise typer.BadParameter(f"{settings.warehouse}: no warehouse", param_hint="--home")
    warehouse = Warehouse.of(settings)
    with warehouse.writer() as writer:
        problems = writer.verify(warehouse.snapshots)
    for problem in problems:
        err_console.print(f"Error: {problem}", markup=False, highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(1)
    console.print(f"{settings.warehouse}: consistent (ledger, keys, references, snapshots)")


@app.command()
@domain_errors
def backup(
    to: Annotated[Path, typer.Option("--to", help="Folder to write the backup into.")],
    home: HomeOption = None,
) -> None:
    """Back up the warehouse, clinics.toml and the pseudonym key, with a manifest of checksums.

    Example: alliance backup --to /mnt/backups
    """
    from alliance.backup import backup as make_backup

    folder = make_backup(_settings(home), to)
    console.print(f"backup written to {folder} (it holds the pseudonym key: store it as safely)")


@app.command()
@domain_errors
def restore(
    folder: Annotated[Path, typer.Argument(help="A folder written by `alliance backup`.")],
    force: Annotated[bool, typer.Option(help="Replace an existing warehouse.")] = False,
    home: HomeOption = None,
) -> None:
    """Restore a backup into the home, checking every file and table checksum, then republish snapshots.

    Example: alliance restore /mnt/backups/alliance-backup-20261125T020000000000Z --force
    """
    from alliance.backup import restore as restore_backup
    from alliance.storage import Warehouse

    settings = _settings(home)
    tables = restore_backup(settings, folder, force=force)
    warehouse = Warehouse.of(settings)
    with warehouse.writer() as writer:
        writer.audit("alliance", "restore", folder.name, f"{sum(int(str(v[0])) for v in tables.values())} rows")
        writer.publish(warehouse.snapshots, None)
    console.print(f"restored {folder.name}: {len(tables)} tables match the backup's checksums")


@app.command()
@domain_errors
def rekey(
    new_key_file: Annotated[
        Path | None, typer.Option(help="File holding the new key (default: a new random key).")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Rotate the pseudonym key: every client pseudonym, dyad code and flag id is re-derived under the new key.

    Example: alliance rekey --home /srv/alliance
    """
    from flows.keys import rekey as rotate

    key = new_key_file.read_text(encoding="utf-8").strip().encode() if new_key_file else None
    count = rotate(_settings(home), key)
    console.print(
        f"re-pseudonymised {count} clients; the old key is kept as pseudonym.key.retired-*: destroy it once "
        "`alliance verify` passes and a backup under the new key exists"
    )


@app.command()
@domain_errors
def dashboard(
    clinic: Annotated[str | None, typer.Option(help="Only this clinic's data (its own snapshot).")] = None,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port on 127.0.0.1.")] = 8501,
    home: HomeOption = None,
) -> None:
    """Open the supervisor dashboard: review queue, dyads, trends, data health.

    Example: alliance dashboard --clinic northside --port 8501
    """
    from dashboards.launch import run

    raise typer.Exit(run(_settings(home).home, clinic, port))


@app.command()
@domain_errors
def bench(
    scenario: Annotated[str, typer.Option(help="backfill, night or scaling.")] = "night",
    scale: Annotated[float, typer.Option(min=0.0001, help="1.0 is the issue's full size (a national network).")] = 0.01,
    workdir: Annotated[Path | None, typer.Option(help="Where to generate data (default: a temporary folder).")] = None,
) -> None:
    """Benchmark the real pipeline against a plain read + append floor measured in the same run.

    Example: alliance bench --scenario night --scale 0.05
    """
    from benchmarks.bench import format_report, run

    console.print(format_report(run(scenario, scale, workdir)), markup=False, highlight=False, soft_wrap=True)


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
