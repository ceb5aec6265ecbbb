"""PHI canary scan: after a full run under Prefect (ingest, nightly, alerts), no canary and no client
reference is anywhere it must not be."""

from __future__ import annotations

import asyncio
import logging
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
