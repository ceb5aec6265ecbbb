"""PHI canary scan: after a full run under Prefect (ingest, nightly, alerts), no canary and no client
reference is anywhere it must not be."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from pathlib import Path

import duckdb
import pytest

from alliance.home import init_home
from alliance.samples import add_profiles, generate_sample
from alliance.settings import load_settings
from alliance.storage import Warehouse
from tests.conftest import TEST_KEY
from tests.receivers import Hook, Mailbox


def leaks(text: str, secrets: set[str]) -> list[str]:
    return sorted(s for s in secrets if re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", text))


def dump(path: Path, skip_tables: tuple[str, ...] = ()) -> str:
    with duckdb.connect(str(path), read_only=True) as con:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        return "\n".join(
            str(row)
            for table in tables
            if table not in skip_tables
            for row in con.execute(f"SELECT * FROM {table}").fetchall()
        )


async def prefect_records() -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter

    async with get_client() as client:
        logs: list = []
        while page := await client.read_logs(log_filter=LogFilter(), limit=200, offset=len(logs)):
            logs += page
        artifacts = await client.read_artifacts(limit=200)
        runs = await client.read_flow_runs(limit=200)
    assert logs and artifacts and runs  # the scan read something
    return "\n".join(
        [log.message for log in logs]
        + [str(a.data) + str(a.description) for a in artifacts]
        + [str(r.parameters) + str(r.state.message if r.state else "") for r in runs]
    )


@pytest.mark.prefect
def test_no_client_data_outside_its_place_after_a_full_run(
    tmp_path: Path, prefect_api: None, smtp: Mailbox, hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    from flows.ingest import ingest_export
    from flows.serve import nightly

    caplog.set_level(logging.DEBUG)
    settings = load_settings(tmp_path / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(settings.inbox, clinics=4, weeks=16, seed=12, dyads_per_clinic=20, profile="clean")
    add_profiles(settings.clinics_file, sample.profiles)
    with settings.clinics_file.open("a") as handle:
        handle.write(
            f"""
[clinics.northside.alerts]
leads = ["json://127.0.0.1:{hook.port}/leads"]
[[clinics.northside.alerts.supervisors]]
name = "Dr Lee"
urls = ["mailto://127.0.0.1:{smtp.port}/lee@example.org?from=alerts@example.org"]
"""
        )
    results = [ingest_export(str(f.path), home=str(settings.home)) for f in sample.files]
    nightly_summary = nightly(home=str(settings.home))
    assert all(r["status"] == "loaded" for r in results) and smtp.messages

    canaries = set(sample.canaries)
    refs = {d.client_ref for d in sample.dyads}
    private = canaries | refs
    own_refs = {c: {d.client_ref for d in sample.dyads if d.clinic_id == c} for c in sample.profiles}
    warehouse = Warehouse.of(settings)

    found = {
        "warehouse (outside client_refs)": leaks(dump(settings.warehouse, ("client_refs",)), private),
        "network snapshot": leaks(dump(warehouse.snapshot_path()), private),
        "flow results": leaks(str(results) + str(nightly_summary), private),
        "logs": leaks(caplog.text, private),
        "Prefect logs, artifacts, runs": leaks(asyncio.run(prefect_records()), private),
        "alert payloads": leaks(
            "\n".join([smtp.text(i) + str(m["Subject"]) for i, m in enumerate(smtp.messages)])
            + "\n".join(r["body"].decode("utf-8", "replace") for r in hook.requests),
            private,
        ),
    }
    for clinic in sample.profiles:
        others = private - own_refs[clinic]
        found[f"snapshot of {clinic}"] = leaks(dump(warehouse.snapshot_path(clinic)), others | canaries)
    assert {where: hits[:3] for where, hits in found.items() if hits} == {}
    # the clinic's own snapshot does carry its own references (that is its purpose)
    assert leaks(dump(warehouse.snapshot_path("northside")), own_refs["northside"])
    # Prefect's result store holds nothing: flows and tasks do not persist results
    storage = Path.home() / ".prefect" / "storage"
    assert not storage.exists() or not leaks(
        " ".join(p.read_bytes().decode("latin-1") for p in storage.rglob("*") if p.is_file()), private
    )


# --- error paths: canaries in malformed cells, unmapped columns, JSON keys and quarantined values ---------------

ERR = [f"CANARY-ERR-{i}" for i in range(1, 9)]
QUARANTINED = ERR[6]  # typed into a score cell: kept in the warehouse's quarantine and the clinic's own snapshot
CANARY_CLINICS = """
[clinics.canarycsv]
name = "Canary CSV"
[clinics.canarycsv.export]
date_format = "%m/%d/%Y"
instruments = ["SRS"]
[clinics.canarycsv.export.columns]
"Client ID" = "client_ref"
"Clinician" = "therapist_id"
"Session Date" = "session_date"
"Session #" = "session_number"
"SRS Relationship" = "srs_relationship"
"SRS Goals" = "srs_goals"
"SRS Approach" = "srs_approach"
"SRS Overall" = "srs_overall"

