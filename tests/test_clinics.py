from __future__ import annotations

import pytest

from alliance.clinics import normalise_column, parse_clinics
from alliance.errors import ProfileError

GOOD = """
[clinics.north]
name = "North"
timezone = "America/Chicago"

[clinics.north.export]
format = "csv"
date_format = "%m/%d/%Y"
instruments = ["SRS"]

[clinics.north.export.columns]
"Client ID" = "client_ref"
"Clinician" = "therapist_id"
"Session Date" = "session_date"
"Session #" = "session_number"
"SRS Total" = "srs_total"
"""


def test_good_profile_loads() -> None:
    clinics = parse_clinics(GOOD)
    north = clinics["north"]
    assert north.export.instruments == ["SRS"]
    assert north.export.date_formats == ["%m/%d/%Y"]
    assert north.tz.key == "America/Chicago"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('format = "csv"', 'format = "parquet"', "clinic 'north': export.format:"),
        ('timezone = "America/Chicago"', 'timezone = "Mars/Olympus"', "clinic 'north': timezone: unknown timezone"),
        ('instruments = ["SRS"]', 'instruments = ["XYZ"]', "clinic 'north': export.instruments"),
        ('"SRS Total" = "srs_total"', '"SRS Total" = "srs_score"', "unknown canonical field 'srs_score'"),
        ('"Clinician" = "therapist_id"\n', "", "no vendor column maps to ['therapist_id']"),
        ('date_format = "%m/%d/%Y"', 'date_format = "mm/dd/yyyy"', "export.date_format: must be a strftime"),
        ('format = "csv"', 'format = "csv"\ndelimiter = ";;"', "export.delimiter: must be 'auto' or one character"),
        ('format = "csv"', 'format = "csv"\nencodng = "utf-8"', "export.encodng: Extra inputs are not permitted"),
        ('"SRS Total" = "srs_total"', '"SRS Total" = "srs_total"\n"ORS Total" = "ors_total"', "ORS"),
    ],
)
def test_bad_profile_names_clinic_and_key(old: str, new: str, expected: str) -> None:
    with pytest.raises(ProfileError) as info:
        parse_clinics(GOOD.replace(old, new, 1))
    assert str(info.value).startswith("clinics.toml: clinic 'north':") or "clinics.toml" in str(info.value)
    assert expected in str(info.value)


def test_vendor_names_differing_only_in_case_are_refused() -> None:
    text = GOOD.replace('"SRS Total" = "srs_total"', '"SRS Total" = "srs_total"\n"session date" = "srs_goals"')
    with pytest.raises(ProfileError, match="differ only in case or spacing"):
        parse_clinics(text)


def test_not_toml_is_refused() -> None:
    with pytest.raises(ProfileError, match="not valid TOML"):
        parse_clinics("[clinics.north\n")


@pytest.mark.parametrize(("raw", "normal"), [(" Client  ID ", "client id"), ("SESSION #", "session #")])
def test_column_names_match_ignoring_case_and_spacing(raw: str, normal: str) -> None:
    assert normalise_column(raw) == normal


def test_the_same_text_is_parsed_once_and_each_caller_gets_its_own_dict() -> None:
    first = parse_clinics(GOOD)
    first.pop("north")  # a caller changing its dict changes nobody else's
    again = parse_clinics(GOOD)
    assert list(again) == ["north"] and again["north"] is parse_clinics(GOOD)["north"]
    renamed = parse_clinics(GOOD.replace('name = "North"', 'name = "North Side"'))
    assert renamed["north"].name == "North Side"  # new text, new parse
