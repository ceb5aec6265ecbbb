"""Literal-frame tests of the canonical mapping and of every validation rule."""

from __future__ import annotations

from datetime import date

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from alliance.clinics import ExportProfile
from alliance.errors import ExportRejected
from alliance.instruments import instrument
from expectations import validate_ratings
from transforms.mapping import rating_candidates, resolve_columns, to_canonical, unrated_rows
from transforms.quarantine import Screened, reason, screen

SRS = instrument("SRS")
TODAY = date(2026, 3, 1)
COLUMNS = {
    "Client": "client_ref",
    "Therapist": "therapist_id",
    "Date": "session_date",
    "No": "session_number",
    "Rel": "srs_relationship",
    "Goals": "srs_goals",
    "Approach": "srs_approach",
    "Overall": "srs_overall",
    "Total": "srs_total",
    "ORS": "ors_total",
}
PROFILE = ExportProfile(instruments=["SRS", "ORS"], columns=COLUMNS, date_format="%d.%m.%Y", decimal_comma=True)
GOOD = {
    "Client": "K1",
    "Therapist": "t1",
    "Date": "05.01.2026",
    "No": "3",
    "Rel": "9,5",
    "Goals": "9",
    "Approach": "9,1",
    "Overall": "9,2",
    "Total": "36,8",
    "ORS": "21",
}


def raw_frame(*rows: dict[str, str | None]) -> pl.DataFrame:
    frame = pl.DataFrame(list(rows), schema=dict.fromkeys(GOOD, pl.String))
    return frame.with_columns(pl.int_range(2, frame.height + 2).alias("source_line"))


def canonical(*rows: dict[str, str | None]) -> pl.DataFrame:
    raw = raw_frame(*rows)
    return to_canonical(raw, resolve_columns(raw.columns, COLUMNS, "f.csv"))


def test_columns_match_by_name_not_position_ignoring_case_and_spacing() -> None:
    raw = pl.DataFrame({"  client ": ["K1"], "THERAPIST": ["t"], "extra": ["free text"], "date": ["x"]})
    mapping = {"Client": "client_ref", "Therapist": "therapist_id", "Date": "session_date"}
    resolved = resolve_columns(raw.columns, mapping, "f.csv")
    assert resolved == {"  client ": "client_ref", "THERAPIST": "therapist_id", "date": "session_date"}
    mapped = to_canonical(raw.with_columns(pl.lit(2).alias("source_line")), resolved)
    assert "extra" not in mapped.columns  # unmapped free text never goes further
    assert mapped["client_ref"].to_list() == ["K1"]


def test_missing_column_rejects_the_file_naming_it() -> None:
    with pytest.raises(ExportRejected) as info:
        resolve_columns(["Client", "Therapist"], {"Client": "client_ref", "Session Date": "session_date"}, "x.csv")
    assert str(info.value).startswith("x.csv: missing required column(s) 'Session Date' (-> session_date)")


def test_good_row_becomes_a_typed_candidate() -> None:
    candidates = rating_candidates(canonical(GOOD), PROFILE, SRS, TODAY)
    row = candidates.row(0, named=True)
    assert row["session_date"] == date(2026, 1, 5)
    assert row["session_number"] == 3
    assert row["srs_relationship"] == 9.5  # decimal comma
    assert row["total"] == pytest.approx(36.8)
    assert row["total_gap"] == pytest.approx(0.0)
    assert row["parse_errors"] == []
    assert row["days_ahead"] < 0


def test_total_is_computed_from_items_when_the_file_has_none() -> None:
    candidates = rating_candidates(canonical({**GOOD, "Total": None}), PROFILE, SRS, TODAY)
    assert candidates["total"].to_list() == [pytest.approx(36.8)]


def test_item_scale_of_the_file_is_converted() -> None:
    profile = PROFILE.model_copy(update={"item_max": {"SRS": 100.0}})
    row = {**GOOD, "Rel": "95", "Goals": "90", "Approach": "91", "Overall": "92", "Total": "368"}
    candidates = rating_candidates(canonical(row), profile, SRS, TODAY)
    assert candidates["srs_relationship"].to_list() == [9.5]
    assert candidates["total"].to_list() == [pytest.approx(36.8)]


