"""Idempotence per clinic, duplicates that say what they duplicate, and releasing a file quarantined whole."""

from __future__ import annotations

import duckdb
import pytest
from typer.testing import CliRunner

from alliance.cli import app
from alliance.errors import AllianceError
from alliance.settings import Settings
from flows.pipeline import ingest_file
from flows.release import release_export
from tests.conftest import SOUTH_ROWS, put
from tests.test_pipeline import ROWS

# three unparseable dates and one out-of-range item: most rows fail, one passes
MOSTLY_BAD = [r.replace("01/", "13/") for r in ROWS[:3]] + ROWS[3:] + ["C-105,t1,01/05/2026,1,9,9,9,9,,"]


def query(settings: Settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_the_same_bytes_at_another_clinic_are_not_a_duplicate(two_clinics: Settings) -> None:
    north = ingest_file(put(two_clinics, "north", "a.csv", ROWS), two_clinics)
    south = ingest_file(put(two_clinics, "south", "a.csv", ROWS), two_clinics)
    assert north.status == "loaded" and south.status != "duplicate"
    assert north.export_id != south.export_id
    assert sorted(r[0] for r in query(two_clinics, "SELECT clinic_id FROM exports")) == ["north", "south"]


def test_a_file_first_dropped_in_the_wrong_inbox_loads_in_the_right_one(two_clinics: Settings) -> None:
    ingest_file(put(two_clinics, "north", "week1.csv", ROWS), two_clinics)
    later = [r.replace("01/1", "02/1").replace("01/0", "02/0") for r in ROWS]
    wrong = ingest_file(put(two_clinics, "south", "week2.csv", later), two_clinics)
    assert wrong.status == "quarantined"
    assert ("foreign_therapist:therapist_id", 6) in wrong.top_reasons
    right = ingest_file(put(two_clinics, "north", "week2.csv", later), two_clinics)
    assert right.status == "loaded" and right.rows_new == 5


def test_a_duplicate_names_the_earlier_ingest(two_clinics: Settings) -> None:
    first = ingest_file(put(two_clinics, "north", "bad.csv", MOSTLY_BAD), two_clinics)
    assert first.status == "quarantined"
    again = ingest_file(put(two_clinics, "north", "bad-again.csv", MOSTLY_BAD), two_clinics)
    assert again.status == "duplicate" and again.export_id == first.export_id
    day = query(two_clinics, "SELECT received_at::DATE::VARCHAR FROM exports")[0][0]
    assert again.error == (
        f"same bytes as bad.csv, ingested for clinic north on {day} (export {first.export_id}, quarantined); "
        f"nothing to do; to load its passing rows after review: alliance release {first.export_id} --by NAME"
    )


def test_release_loads_a_file_quarantined_whole_and_is_audited(two_clinics: Settings) -> None:
    first = ingest_file(put(two_clinics, "north", "bad.csv", MOSTLY_BAD), two_clinics)
    assert (first.status, first.rows_quarantined, first.rows_total) == ("quarantined", 7, 7)
    result = CliRunner().invoke(
        app, ["release", first.export_id, "--by", "Dr Lee", "--note", "checked", "--home", str(two_clinics.home)]
    )
    assert result.exit_code == 0, result.output
    assert "1 released" in result.output
    assert query(two_clinics, "SELECT count(*) FROM ratings") == [(1,)]
    assert query(two_clinics, "SELECT status, rows_new, rows_quarantined FROM exports") == [("loaded", 1, 6)]
    rules = [r[0] for r in query(two_clinics, "SELECT rules FROM quarantine")]
    assert ["file_quarantined"] not in rules and len(rules) == 6  # only rows that broke a rule stay
    ((actor, subject, detail),) = query(
        two_clinics, "SELECT actor, subject, detail FROM audit WHERE action = 'release'"
    )
    assert (actor, subject) == ("Dr Lee", first.export_id) and detail.endswith("; checked")
    assert CliRunner().invoke(app, ["verify", "--home", str(two_clinics.home)]).exit_code == 0
    # released once: a second release is refused with one clear line
    again = CliRunner().invoke(app, ["release", first.export_id, "--by", "Dr Lee", "--home", str(two_clinics.home)])
    assert again.exit_code == 1
    assert again.output.strip().endswith(f"export {first.export_id} (bad.csv) is loaded, not quarantined whole")


def test_release_refuses_an_archived_file_that_changed(two_clinics: Settings) -> None:
    first = ingest_file(put(two_clinics, "north", "bad.csv", MOSTLY_BAD), two_clinics)
    with open(first.archived_as or "", "a", encoding="utf-8") as handle:
        handle.write(SOUTH_ROWS[0] + "\n")
    with pytest.raises(AllianceError, match="the archived file is not the bytes quarantined"):
        release_export(two_clinics, first.export_id, "Dr Lee")
    verify = CliRunner().invoke(app, ["verify", "--home", str(two_clinics.home)])
    assert verify.exit_code == 1 and "is not the bytes loaded from bad.csv" in verify.output
