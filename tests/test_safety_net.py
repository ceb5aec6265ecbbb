"""No file can stop a run: an unexpected failure rejects that file alone, with a ledger row, and the rest go on."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from polars.exceptions import PanicException
from typer.testing import CliRunner

from alliance.cli import EXIT_QUARANTINED, EXIT_REJECTED, app
from alliance.home import init_home
from alliance.samples import add_profiles, generate_sample
from alliance.settings import Settings, load_settings
from flows.nightly import run_nightly, sweep_clinic
from flows.pipeline import ingest_file
from tests.conftest import SOUTH_ROWS, TEST_KEY, add_clinic, put
from tests.receivers import Hook
from tests.test_pipeline import NORTH, ROWS

# Values that crashed a whole run before the safety net: beyond Int64 (mapping), year 0 (scoring).
HUGE_SESSION = "C-201,t9,01/05/2026,99999999999999999999,9,9,9,9,,"
YEAR_ZERO = "C-202,t9,0000-01-01,1,9,9,9,9,,"
POISON_VALUES = ("99999999999999999999", "0000-01-01", "C-201", "C-202")


def query(settings: Settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        return con.execute(sql).fetchall()


def everything_stored(settings: Settings) -> str:
    """What the ledger, flags, audit and alerts hold: error columns and messages, never cell values.

    (Quarantine rows keep a row's mapped values on purpose, for review: they are left out here.)
    """
    tables = ("exports", "flags", "audit", "alerts")
    return " ".join(str(row) for t in tables for row in query(settings, f"SELECT * FROM {t}"))


@pytest.mark.parametrize("stage", ["prepare", "load"])
def test_an_unexpected_failure_rejects_that_file_and_the_sweep_goes_on(
    two_clinics: Settings, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    put(two_clinics, "north", "broken.csv", ROWS)
    put(two_clinics, "north", "fine.csv", [r.replace("C-1", "C-5") for r in ROWS])
    put(two_clinics, "south", "fine.csv", SOUTH_ROWS)
    monkeypatch.setenv("ALLIANCE_FAULT_AT", f"{stage}:broken")
    results, errors = sweep_clinic(two_clinics)
    assert errors == []
    status = {(r.clinic_id, r.file_name): r.status for r in results}
    assert status == {("north", "broken.csv"): "rejected", ("north", "fine.csv"): "loaded",
                      ("south", "fine.csv"): "loaded"}  # fmt: skip
    broken = next(r for r in results if r.file_name == "broken.csv")
    assert "unexpected InjectedFault" in (broken.error or "")
    ((ledger_status, error, archived),) = query(
        two_clinics, "SELECT status, error, archived_as FROM exports WHERE file_name = 'broken.csv'"
    )
    assert ledger_status == "rejected" and error.startswith("unexpected InjectedFault at faults.py:")
    assert Path(archived).parent == two_clinics.archive / "north" / "rejected" and Path(archived).is_file()
    # a fault during the load rolled the whole file back: nothing of it is stored
    assert query(two_clinics, f"SELECT count(*) FROM ratings WHERE export_id = '{broken.export_id}'") == [(0,)]
    assert query(two_clinics, "SELECT count(*) FROM ratings") == [(10,)]
    assert not [p for c in ("north", "south") for p in (two_clinics.inbox / c).iterdir()]


def test_a_polars_panic_rejects_that_file_and_the_sweep_goes_on(
    two_clinics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Rust panic in Polars is a BaseException, not an Exception: it still rejects only its own file."""
    import flows.pipeline
    import flows.prevalidation

    put(two_clinics, "north", "broken.csv", ROWS)
    put(two_clinics, "south", "fine.csv", SOUTH_ROWS)
    prepare = flows.pipeline.prepare_export

    def panics(path: Path, *args: object, **kwargs: object) -> object:
        if path.name == "broken.csv":
            raise PanicException("assertion failed: i < self.len()")
        return prepare(path, *args, **kwargs)  # type: ignore[arg-type]

    def panics_together(*args: object) -> object:
        raise PanicException("assertion failed: i < self.len()")

    monkeypatch.setattr(flows.pipeline, "prepare_export", panics)
    # where the sweep's batch prepares its files ahead: together, and after a failure there each file alone
    monkeypatch.setattr(flows.prevalidation, "prepare_together", panics_together)
    monkeypatch.setattr(flows.prevalidation, "prepare_export", panics)
    results, errors = sweep_clinic(two_clinics)
    assert errors == []
    assert {r.file_name: r.status for r in results} == {"broken.csv": "rejected", "fine.csv": "loaded"}
    assert "unexpected PanicException" in (next(r for r in results if r.file_name == "broken.csv").error or "")


def test_a_real_crashing_value_no_longer_stops_other_files(two_clinics: Settings) -> None:
    # Whether these rows end quarantined or their files rejected, neither may stop the rest of the run.
    put(two_clinics, "north", "huge.csv", [HUGE_SESSION])
    put(two_clinics, "north", "year0.csv", [YEAR_ZERO, *ROWS[:1]])
    put(two_clinics, "south", "fine.csv", SOUTH_ROWS)
    results, errors = sweep_clinic(two_clinics)
    assert errors == []
    assert {r.file_name: r.status for r in results}["fine.csv"] == "loaded"
    assert sorted(r[0] for r in query(two_clinics, "SELECT file_name FROM exports")) == [
        "fine.csv", "huge.csv", "year0.csv"
    ]  # fmt: skip
    stored = everything_stored(two_clinics)
    assert not any(value in stored for value in POISON_VALUES)
    assert not any(r.error and any(v in r.error for v in POISON_VALUES) for r in results)


def test_cli_ingest_of_several_files_goes_on_past_a_failure_and_exits_2(
    two_clinics: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = put(two_clinics, "north", "broken.csv", ROWS)
    fine = put(two_clinics, "south", "fine.csv", SOUTH_ROWS)
    monkeypatch.setenv("ALLIANCE_FAULT_AT", "prepare:broken")
    result = CliRunner().invoke(app, ["ingest", str(broken), str(fine), "--home", str(two_clinics.home)])
    assert result.exit_code == EXIT_REJECTED, result.output
    assert "2 file(s): 1 loaded, 1 rejected" in result.output
    assert "broken.csv: rejected: broken.csv: unexpected InjectedFault" in result.output
    assert query(two_clinics, "SELECT file_name, status FROM exports ORDER BY file_name") == [
        ("broken.csv", "rejected"), ("fine.csv", "loaded")
    ]  # fmt: skip


def test_nightly_exit_code_says_a_file_failed(two_clinics: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    put(two_clinics, "north", "broken.csv", ROWS)
    put(two_clinics, "south", "fine.csv", SOUTH_ROWS)
    monkeypatch.setenv("ALLIANCE_FAULT_AT", "load:broken")
    result = CliRunner().invoke(app, ["nightly", "--home", str(two_clinics.home)])
    assert result.exit_code == EXIT_REJECTED, result.output
    assert "1 rejected" in result.output and "unexpected InjectedFault" in result.output


def test_a_file_quarantined_whole_has_its_own_exit_code(two_clinics: Settings) -> None:
    bad = [r.replace("01/", "13/") for r in ROWS]  # no date parses: every row fails
    path = put(two_clinics, "north", "bad.csv", bad)
    result = CliRunner().invoke(app, ["ingest", str(path), "--home", str(two_clinics.home)])
    assert result.exit_code == EXIT_QUARANTINED, result.output
    assert "1 quarantined" in result.output


def test_the_poison_file_night(tmp_path: Path, hook: Hook, monkeypatch: pytest.MonkeyPatch) -> None:
    """One clinic's inbox holds a file of each crash class, another's a good file: the night still happens."""
    settings = load_settings(tmp_path / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(tmp_path / "outbox", clinics=1, weeks=16, seed=2, dyads_per_clinic=25)
    add_profiles(settings.clinics_file, sample.profiles)
    add_clinic(settings, NORTH)
    with settings.clinics_file.open("a") as handle:
        handle.write(f'\n[[clinics.northside.alerts.supervisors]]\nname = "Dr Lee"\nurls = ["{hook.url()}"]\n')
    good = settings.inbox / "northside" / sample.files[0].path.name
    good.parent.mkdir(parents=True)
    good.write_bytes(sample.files[0].path.read_bytes())
    (settings.inbox / "north").mkdir()
    poison = {
        "huge-session.csv": [HUGE_SESSION, *ROWS[:1]],
        "year-zero.csv": [YEAR_ZERO, *ROWS[:1]],
        "poison-prepare.csv": ROWS,
        "poison-load.csv": [r.replace("C-1", "C-7") for r in ROWS],
    }
    for name, rows in poison.items():
        put(settings, "north", name, rows)
    import flows.nightly

    real_ingest = ingest_file
    injected = {"poison-prepare.csv": "prepare:poison-prepare", "poison-load.csv": "load:poison-load"}

    def one_fault(path: Path, *args: object, **kwargs: object) -> object:
        monkeypatch.setenv("ALLIANCE_FAULT_AT", injected.get(path.name, "none:"))
        return real_ingest(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(flows.nightly, "ingest_file", one_fault)
    report = run_nightly(settings)
    by_file = {r.file_name: r for r in report.exports}
    assert report.errors == []
    assert by_file[good.name].status == "loaded" and by_file[good.name].rows_new > 0
    assert by_file["poison-prepare.csv"].status == by_file["poison-load.csv"].status == "rejected"
    ledger = dict(query(settings, "SELECT file_name, status FROM exports"))
    assert set(ledger) == {good.name, *poison}  # every file has its ledger row
    assert report.scoring is not None and report.scoring.dyads_scored > 0  # re-scored
    assert report.alerts is not None and report.alerts.sent > 0 and hook.requests  # alerted
    assert (settings.warehouse.parent / "snapshots" / "clinic-northside.duckdb").exists()  # published
    assert not list((settings.inbox / "north").iterdir())  # nothing left to trip the next night
    stored = everything_stored(settings) + " ".join(str(r.error) for r in report.exports)
    assert not any(value in stored for value in POISON_VALUES)
    # the second night does not touch the poison again, and alerts nothing twice
    sent_before = len(hook.requests)
    again = run_nightly(settings)
    assert again.exports == [] and again.errors == []
    assert query(settings, "SELECT count(*) FROM exports") == [(len(ledger),)]
    assert len(hook.requests) == sent_before


@pytest.mark.prefect
def test_the_prefect_nightly_goes_on_past_a_failing_file(
    two_clinics: Settings, monkeypatch: pytest.MonkeyPatch, prefect_api: None
) -> None:
    from flows.serve import nightly

    put(two_clinics, "north", "broken.csv", ROWS)
    put(two_clinics, "south", "fine.csv", SOUTH_ROWS)
    monkeypatch.setenv("ALLIANCE_FAULT_AT", "prepare:broken")
    state = nightly(home=str(two_clinics.home), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["errors"] == []
    (rejected,) = summary["rejected"]
    assert rejected.startswith("broken.csv: unexpected InjectedFault")
    assert {r["clinic_id"]: r["exports"] for r in summary["per_clinic"]} == {"north": 1, "south": 1}
    assert query(two_clinics, "SELECT file_name, status FROM exports ORDER BY file_name") == [
        ("broken.csv", "rejected"), ("fine.csv", "loaded")
    ]  # fmt: skip
