"""Commands a supervisor uses: flags, queue, review, release, rescore; listings as tables, JSON or safe CSV."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from alliance.cli.common import (
    HomeOption,
    _cell,
    _print_scoring,
    _settings,
    app,
    console,
    domain_errors,
)
from alliance.cli.exports import _print_results
from alliance.redaction import plain_text

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
    from flows.release import release_export

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
