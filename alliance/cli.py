"""The `alliance` command line: one thin layer over the library; domain errors become one 'Error:' line."""

from __future__ import annotations

import contextlib
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
from rich.text import Text

from alliance.errors import AllianceError, ConfigError
from alliance.redaction import plain_text
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

# Exit codes (README "Commands"): a cron wrapper can tell a clean run from one that needs a person.
EXIT_ERROR = 1  # one `Error:` line: nothing was done, or the run stopped
EXIT_REJECTED = 2  # at least one file was rejected (or failed): see archive/<clinic>/rejected/
EXIT_QUARANTINED = 3  # no file rejected, but at least one quarantined whole: review, then `alliance release`


def domain_errors(command: F) -> F:
    """Turn an AllianceError into one clear line on stderr and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except AllianceError as exc:
            err_console.print(f"Error: {plain_text(str(exc))}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _cell(value: object) -> Text:
    """A table cell shown as typed: no markup, no control characters, no chat mentions."""
    return Text("" if value is None else plain_text(str(value)))


def _settings(home: Path | None, clinic: str | None = None) -> Settings:
    """The settings of an existing home, checked before any work: a bad ALLIANCE_* value, a wrong --home, a broken
    clinics.toml or an unknown --clinic fails here with one Error: line instead of an empty result (or a new,
    empty warehouse)."""
    from alliance.clinics import load_clinics

    settings = _environment(home)
    clinics = load_clinics(settings.clinics_file)
    if clinic is not None and clinic not in clinics:
        known = ", ".join(sorted(clinics)) or "none yet"
        raise ConfigError(f"unknown clinic {clinic!r}: {settings.clinics_file} has {known}")
    return settings


def _environment(home: Path | None) -> Settings:
    """Settings from the environment, for any home (also one about to be created); owner-only file creation."""
    from pydantic import ValidationError

    from alliance.permissions import private_umask

    private_umask()  # whatever a command creates (Prefect's database, backups, the home) is owner-only
    try:
        return load_settings(home)
    except ValidationError as exc:
        problems = "; ".join(
            f"ALLIANCE_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg'].lower()}" for e in exc.errors()
        )
        raise ConfigError(f"bad setting in the environment: {problems}; fix or unset it") from None


def _exit_code(results: list[Any], errors: int = 0) -> int:
    """EXIT_REJECTED when a file was rejected or failed, else EXIT_QUARANTINED when one was quarantined whole."""
    if errors or any(r.status in ("rejected", "failed") for r in results):
        return EXIT_REJECTED
    return EXIT_QUARANTINED if any(r.status == "quarantined" for r in results) else 0


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
    from flows.exports import PREVALIDATE_FILES, Validator, prevalidate
    from flows.pipeline import ExportResult, ingest_file
    from flows.reviews import settle_scores

    results = []
    validate: Validator | None = None
    batch, started = len(paths) > 1, datetime.now(UTC)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    leased = writer_lease(settings.warehouse) if batch else contextlib.nullcontext()  # files share a session
    with leased, Progress(*columns, console=err_console, transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("ingesting", total=len(paths))
        for index, path in enumerate(paths):
            if len(paths) > 1 and index % PREVALIDATE_FILES == 0:  # GX once per instrument for the next files
                validate = prevalidate(paths[index : index + PREVALIDATE_FILES], settings, clinic)
            progress.update(task, description=f"ingesting {path.name}")
            try:
                results.append(
                    ingest_file(path, settings, clinic_id=clinic, publish=not batch, validate=validate, in_batch=batch)
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


FLAG_COLUMNS = ("flag_id", "clinic_id", "therapist_id", "dyad_id", "rule", "severity", "status", "risk_score", "reason")


def _neutralise(value: str) -> str:
    """Spreadsheet-safe cell: text starting with = + - @ tab or CR is prefixed with ' so it is not a formula."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _csv_cell(value: Any) -> Any:
    """A CSV cell: lists joined with '; ', text plain and neutralised so a spreadsheet never runs it as a formula."""
    if value is None:
        return ""
    if isinstance(value, list):
        value = "; ".join(map(str, value))
    return _neutralise(plain_text(value)) if isinstance(value, str) else value


