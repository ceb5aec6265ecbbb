"""What every command shares: the app, its consoles, the --home option, exit codes, errors as one line,
the settings check, and the scoring and queue summaries several commands print."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
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
