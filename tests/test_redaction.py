"""Messages that leave the reader name where and what kind of value failed, never the value; outgoing text is plain."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from alliance.clinics import ExportProfile
from alliance.errors import ExportRejected
from alliance.readers import read_export
from alliance.redaction import engine_problem, plain_text, redact_values, value_kind
from alliance.settings import Settings
from flows.pipeline import ingest_file
from tests.conftest import add_clinic
from tests.test_hostile import NORTH

CANARY = "CANARY-7f3a"
COLUMNS = {
    "Client": "client_ref",
    "Therapist": "therapist_id",
    "Date": "session_date",
    "Session": "session_number",
    "SRS Total": "srs_total",
}
HEADER = "Client,Therapist,Date,Session,SRS Total,Notes\n"


def profile(**overrides: object) -> ExportProfile:
    base: dict[str, object] = {"instruments": ["SRS"], "columns": COLUMNS}
    return ExportProfile(**{**base, **overrides})


def rejection(tmp_path: Path, name: str, data: str, **overrides: object) -> str:
    path = tmp_path / name
    path.write_text(data, encoding="utf-8")
    with pytest.raises(ExportRejected) as info:
        read_export(path, profile(**overrides))
    return str(info.value)


@pytest.mark.parametrize(
    ("value", "kind"),
    [(None, "empty"), ("  ", "empty"), ('""', "empty"), ("8,5", "a number shape"), ("-1e3", "a number shape"),
     ("05.01.2026", "a date shape"), ("2026-01-05T10:00", "a date shape"), ("Jane Doe", "text"), ("n/a", "text")],
)  # fmt: skip
def test_value_kind(value: str | None, kind: str) -> None:
    assert value_kind(value) == kind


def test_a_badly_quoted_free_text_cell_is_described_not_quoted(tmp_path: Path) -> None:
    text = HEADER + "C1,t1,2026-01-05,1,30,fine\n" + f'C2,t1,2026-01-12,2,31,"Jane Doe {CANARY}" cancelled\n'
    message = rejection(tmp_path, "notes.csv", text)
    assert CANARY not in message and "Jane" not in message
    # the unmapped header is not named: in a file without a header row it would be a cell too
    assert message == (
        "notes.csv: cannot parse as CSV with delimiter ',': line 3, column 6: a text cell is quoted wrongly "
        "(a quote inside a field must be doubled, and a quoted field must end with a quote)"
    )


def test_a_badly_quoted_mapped_cell_names_its_column(tmp_path: Path) -> None:
    text = HEADER + f'"{CANARY} Smith" x,t1,2026-01-05,1,30,\n'
    message = rejection(tmp_path, "client.csv", text)
    assert CANARY not in message
    assert "line 2, column 1 ('Client'): a text cell is quoted wrongly" in message


def test_an_unclosed_quote_holding_a_line_break_is_not_quoted(tmp_path: Path) -> None:
    text = HEADER + f'C1,t1,2026-01-05,1,30,"Jane {CANARY}\nsecond line\n'
    message = rejection(tmp_path, "open.csv", text)
    assert CANARY not in message and "Jane" not in message


def test_a_json_key_given_twice_is_described_not_quoted(tmp_path: Path) -> None:
    document = '{"sessions": [{"Client": "C1", "Jane KEY": 1, "Jane KEY": 2}]}'.replace("KEY", CANARY)
    message = rejection(tmp_path, "keys.json", document, format="json", records="sessions")
    assert CANARY not in message
    assert message == "keys.json: a JSON object has the key (text) twice: which value to use is ambiguous"


def test_json_keys_that_flatten_together_are_not_quoted(tmp_path: Path) -> None:
    document = json.dumps({"sessions": [{f"Jane.{CANARY}": 1, "Jane": {CANARY: 2}}]})
    message = rejection(tmp_path, "dots.json", document, format="json", records="sessions")
    assert CANARY not in message and "two fields flatten to the same name (text)" in message


def test_an_ndjson_duplicate_key_names_the_line(tmp_path: Path) -> None:
    lines = '{"Client": "C1"}\n{"KEY": 1, "KEY": 2}\n'.replace("KEY", CANARY)
    message = rejection(tmp_path, "keys.ndjson", lines, format="ndjson")
    assert CANARY not in message
    assert message.startswith("keys.ndjson: line 2: a JSON object has the key (text) twice")


def test_engine_messages_keep_dtypes_and_known_columns_only() -> None:
    raw = "could not parse `\"Jane Doe\" cancelled` as dtype `str` at column 'Notes' (column number 6)\n\nhint: `x`"
    assert engine_problem(Exception(raw), ["SRS Total"]) == (
        "could not parse <text> as dtype `str` at column <text> (column number 6)"
    )
    assert (
        redact_values("bad value '37,5' in 'SRS Total'", ["SRS Total"]) == "bad value <a number shape> in 'SRS Total'"
    )
    assert redact_values("open `Jane Doe", []) == "open <text>"
    assert redact_values("',' expected after '\"'", []) == "',' expected after '\"'"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Dr Lee\x1b[2J\x1b[31m red", "Dr Lee red"),
        ("Dr Lee\r\nFAKE: flag resolved", "Dr Lee FAKE: flag resolved"),
        ("title\x1b]0;pwned\x07 ok", "title ok"),
        ("<!channel> look", "\u2039!channel\u203a look"),
        ("<!here|here> and <@U024BE7LH> and <#C1|general>", "\u2039!here|here\u203a and \u2039@U024BE7LH\u203a and \u2039#C1|general\u203a"),
        ("@here @channel @Everyone", "\uff20here \uff20channel \uff20Everyone"),
        ("lee@example.org", "lee@example.org"),
        ("north-t05", "north-t05"),
        ("a\u202eevil", "a evil"),
    ],
)  # fmt: skip
def test_plain_text_strips_controls_and_neutralises_mentions(raw: str, clean: str) -> None:
    assert plain_text(raw) == clean
    assert plain_text(plain_text(raw)) == clean  # idempotent


def test_plain_text_caps_length() -> None:
    assert plain_text("x" * 50, 10) == "x" * 9 + "…"


def test_a_rejected_export_keeps_cells_out_of_the_ledger_and_the_result(settings: Settings) -> None:
    add_clinic(settings, NORTH)
    inbox = settings.inbox / "north"
    inbox.mkdir(parents=True)
    path = inbox / "bad.csv"
    path.write_text(
        "Client ID,Clinician,Session Date,Session #,SRS Relationship,SRS Goals,SRS Approach,SRS Overall,Notes\n"
        f'C1,t1,01/05/2026,1,9,9,9,9,"Jane {CANARY}" cancelled\n',
        encoding="utf-8",
    )
    result = ingest_file(path, settings)
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        (error,) = con.execute("SELECT error FROM exports").fetchone() or ("",)
    assert result.status == "rejected" and CANARY not in str(result) and CANARY not in error
    assert error == "cannot parse as CSV with delimiter ',': line 2, column 9: a text cell is quoted wrongly " + (
        "(a quote inside a field must be doubled, and a quoted field must end with a quote)"
    )


def test_an_engine_fault_after_reading_rejects_the_file_without_its_value(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import polars as pl

    import flows.exports

    # A fault past the reader cannot be produced on demand (the fuzz tests find none): it is simulated here.
    def fault(*_args: object, **_kwargs: object) -> None:
        raise pl.exceptions.ComputeError(f"conversion from `str` to `date` failed in column 'x' for value `{CANARY}`")

    monkeypatch.setattr(flows.exports, "rating_candidates", fault)
    add_clinic(settings, NORTH)
    inbox = settings.inbox / "north"
    inbox.mkdir(parents=True)
    path = inbox / "fine.csv"
    path.write_text(
        "Client ID,Clinician,Session Date,Session #,SRS Relationship,SRS Goals,SRS Approach,SRS Overall\n"
        "C1,t1,01/05/2026,1,9,9,9,9\n",
        encoding="utf-8",
    )
    result = ingest_file(path, settings)
    assert result.status == "rejected" and CANARY not in str(result)
    # the safety net names the error's class and where, never the engine's message (which quotes the cell)
    assert result.error is not None and result.error.startswith("fine.csv: unexpected ComputeError at exports.py:")
    assert "while reading and checking the file" in result.error
    assert (settings.archive / "north" / "rejected").is_dir()  # archived, the rest of a run goes on