def test_instrument_rows_only_where_it_has_values() -> None:
    frame = canonical(GOOD, {**GOOD, "No": "4", "ORS": None})
    ors = rating_candidates(frame, PROFILE, instrument("ORS"), TODAY)
    assert ors["session_number"].to_list() == [3]
    empty = {k: (v if k in ("Client", "Therapist", "Date", "No") else None) for k, v in GOOD.items()}
    assert unrated_rows(canonical(GOOD, empty), PROFILE)["source_line"].to_list() == [3]


def rules_of(*rows: dict[str, str | None]) -> list[list[str]]:
    """Broken rules per input row, in order (empty list: accepted)."""
    candidates = rating_candidates(canonical(*rows), PROFILE, SRS, TODAY)
    candidates = candidates.with_row_index("row_id").with_columns(
        pl.col("row_id").cast(pl.Int64), pl.col("client_ref").alias("client_id")
    )
    screened = screen(candidates, validate_ratings(candidates, SRS), SRS, {}, "e1", "c1")
    by_line = dict(zip(screened.quarantined["source_line"], screened.quarantined["rules"], strict=True))
    assert screened.accepted.height + screened.quarantined.height == candidates.height
    return [sorted(by_line.get(line, [])) for line in candidates["source_line"]]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, []),
        ({"Client": None}, ["missing:client_ref"]),
        ({"Therapist": "  "}, ["missing:therapist_id"]),
        ({"Date": None}, ["missing:session_date"]),
        ({"No": None}, ["missing:session_number"]),
        ({"Goals": None, "Total": None}, ["missing:srs_goals", "missing:total"]),
        ({"Goals": None}, ["missing:srs_goals"]),
        ({"Goals": "n/a"}, ["not_a_number:srs_goals"]),
        ({"Total": "viel"}, ["not_a_number:total"]),
        ({"Goals": "10,1", "Total": "37,9"}, ["out_of_range:srs_goals"]),
        ({"Goals": "-0,1", "Total": "27,7"}, ["out_of_range:srs_goals"]),
        ({"Goals": "10", "Total": "37,8"}, []),  # the top of the scale is valid
        ({"Total": "37,4"}, ["total_mismatch:total"]),  # 0.6 off
        ({"Total": "37"}, []),  # a total rounded to a whole number is within rounding
        ({"Date": "31.02.2026"}, ["bad_date:session_date"]),
        ({"Date": "2026-01-05"}, []),  # ISO is always accepted
        ({"Date": "01.03.2026"}, []),  # today is not the future
        ({"Date": "02.03.2026"}, ["date_in_future:session_date"]),
        ({"No": "0"}, ["out_of_range:session_number"]),
        ({"No": "-2"}, ["out_of_range:session_number"]),
        ({"No": "2,5"}, ["not_an_integer:session_number"]),
        ({"No": "zwei"}, ["not_an_integer:session_number"]),
        ({"No": "99999999999999999999"}, ["out_of_range:session_number"]),  # beyond any integer type
        ({"No": "9" * 400}, ["out_of_range:session_number"]),  # beyond any float
        ({"No": "1e3"}, ["not_an_integer:session_number"]),
        ({"Date": "05.01.26"}, ["implausible_date:session_date"]),  # %Y reads '26' as year 26
        ({"Date": "05.01.0000"}, ["implausible_date:session_date"]),
        ({"Date": "31.12.1989"}, ["implausible_date:session_date"]),
        ({"Date": "01.01.1990"}, []),
        ({"Client": "\u200bK1\ufeff"}, []),
        ({"Client": "\u200b\u2060"}, ["missing:client_ref"]),
    ],
)
def test_each_validation_rule(change: dict[str, str | None], expected: list[str]) -> None:
    assert rules_of({**GOOD, **change}) == [expected]


