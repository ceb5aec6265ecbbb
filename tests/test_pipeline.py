"""The ingest pipeline on real files and a real DuckDB warehouse."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from pydantic import SecretStr

from alliance.errors import ConfigError, KeyMissing
from alliance.pseudonyms import load_key, pseudonym
from alliance.settings import Settings
from flows.pipeline import ingest_file
from tests.conftest import TEST_KEY, add_clinic

NORTH = """
[clinics.north]
name = "North"
timezone = "America/Chicago"

[clinics.north.export]
date_format = "%m/%d/%Y"
instruments = ["SRS", "ORS"]

[clinics.north.export.columns]
"Client ID" = "client_ref"
"Clinician" = "therapist_id"
"Session Date" = "session_date"
"Session #" = "session_number"
"SRS Relationship" = "srs_relationship"
"SRS Goals" = "srs_goals"
"SRS Approach" = "srs_approach"
"SRS Overall" = "srs_overall"
"ORS Total" = "ors_total"
"""
HEADER = (
    "Client ID,Clinician,Session Date,Session #,SRS Relationship,SRS Goals,SRS Approach,SRS Overall,ORS Total,Notes\n"
)
ROWS = [
    "C-101,t1,01/05/2026,1,9.5,9.0,9.1,9.2,20,first visit",
    "C-101,t1,01/12/2026,2,9.5,9.5,9.1,9.2,,",
    "C-102,t2,01/12/2026,1,8.0,8.0,8.0,8.0,18,",
    "C-103,t2,01/13/2026,1,8.0,12.5,8.0,8.0,,out of range",
]


@pytest.fixture
def north(settings: Settings) -> Settings:
    add_clinic(settings, NORTH)
    (settings.inbox / "north").mkdir()
    return settings


def drop(settings: Settings, name: str, rows: list[str], encoding: str = "utf-8") -> Path:
    path = settings.inbox / "north" / name
    path.write_bytes((HEADER + "\n".join(rows) + "\n").encode(encoding))
    return path


def query(settings: Settings, sql: str) -> list[tuple]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_rows_are_accounted_for_and_the_file_archived(north: Settings) -> None:
    path = drop(north, "a.csv", ROWS)
    original = path.read_bytes()
    result = ingest_file(path, north)
    # 4 SRS ratings + 2 ORS ratings; one SRS out of range
    assert (result.status, result.rows_total, result.rows_new, result.rows_quarantined) == ("loaded", 6, 5, 1)
    assert result.top_reasons == [("out_of_range:srs_goals", 1)]
    assert not path.exists()
    archived = Path(result.archived_as or "")
    assert archived.parent == north.archive / "north" and archived.read_bytes() == original
    ledger = query(north, "SELECT status, rows_total, rows_new, rows_quarantined, archived_as FROM exports")
    assert ledger == [("loaded", 6, 5, 1, str(archived))]
    ((line, rules, reasons),) = query(north, "SELECT source_line, rules, reasons FROM quarantine")
    assert (line, rules) == (5, ["out_of_range:srs_goals"])
    assert reasons == ["line 5, column 'SRS Goals' (srs_goals): is outside the allowed range 0–10"]


def test_same_bytes_twice_change_nothing(north: Settings) -> None:
    first = ingest_file(drop(north, "a.csv", ROWS), north)
    again = ingest_file(drop(north, "a-copy.csv", ROWS), north)
    assert again.status == "duplicate" and again.export_id == first.export_id
    assert query(north, "SELECT count(*) FROM exports") == [(1,)]
    assert query(north, "SELECT count(*) FROM ratings") == [(5,)]
    assert query(north, "SELECT count(*) FROM quarantine") == [(1,)]
    assert not (north.inbox / "north" / "a-copy.csv").exists()


def test_corrected_re_export_updates_and_keeps_history(north: Settings) -> None:
    ingest_file(drop(north, "a.csv", ROWS), north)
    corrected = [ROWS[0].replace("9.5,9.0", "9.5,7.0"), *ROWS[1:], "C-104,t1,01/14/2026,1,9,9,9,9,,"]
    result = ingest_file(drop(north, "b.csv", corrected), north)
    assert (result.rows_total, result.rows_new, result.rows_updated, result.rows_unchanged) == (7, 1, 1, 4)
    assert result.rows_quarantined == 1
    ((old_total, old_export, by),) = query(north, "SELECT total, export_id, replaced_by_export FROM rating_history")
    assert old_total == pytest.approx(36.8) and by == result.export_id and old_export != by
    new_total = query(
        north,
        "SELECT total FROM ratings WHERE instrument = 'SRS' AND session_number = 1 "
        "AND session_date = DATE '2026-01-05'",
    )
    assert new_total == [(pytest.approx(34.8),)]
    totals = query(
        north, "SELECT sum(rows_total), sum(rows_new + rows_updated + rows_unchanged + rows_quarantined) FROM exports"
    )
    assert totals[0][0] == totals[0][1]


def test_missing_column_rejects_whole_file_and_is_recorded(north: Settings) -> None:
    path = north.inbox / "north" / "renamed.csv"
    path.write_text(HEADER.replace("Session Date", "Date of Session") + ROWS[0] + "\n")
    result = ingest_file(path, north)
    assert result.status == "rejected"
    assert result.error == (
        "renamed.csv: missing required column(s) 'Session Date' (-> session_date) among the file's 10 columns; "
        "the header found (line 1, detected) has 'Client ID', 'Clinician', 'Date of Session' (looks like "
        "session_date), 'Session #', 'SRS Relationship', 'SRS Goals', 'SRS Approach', 'SRS Overall', 'ORS Total', "
        "1 other column(s) not named here (a header cell may hold client data; `alliance profile draft FILE` lists "
        "them); check the clinic's [export.columns]"
    )
    assert query(north, "SELECT status, rows_total, error LIKE 'missing required%' FROM exports") == [
        ("rejected", 0, True)
    ]
    assert query(north, "SELECT count(*) FROM ratings") == [(0,)]
    assert Path(result.archived_as or "").parent == north.archive / "north" / "rejected"


def test_rejected_file_retried_after_a_fix_keeps_both_ledger_rows(north: Settings) -> None:
    declared_utf8 = NORTH.replace('date_format = "%m/%d/%Y"', 'date_format = "%m/%d/%Y"\nencoding = "utf-8"')
    north.clinics_file.write_text(declared_utf8)
    rows = [ROWS[0].replace("first visit", "Grüße")]
    rejected = ingest_file(drop(north, "a.csv", rows, encoding="cp1252"), north)
    assert rejected.status == "rejected" and "not valid UTF-8 at line 2" in (rejected.error or "")
    north.clinics_file.write_text(declared_utf8.replace('"utf-8"', '"cp1252"'))
    rejected_copy = Path(rejected.archived_as or "")
    retried = ingest_file(rejected_copy, north, clinic_id="north")
    assert retried.status == "loaded" and retried.rows_new == 2
    assert retried.export_id != rejected.export_id and retried.file_name == "a.csv"  # no second prefix
    ledger = query(north, "SELECT status, rows_total, file_name FROM exports ORDER BY received_at")
    assert ledger == [("rejected", 0, "a.csv"), ("loaded", 2, "a.csv")]  # the rejection stays on record
    assert not rejected_copy.exists()  # moved on, not left behind as a second copy
    assert Path(retried.archived_as or "").name == f"{retried.export_id}__a.csv"


def test_most_rows_failing_quarantines_the_whole_file(north: Settings) -> None:
    bad = [r.replace("01/", "13/") for r in ROWS[:3]] + ROWS[3:] + ["C-105,t1,01/05/2026,1,9,9,9,9,,"]
    result = ingest_file(drop(north, "bad.csv", bad), north)
    assert result.status == "quarantined"
    assert result.rows_quarantined == result.rows_total == 7
    assert query(north, "SELECT count(*) FROM ratings") == [(0,)]
    assert ["file_quarantined"] in [r[0] for r in query(north, "SELECT rules FROM quarantine")]


def test_client_references_become_keyed_pseudonyms(north: Settings) -> None:
    ingest_file(drop(north, "a.csv", ROWS), north)
    ids = {r[0] for r in query(north, "SELECT client_id FROM ratings")}
    assert ids == {pseudonym(TEST_KEY.encode(), "north", ref) for ref in ("C-101", "C-102")}
    assert pseudonym(b"another-key-0123456789", "north", "C-101") not in ids
    everything = " ".join(
        str(row) for table in ("ratings", "quarantine", "exports") for row in query(north, f"SELECT * FROM {table}")
    )
    assert "C-10" not in everything and "first visit" not in everything and "out of range" not in everything
    refs = query(north, "SELECT client_ref FROM client_refs ORDER BY client_ref")
    assert refs == [("C-101",), ("C-102",), ("C-103",)]


def test_file_outside_the_inbox_needs_a_clinic_and_is_copied(north: Settings, tmp_path: Path) -> None:
    outside = tmp_path / "download.csv"
    outside.write_text(HEADER + ROWS[0] + "\n")
    with pytest.raises(ConfigError, match="not in an inbox/<clinic_id>/ folder; pass --clinic"):
        ingest_file(outside, north)
    with pytest.raises(ConfigError, match="clinic 'south' is not in clinics.toml"):
        ingest_file(outside, north, clinic_id="south")
    assert ingest_file(outside, north, clinic_id="north").status == "loaded"
    assert outside.exists()


def test_key_comes_from_settings_or_owner_only_file(north: Settings) -> None:
    assert load_key(north) == TEST_KEY.encode()
    north.key_file.chmod(0o644)
    with pytest.raises(KeyMissing, match="readable by others"):
        load_key(north)
    north.key_file.unlink()
    with pytest.raises(KeyMissing, match="run `alliance init`"):
        load_key(north)
    assert load_key(north.model_copy(update={"hmac_key": SecretStr("k" * 32)})) == b"k" * 32