def _write_frame(frame: Any, fmt: str) -> None:
    """A listing as JSON (a list of objects; dates as ISO text, evidence as JSON) or spreadsheet-safe CSV."""
    import csv
    import json

    if fmt == "json":
        records = frame.with_columns(
            [frame[c].cast(str) for c in frame.columns if frame[c].dtype.is_temporal()]
        ).to_dicts()
        for record in records:
            if "evidence" in record:
                record["evidence"] = json.loads(record["evidence"]) if record["evidence"] else None
        sys.stdout.write(json.dumps(records, indent=2, default=str) + "\n")
    else:
        writer = csv.writer(sys.stdout)
        writer.writerow(frame.columns)
        for row in frame.iter_rows():
            writer.writerow([_csv_cell(v) for v in row])


def _write_flags(frame: Any, fmt: str) -> None:
    if fmt != "table":
        _write_frame(frame, fmt)
        return
    table = Table(title=f"{frame.height} flag(s)")
    for column in FLAG_COLUMNS:
        table.add_column(column, overflow="fold")
    for row in frame.select(FLAG_COLUMNS).iter_rows():
        table.add_row(*map(_cell, row))
    console.print(table)


@app.command()
@domain_errors
def flags(
    clinic: Annotated[str | None, typer.Option(help="Only this clinic's flags.")] = None,
    status: Annotated[
        str,
        typer.Option(help="queue (the flags behind open cases), open, acknowledged, resolved, auto_resolved or all."),
    ] = "queue",
    format: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    home: HomeOption = None,
) -> None:
    """List flags ranked by dyad risk, with the one-line reason a supervisor reads.

    Example: alliance flags --clinic northside --status queue --format json
    """
    from flows.reviews import list_flags

    if format not in ("table", "json", "csv"):
        raise typer.BadParameter("use table, json or csv", param_hint="--format")
    _write_flags(list_flags(_settings(home, clinic), clinic, status), format)


CASE_COLUMNS = (
    "case_id", "clinic_id", "therapist_id", "dyad_id", "status", "severity", "risk_score", "change", "headline_reason",
)  # fmt: skip


@app.command()
@domain_errors
def queue(
    clinic: Annotated[str | None, typer.Option(help="Only this clinic's cases.")] = None,
    status: Annotated[
        str, typer.Option(help="queue (open and acknowledged), open, acknowledged, resolved, closed or all.")
    ] = "queue",
    format: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    home: HomeOption = None,
) -> None:
    """List cases — one per dyad at risk — ranked by risk, with the headline a supervisor reads and its rules.

    Example: alliance queue --clinic northside --format json
    """
    from flows.reviews import list_cases

    if format not in ("table", "json", "csv"):
        raise typer.BadParameter("use table, json or csv", param_hint="--format")
    cases = list_cases(_settings(home, clinic), clinic, status)
    if format != "table":
        _write_frame(cases, format)
        return
    table = Table(title=f"{cases.height} case(s)")
    for column in (*CASE_COLUMNS, "rules"):
        table.add_column(column, overflow="fold")
    for row in cases.iter_rows(named=True):
        cells = ["" if row[c] is None else f"{row[c]:.0f}" if c == "risk_score" else str(row[c]) for c in CASE_COLUMNS]
        table.add_row(*cells, ", ".join(r for r in row["rules"] if r != row["headline_rule"]))
    console.print(table)