def test_invisible_characters_are_removed_and_text_composed_before_anything_else() -> None:
    frame = canonical(
        {**GOOD, "Client": "K\u200b1"},
        {**GOOD, "Client": "\ufeffK1\u00ad"},
        {**GOOD, "Client": "K1", "Goals": "9\u200e"},
    )
    assert frame["client_ref"].to_list() == ["K1", "K1", "K1"]
    assert frame["srs_goals"].to_list() == ["9", "9", "9"]
    composed = canonical({**GOOD, "Client": "Jos\u0065\u0301"})  # e + combining acute: the same as é
    assert composed["client_ref"].to_list() == ["Jos\u00e9"]
    spaced = canonical({**GOOD, "Client": "K\u00a01"}, {**GOOD, "Client": "K\u20091"}, {**GOOD, "Client": "K 1"})
    assert spaced["client_ref"].to_list() == ["K 1", "K 1", "K 1"]  # no-break and thin spaces look like spaces


def test_values_are_stored_at_the_instruments_precision() -> None:
    row = {**GOOD, "Rel": "8,9", "Goals": "10", "Approach": "9,7", "Overall": "10", "Total": None}
    (total,) = rating_candidates(canonical(row), PROFILE, SRS, TODAY)["total"].to_list()
    assert total == 38.6 and repr(total) == "38.6"  # the float sum is 38.599999999999994
    halves = {**GOOD, "Rel": "9,125", "Total": None}  # SRS keeps 2 decimals, rounding halves away from zero
    assert rating_candidates(canonical(halves), PROFILE, SRS, TODAY)["srs_relationship"].to_list() == [9.13]


def test_a_format_giving_a_plausible_date_wins_over_one_giving_year_26() -> None:
    profile = PROFILE.model_copy(update={"date_format": ["%d.%m.%Y", "%d.%m.%y"]})
    dates = rating_candidates(canonical({**GOOD, "Date": "05.01.26"}), profile, SRS, TODAY)["session_date"]
    assert dates.to_list() == [date(2026, 1, 5)]


def test_parse_failures_say_what_kind_of_value_failed() -> None:
    rows = [
        {**GOOD, "Goals": "9,5,1", "Total": None},  # no kind to name: the rule's own text
        {**GOOD, "Goals": "nan", "Total": None},
        {**GOOD, "Goals": "neun", "Total": None},
        {**GOOD, "Goals": "1e1", "Total": None},
        {**GOOD, "Goals": "?", "Total": None},
        {**GOOD, "No": "2.5"},
    ]
    candidates = rating_candidates(canonical(*rows), PROFILE, SRS, TODAY)
    details = [[f["detail"] for f in failures] for failures in candidates["parse_failures"].to_list()]
    assert details == [
        [None],
        ["is not a number (nan or infinity)"],
        ["is text, not a number"],
        ["is a number in exponent notation, not a plain number"],
        [None],
        ["has a fractional part, not a whole number"],
    ]


def test_duplicate_key_within_a_file_quarantines_every_copy() -> None:
    other = {**GOOD, "No": "4", "Date": "12.01.2026"}
    assert rules_of(GOOD, {**GOOD, "Overall": "9"}, other) == [
        ["duplicate_in_file:session_number"],
        ["duplicate_in_file:session_number"],
        [],
    ]


def test_reasons_name_line_and_vendor_column() -> None:
    text = reason("out_of_range:srs_goals", 14, {"srs_goals": "SRS Goals & Topics"}, SRS)
    assert text == "line 14, column 'SRS Goals & Topics' (srs_goals): is outside the allowed range 0–10"
    assert reason("total_mismatch:total", 3, {"srs_total": "Total"}, SRS).startswith("line 3, column 'Total' (total)")
    assert reason("no_rating", 9, {}, None) == "line 9: carries no value of any instrument in the profile"
    assert reason("out_of_range:session_number", 4, {"session_number": "No"}, SRS) == (
        "line 4, column 'No' (session_number): is outside the allowed range 1–10000"
    )


