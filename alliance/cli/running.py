"""Commands that run and keep the system: nightly, serve, verify, backup, restore, rekey."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from alliance.cli.common import (
    HomeOption,
    _cell,
    _environment,
    _exit_code,
    _print_scoring,
    _settings,
    app,
    console,
    domain_errors,
    err_console,
)
from alliance.cli.exports import _print_results
from alliance.errors import ConfigError
from alliance.redaction import plain_text


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