[clinics.canaryjson]
name = "Canary JSON"
[clinics.canaryjson.export]
format = "json"
records = "sessions"
instruments = ["SRS"]
[clinics.canaryjson.export.columns]
"client" = "client_ref"
"therapist" = "therapist_id"
"date" = "session_date"
"session" = "session_number"
"total" = "srs_total"
"""
HEADER = "Client ID,Clinician,Session Date,Session #,SRS Relationship,SRS Goals,SRS Approach,SRS Overall,Notes\n"
GOOD = "C{n},t1,01/{n:02d}/2026,{n},9,9,9,9,fine\n"


def error_exports(inbox: Path) -> list[Path]:
    """Exports that fail in every way a parser can, each carrying canaries where the failure is."""
    good = "".join(GOOD.format(n=n) for n in range(1, 6))
    files = {
        "canarycsv/notes_badly_quoted.csv": HEADER + good + f'C9,t1,01/09/2026,9,9,9,9,9,"Jane {ERR[0]}" cancelled\n',
        "canarycsv/ref_badly_quoted.csv": HEADER + f'"{ERR[1]} Doe" x,t1,01/05/2026,1,9,9,9,9,\n',
        "canarycsv/unclosed_note.csv": HEADER + good + f'C9,t1,01/09/2026,9,9,9,9,9,"{ERR[2]}\nstill the note\n',
        "canarycsv/unmapped_breaks_parsing.csv": HEADER + good + f"C9,t1,01/09/2026,9,9,9,9,9,{ERR[3]}, moved, again\n",
        "canaryjson/keys_twice.json": '{"sessions": [{"client": "C1", "KEY": 1, "KEY": 2}]}'.replace("KEY", ERR[4]),
        "canaryjson/keys_collide.json": '{"sessions": [{"X.y": 1, "X": {"y": 2}}]}'.replace("X", ERR[5]),
        "canarycsv/typed_into_scores.csv": HEADER + good + f"C9,t1,01/09/2026,9,9,{QUARANTINED},9,9,\n",
        "canarycsv/ref_in_header.csv": f"Client ID,Clinician,Session Date,Session #,{ERR[7]}\n"
        + "C1,t1,01/05/2026,1,x\n",
    }
    paths = []
    for name, text in files.items():
        path = inbox / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def dashboard_text(home: Path, clinic: str | None) -> str:
    """Everything the dashboard draws on each page, as the AppTest element tree holds it."""
    from streamlit import config as st_config
    from streamlit.testing.v1 import AppTest

    from dashboards import launch

    st_config.set_option("server.address", "127.0.0.1")
    os.environ[launch.HOME_ENV] = str(home)
    os.environ.pop(launch.CLINIC_ENV, None)
    if clinic:
        os.environ[launch.CLINIC_ENV] = clinic
    texts = []
    try:
        for page in ("Queue", "Dyad", "Trends", "Data health"):
            at = AppTest.from_file(str(Path(launch.APP)), default_timeout=60)
            at.session_state["page"] = page
            at.run()
            assert not at.exception, [e.value for e in at.exception]
            elements = [*at.markdown, *at.caption, *at.error, *at.warning, *at.info, *at.success, *at.metric]
            texts += [str(getattr(e, "value", "")) + str(getattr(e, "label", "")) for e in elements]
            texts += [frame.value.to_string() for frame in at.dataframe]
    finally:
        os.environ.pop(launch.HOME_ENV, None)
        os.environ.pop(launch.CLINIC_ENV, None)
    return "\n".join(texts)


@pytest.mark.slow  # ~80 s: 13 flow runs, a nightly and eight dashboard renders
@pytest.mark.prefect
def test_no_canary_escapes_through_an_error_path(
    tmp_path: Path, prefect_api: None, hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    from typer.testing import CliRunner

    from alliance.cli import app
    from flows.ingest import ingest_export
    from flows.serve import nightly

    caplog.set_level(logging.DEBUG)
    settings = load_settings(tmp_path / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(settings.inbox, clinics=2, weeks=10, seed=5, dyads_per_clinic=6)
    add_profiles(settings.clinics_file, sample.profiles)
    with settings.clinics_file.open("a") as handle:
        handle.write(CANARY_CLINICS + f'\n[clinics.canarycsv.alerts]\nleads = ["json://127.0.0.1:{hook.port}/leads"]\n')
    paths = error_exports(settings.inbox)
    results = [ingest_export(str(p), home=str(settings.home)) for p in [f.path for f in sample.files] + paths[:5]]
    cli = CliRunner().invoke(app, ["ingest", "--home", str(settings.home)])  # the rest through the CLI
    nightly_summary = nightly(home=str(settings.home))
    statuses = {str(r["file_name"]): r["status"] for r in results}
    assert statuses["notes_badly_quoted.csv"] == "rejected" and statuses["keys_twice.json"] == "rejected"
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        ledger = dict(con.execute("SELECT file_name, status FROM exports").fetchall())
        quarantined = " ".join(str(r) for r in con.execute('SELECT "values" FROM quarantine').fetchall())
    assert ledger["typed_into_scores.csv"] == "loaded" and QUARANTINED in quarantined  # the value is kept, at home
    assert sum(status == "rejected" for status in ledger.values()) == 7

    private = set(ERR) | set(sample.canaries)
    warehouse = Warehouse.of(settings)
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        # outside client_refs and quarantine.values, which are where the clinic's own data lives
        ledger_text = " ".join(str(r) for r in con.execute("SELECT * FROM exports").fetchall())
        rest = dump(settings.warehouse, ("client_refs", "quarantine")) + " ".join(
            str(r) for r in con.execute('SELECT * EXCLUDE ("values") FROM quarantine').fetchall()
        )
    found = {
        "ledger": leaks(ledger_text, private),
        "warehouse (outside client_refs, quarantine values)": leaks(rest, private),
        "network snapshot": leaks(dump(warehouse.snapshot_path()), private),
        "flow results": leaks(str(results) + str(nightly_summary), private),
        "CLI output": leaks(cli.output, private),
        "logs": leaks(caplog.text, private),
        "Prefect logs, artifacts, runs": leaks(asyncio.run(prefect_records()), private),
        "alert payloads": leaks("\n".join(r["body"].decode("utf-8", "replace") for r in hook.requests), private),
        "network dashboard": leaks(dashboard_text(settings.home, None), private),
        "a clinic's dashboard": leaks(dashboard_text(settings.home, "canarycsv"), private - {QUARANTINED}),
    }
    for clinic in [*sample.profiles, "canaryjson"]:
        found[f"snapshot of {clinic}"] = leaks(dump(warehouse.snapshot_path(clinic)), private)
    found["snapshot of canarycsv"] = leaks(dump(warehouse.snapshot_path("canarycsv")), private - {QUARANTINED})
    assert {where: hits for where, hits in found.items() if hits} == {}
    # the clinic's own snapshot does keep its quarantined value, for its reviewers
    assert leaks(dump(warehouse.snapshot_path("canarycsv")), {QUARANTINED})
    storage = Path.home() / ".prefect" / "storage"
    assert not storage.exists() or not leaks(
        " ".join(p.read_bytes().decode("latin-1") for p in storage.rglob("*") if p.is_file()), private
    )