@app.command()
@domain_errors
def review(
    review_id: Annotated[str, typer.Argument(help="A case id (see `alliance queue`) or a flag id (`alliance flags`).")],
    status: Annotated[str, typer.Option(help="acknowledged, resolved, or open to reopen.")],
    by: Annotated[str, typer.Option("--by", help="Who reviewed it.")],
    note: Annotated[str | None, typer.Option(help="What was decided or done.")] = None,
    home: HomeOption = None,
) -> None:
    """Acknowledge or resolve a case (and with it the flags behind it) or a single flag; recorded with who, when
    and why in case_reviews and the append-only reviews table.

    Example: alliance review f22876bed10f471e --status acknowledged --by "Dr Lee" --note "raised in supervision"
    """
    from flows.reviews import is_case, review_case, review_flag

    settings = _settings(home)
    if is_case(settings, review_id):
        previous = review_case(settings, review_id, status, by, note)
        console.print(plain_text(f"case {review_id}: {previous} -> {status} (by {by})"), markup=False)
    else:
        previous = review_flag(settings, review_id, status, by, note)
        console.print(plain_text(f"flag {review_id}: {previous} -> {status} (by {by})"), markup=False)


@app.command()
@domain_errors
def release(
    export_id: Annotated[str, typer.Argument(help="The quarantined export's id (see the ingest output or `exports`).")],
    by: Annotated[str, typer.Option("--by", help="Who reviewed the file and released it.")],
    note: Annotated[str | None, typer.Option(help="Why it is released.")] = None,
    home: HomeOption = None,
) -> None:
    """Load a file quarantined whole, after review: its passing rows load, rows that broke a rule stay quarantined.

    Recorded in the audit table with who and why. Example: alliance release 3f9a2c1b7d0e4a55 --by "Dr Lee"
    """
    from flows.pipeline import release_export

    settings = _settings(home)
    result = release_export(settings, export_id, by, note)
    _print_results([result], settings)


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
    from flows.reviews import list_cases

    cases = list_cases(settings)
    if cases.is_empty():
        console.print("review queue is empty")
        return
    table = Table(title=f"Review queue: top {min(limit, cases.height)} of {cases.height} cases")
    for column in ("case_id", "clinic", "therapist", "dyad", "risk", "severity", "reason"):
        table.add_column(column, overflow="fold")
    for row in cases.head(limit).iter_rows(named=True):
        more = len(row["rules"]) - 1
        reason = (row["headline_reason"] or "") + (f" (+{more} more rule{'s' * (more > 1)})" if more > 0 else "")
        table.add_row(*map(_cell, (
            row["case_id"], row["clinic_id"], row["therapist_id"], row["dyad_id"], f"{row['risk_score']:.0f}",
            row["severity"], reason,
        )))  # fmt: skip
    console.print(table)


@app.command()
@domain_errors
def nightly(home: HomeOption = None) -> None:
    """Run the nightly job now, without Prefect: sweep inboxes, re-score, alert, publish snapshots.

    A file that fails is rejected alone and the night goes on; exit codes as for `ingest`.
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
        table.add_row(*map(_cell, row))
    console.print(table)
    for error in report.errors:
        err_console.print(f"Error: {plain_text(error)}", markup=False)
    code = _exit_code(report.exports, len(report.errors))
    if code:
        raise typer.Exit(code)


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
    from alliance.permissions import wide_files
    from alliance.storage import Warehouse

    settings = _settings(home)
    if not settings.warehouse.exists():
        raise ConfigError(f"{settings.warehouse}: no warehouse yet; ingest an export first")
    warehouse = Warehouse.of(settings)
    problems = wide_files(settings.home, warehouse.snapshot_groups)  # before the writer settles folder modes
    with warehouse.writer() as writer:
        problems += writer.verify(warehouse.snapshots)
    for problem in problems:
        err_console.print(f"Error: {plain_text(problem)}", markup=False, highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(1)
    console.print(f"{settings.warehouse}: consistent (ledger, keys, references, snapshots, file modes)")


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

    settings = _environment(home)
    tables = restore_backup(settings, folder, force=force)
    warehouse = Warehouse.of(settings)
    with warehouse.writer() as writer:
        writer.audit("alliance", "restore", folder.name, f"{sum(int(str(v[0])) for v in tables.values())} rows")
        writer.publish(warehouse.snapshots, None, fresh=True)  # nothing of the replaced data left in them
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