VENDOR_OF = {canonical: vendor for vendor, canonical in COLUMNS.items()}
CELL = st.lists(
    st.sampled_from(["0", "1", "2", "9", "26", "0000", "2026", "/", ".", ",", "-", "+", "e", " ", "#", "x", "\u200b"]),
    max_size=8,
).map("".join)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.fixed_dictionaries({k: CELL for k in ("Date", "No", "Goals", "Total")}), min_size=1))
def test_any_cell_text_is_typed_or_gets_a_parse_rule_never_an_exception(rows: list[dict[str, str]]) -> None:
    candidates = rating_candidates(canonical(*({**GOOD, **row} for row in rows)), PROFILE, SRS, TODAY)
    clean = candidates.filter(pl.col("parse_errors").list.len() == 0)
    # what passes parsing is safe for scoring: a plausible date, a session number that fits, values at precision
    assert clean.filter(pl.col("session_date") < date(1990, 1, 1)).is_empty()
    assert clean.filter(pl.col("session_number").abs() > 2**53).is_empty()
    assert clean.filter(pl.col("total").round(2) != pl.col("total")).is_empty()
    with_ids = candidates.with_row_index("row_id").with_columns(
        pl.col("row_id").cast(pl.Int64), pl.col("client_ref").alias("client_id")
    )
    screened, general = _screened_both_ways(with_ids)
    assert screened.accepted.height + screened.quarantined.height == candidates.height
    assert_frame_equal(screened.accepted, general.accepted)
    assert_frame_equal(screened.quarantined, general.quarantined)
    raw = {value for row in rows for value in row.values() if "#" in value and "x" in value}  # a shape turns x into A
    reasons = [text for texts in screened.quarantined["reasons"].to_list() for text in texts]
    assert not [value for value in raw for text in reasons if value.strip() and value.strip() in text]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.fixed_dictionaries({k: CELL for k in ("Date", "No", "Goals", "Total")}), min_size=2, max_size=12)
)
def test_rows_mapped_together_break_the_rules_they_break_alone(rows: list[dict[str, str]]) -> None:
    """Parse failures are worked out only on the rows that broke a rule: each row gets the lists it gets alone."""
    frame = canonical(*({**GOOD, **row} for row in rows))
    together = rating_candidates(frame, PROFILE, SRS, TODAY)
    alone = pl.concat([rating_candidates(frame.slice(i, 1), PROFILE, SRS, TODAY) for i in range(frame.height)])
    assert_frame_equal(together, alone)
    rules = together["parse_failures"].list.eval(pl.element().struct.field("rule"))
    assert rules.to_list() == together["parse_errors"].to_list()


def _screened_both_ways(with_ids: pl.DataFrame) -> tuple[Screened, Screened]:
    """``screen`` with no failures, and down its general path: a failure of a row the frame does not hold is joined
    and explained like any other, and changes nothing."""
    none = pl.DataFrame(schema={"row_id": pl.Int64, "rule": pl.String})
    elsewhere = pl.DataFrame({"row_id": [with_ids.height + 10], "rule": ["missing:total"]})
    return screen(with_ids, none, SRS, VENDOR_OF, "e", "c"), screen(with_ids, elsewhere, SRS, VENDOR_OF, "e", "c")


@settings(max_examples=50, deadline=None)
@given(
    numbers=st.lists(st.integers(1, 60), min_size=1, max_size=30), totals=st.lists(st.sampled_from(["36,8", "", "x"]))
)
def test_a_file_whose_rows_all_pass_is_screened_as_the_general_path_screens_it(
    numbers: list[int], totals: list[str]
) -> None:
    """The shortcut for a file without a failing row (most files) accepts what the join would accept, in order."""
    rows = [
        {**GOOD, "No": str(n), "Total": totals[i] if i < len(totals) else GOOD["Total"]} for i, n in enumerate(numbers)
    ]
    candidates = rating_candidates(canonical(*rows), PROFILE, SRS, TODAY)
    with_ids = candidates.with_row_index("row_id").with_columns(
        pl.col("row_id").cast(pl.Int64), pl.col("client_ref").alias("client_id")
    )
    fast, general = _screened_both_ways(with_ids)
    assert_frame_equal(fast.accepted, general.accepted)
    assert_frame_equal(fast.quarantined, general.quarantined)
    if candidates["parse_errors"].list.len().sum() == 0:
        assert fast.quarantined.is_empty() and fast.accepted.height == len(rows)
