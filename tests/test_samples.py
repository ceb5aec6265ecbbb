"""The sample generator: reproducible files whose planted content can be recounted from the files alone."""

from __future__ import annotations

import csv
import itertools
import json
import re
import tomllib
import zipfile
from collections import Counter, defaultdict
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest
import tomlkit

from alliance.clinics import KEY_FIELDS, Clinic, normalise_column, parse_clinics
from alliance.instruments import instrument
from alliance.samples import LAYOUTS, PATTERNS, SampleFile, SampleSet, add_profiles, generate_sample

TODAY = date(2025, 3, 1)

Record = dict[str, str]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleSet:
    return generate_sample(tmp_path_factory.mktemp("sample"), today=TODAY, profile="clean")


@pytest.fixture(scope="module")
def clinics(sample: SampleSet) -> dict[str, Clinic]:
    return parse_clinics(profiles_toml(sample.profiles))


def profiles_toml(profiles: dict[str, dict]) -> str:
    return tomlkit.dumps({"clinics": profiles})


def first_file(sample: SampleSet, layout: str) -> SampleFile:
    return next(f for f in sample.files if f.layout == layout and not f.corrected_expected)


# ---------------------------------------------------------------- reading the files back, independently


def read_table(file: SampleFile) -> tuple[list[str], list[list[str]]]:
    """Header and rows as strings, whatever the layout; JSON records flattened to dotted paths."""
    if file.layout == "us_csv":
        with file.path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))
        return rows[0], rows[1:]
    if file.layout == "eu_csv":
        with file.path.open(encoding="cp1252", newline="") as handle:
            rows = list(csv.reader(handle, delimiter=";"))
        return rows[0], rows[1:]
    if file.layout == "xlsx":
        frame = pl.read_excel(file.path, sheet_name="Sessions", infer_schema_length=0)
        return frame.columns, [["" if v is None else v for v in row] for row in frame.iter_rows()]
    return flatten_json(json.loads(file.path.read_text(encoding="utf-8")))


def flatten_json(document: dict) -> tuple[list[str], list[list[str]]]:
    records = []
    for client in document["clients"]:
        parent = {f"clients.{k}": v for k, v in client.items() if k != "sessions"}
        for session in client["sessions"]:
            record = dict(parent)
            for key, value in session.items():
                if isinstance(value, dict):
                    record |= {f"clients.sessions.{key}.{k}": v for k, v in value.items()}
                elif value is not None:
                    record[f"clients.sessions.{key}"] = value
            records.append({k: "" if v is None else str(v) for k, v in record.items()})
    header = sorted({k for r in records for k in r})
    return header, [[r.get(k, "") for k in header] for r in records]


def canonical_records(file: SampleFile, clinic: Clinic) -> list[Record]:
    """Rows keyed by canonical field through the clinic profile (case/space-insensitive headers)."""
    header, rows = read_table(file)
    wanted = {normalise_column(vendor): field for vendor, field in clinic.export.columns.items()}
    index = {wanted[normalise_column(h)]: i for i, h in enumerate(header) if normalise_column(h) in wanted}
    assert set(index) == set(clinic.export.columns.values()), "every profile column is in the file"
    return [{field: row[i] for field, i in index.items()} for row in rows]


def rating_fields(code: str) -> list[str]:
    inst = instrument(code)
    return [*inst.item_fields, inst.total_field]


def number(text: str) -> float:
    return float(text.replace(",", "."))


def parse_date(text: str, clinic: Clinic) -> date | None:
    for fmt in [*clinic.export.date_formats, "%Y-%m-%d %H:%M:%S"]:
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def rating_problem(record: Record, code: str) -> bool:
    inst = instrument(code)
    try:
        items = [number(record[f]) for f in inst.item_fields]
        total = number(record[inst.total_field])
    except ValueError:
        return True
    in_range = all(inst.item_min <= v <= inst.item_max for v in items)
    return not in_range or abs(sum(items) - total) > 1


def key_problem(record: Record, clinic: Clinic) -> bool:
    when = parse_date(record["session_date"], clinic)
    return not record["client_ref"] or when is None or when > TODAY or int(record["session_number"]) < 1


def invalid_ratings(records: list[Record], clinic: Clinic) -> int:
    """A small validator written from the rules in domain.md, to recount what the generator claims."""
    keys = Counter(tuple(r[f] for f in KEY_FIELDS) for r in records)
    bad = 0
    for record in records:
        present = [c for c in clinic.export.instruments if any(record.get(f) for f in rating_fields(c))]
        duplicate = keys[tuple(record[f] for f in KEY_FIELDS)] > 1
        if duplicate or key_problem(record, clinic):
            bad += len(present)
        else:
            bad += sum(rating_problem(record, c) for c in present)
    return bad


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    def run(folder: str, seed: int) -> SampleSet:
        return generate_sample(
            tmp_path / folder, weeks=10, seed=seed, today=TODAY, dyads_per_clinic=10, profile="clean"
        )

    first, again, other = run("a", 3), run("b", 3), run("c", 4)
    assert first.dyads == again.dyads and first.canaries == again.canaries
    for one, two, three in zip(first.files, again.files, other.files, strict=True):
        if one.layout == "xlsx":
            assert sheet_xml(one.path) == sheet_xml(two.path)
            continue
        assert one.path.read_bytes() == two.path.read_bytes()
        assert one.path.read_bytes() != three.path.read_bytes()


def sheet_xml(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as book:
        return {name: book.read(name) for name in book.namelist() if name.startswith("xl/worksheets/")}


# ---------------------------------------------------------------- profiles and layouts


def test_profiles_validate_and_match_their_layouts(sample: SampleSet, clinics: dict[str, Clinic]) -> None:
    assert list(clinics) == ["northside", "rheinpark", "harbor", "lakeview"]
    formats = {file.clinic_id: file.layout for file in sample.files}
    assert formats == dict(zip(clinics, LAYOUTS, strict=True))
    assert clinics["rheinpark"].export.encoding == "cp1252" and clinics["rheinpark"].export.decimal_comma
    assert clinics["harbor"].export.sheet == "Sessions" and clinics["harbor"].export.instruments == ["WAI_SR"]
    assert clinics["lakeview"].export.records == "clients.sessions"
    assert clinics["northside"].timezone == "America/Chicago"


def test_files_are_named_by_clinic_and_day_with_the_re_export_last(sample: SampleSet) -> None:
    names = [f.path.name for f in sample.files]
    assert names[:4] == [
        "northside_20250301.csv",
        "rheinpark_20250301.csv",
        "harbor_20250301.xlsx",
        "lakeview_20250301.json",
    ]
    assert names[-1] == "northside_20250301_corrected.csv"
    assert all(f.path.parent.name == f.clinic_id for f in sample.files)


def test_later_clinics_cycle_layouts_with_numbered_ids(tmp_path: Path) -> None:
    made = generate_sample(tmp_path, clinics=6, weeks=9, today=TODAY, dyads_per_clinic=5, profile="clean")
    assert list(parse_clinics(profiles_toml(made.profiles))) == [
        "northside", "rheinpark", "harbor", "lakeview", "clinic05", "clinic06",
    ]  # fmt: skip
    assert [f.layout for f in made.files if not f.corrected_expected][4:] == ["us_csv", "eu_csv"]


def test_eu_export_is_cp1252_with_semicolons_decimal_commas_and_quirky_headers(sample: SampleSet) -> None:
    raw = first_file(sample, "eu_csv").path.read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    text = raw.decode("cp1252")
    header = text.splitlines()[0].split(";")
    assert "KLIENT-NR. " in header and "Gesamteinschätzung" in header
    assert re.search(r";\d{1,2},\d;", text)
    assert "ä" in text or "ü" in text


def test_us_export_has_quoted_notes_with_commas_and_newlines(sample: SampleSet) -> None:
    text = first_file(sample, "us_csv").path.read_text(encoding="utf-8")
    assert not text.startswith("\ufeff")
    assert re.search(r'"[^"]*,[^"]*"', text) and re.search(r'"[^"\r]*\n[^"]*"', text)


def test_xlsx_has_a_sessions_sheet_with_real_dates(sample: SampleSet) -> None:
    path = first_file(sample, "xlsx").path
    with zipfile.ZipFile(path) as book:
        workbook = book.read("xl/workbook.xml").decode()
    assert 'name="Sessions"' in workbook and 'name="About"' in workbook
    frame = pl.read_excel(path, sheet_name="Sessions")
    # read as text, date cells show their time part; only the planted garbage date was written as text
    as_text = pl.read_excel(path, sheet_name="Sessions", infer_schema_length=0)["Date of Session"]
    garbage = as_text.filter(~as_text.str.contains(r"^\d{4}-\d{2}-\d{2} 00:00:00$"))
    assert garbage.to_list() == [f"31/31/{TODAY.year}"]
    assert frame["WAI 1"].dtype.is_integer() and frame["Session No"].dtype.is_integer()


def test_json_nests_sessions_under_clients(sample: SampleSet) -> None:
    document = json.loads(first_file(sample, "json").path.read_text(encoding="utf-8"))
    assert set(document["export"]) == {"clinic", "generated"}
    client = document["clients"][0]
    assert set(client) == {"client_ref", "name", "therapist", "sessions"}
    session = client["sessions"][0]
    assert set(session) == {"date", "number", "srs", "ors", "note"}
    assert set(session["srs"]) == {"relationship", "goals", "approach", "overall", "total"}
    sessions = [s for c in document["clients"] for s in c["sessions"]]
    assert any(s["ors"] is None for s in sessions) and any(s["ors"] for s in sessions)


# ---------------------------------------------------------------- counts


@pytest.mark.parametrize("layout", LAYOUTS)
def test_rows_and_invalid_ratings_recount_from_the_file(
    sample: SampleSet, clinics: dict[str, Clinic], layout: str
) -> None:
    file = first_file(sample, layout)
    clinic = clinics[file.clinic_id]
    records = canonical_records(file, clinic)
    ratings = sum(
        any(record.get(f) for f in rating_fields(code)) for record in records for code in clinic.export.instruments
    )
    assert ratings == file.rows_expected
    assert invalid_ratings(records, clinic) == file.invalid_expected
    assert 9 <= file.invalid_expected <= max(9, 0.03 * file.rows_expected)


def test_corrected_re_export_changes_five_alliance_ratings_consistently(
    sample: SampleSet, clinics: dict[str, Clinic]
) -> None:
    original, corrected = first_file(sample, "us_csv"), sample.files[-1]
    assert corrected.corrected_expected == 5 and corrected.invalid_expected == original.invalid_expected
    before = canonical_records(original, clinics["northside"])
    after = canonical_records(corrected, clinics["northside"])
    assert len(before) == len(after)
    changed = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert len(changed) == 5
    srs = set(rating_fields("SRS"))
    for old, new in changed:
        assert {f for f in old if old[f] != new[f]} <= srs
        assert not rating_problem(new, "SRS")
        assert sum(old[f] != new[f] for f in srs) == 2


# ---------------------------------------------------------------- canaries


def test_canaries_sit_in_free_text_only(sample: SampleSet, clinics: dict[str, Clinic]) -> None:
    found: set[str] = set()
    for file in sample.files:
        _, rows = read_table(file)
        text = "\n".join("\t".join(row) for row in rows)
        found |= set(re.findall(rf"CANARY-{file.clinic_id}-\d+", text))
        for record in canonical_records(file, clinics[file.clinic_id]):
            assert not any("CANARY" in value for value in record.values())
    assert found == set(sample.canaries)
    assert len(sample.canaries) == len(set(sample.canaries))
    assert {c.split("-")[1] for c in sample.canaries} == set(clinics)


# ---------------------------------------------------------------- planted trajectories


def totals_by_dyad(sample: SampleSet, clinics: dict[str, Clinic]) -> dict[tuple[str, str], list[Record]]:
    sessions: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for file in sample.files:
        if file.corrected_expected:
            continue
        for record in canonical_records(file, clinics[file.clinic_id]):
            sessions[file.clinic_id, record["client_ref"]].append(record)
    return sessions


def test_every_clinic_has_every_pattern(sample: SampleSet) -> None:
    per_clinic = Counter((d.clinic_id, d.pattern) for d in sample.dyads)
    for clinic_id in {d.clinic_id for d in sample.dyads}:
        assert all(per_clinic[clinic_id, p] >= 1 for p in PATTERNS)
        assert per_clinic[clinic_id, "stable"] >= 0.5 * 30


def test_planted_dyads_are_weekly_numbered_and_in_the_past(sample: SampleSet, clinics: dict[str, Clinic]) -> None:
    sessions = totals_by_dyad(sample, clinics)
    for dyad in sample.dyads:
        rows = sorted(sessions[dyad.clinic_id, dyad.client_ref], key=lambda r: int(r["session_number"]))
        clinic = clinics[dyad.clinic_id]
        assert [int(r["session_number"]) for r in rows] == list(range(1, len(rows) + 1))
        dates = [parse_date(r["session_date"], clinic) or TODAY for r in rows]
        assert max(dates) < TODAY
        assert all((later - earlier).days >= 5 for earlier, later in itertools.pairwise(dates))
        assert {r["therapist_id"] for r in rows} == {dyad.therapist_id}
        assert invalid_ratings(rows, clinic) == 0
        if dyad.pattern != "stable":
            assert len(rows) >= 8


def test_planted_shapes_hold_on_each_scale(sample: SampleSet, clinics: dict[str, Clinic]) -> None:
    sessions = totals_by_dyad(sample, clinics)
    for dyad in sample.dyads:
        inst = instrument(dyad.instrument)
        unit = (inst.total_max - inst.total_min) / 40  # one SRS point on this scale
        rows = sorted(sessions[dyad.clinic_id, dyad.client_ref], key=lambda r: int(r["session_number"]))
        x = [number(r[inst.total_field]) for r in rows]
        e = dyad.event_session - 1 if dyad.event_session else None
        if dyad.pattern == "stable":
            assert e is None and min(x) >= inst.total_max - 4 * unit - 1e-9
            continue
        assert e is not None and e >= 3
        if dyad.pattern == "sudden_loss":
            assert x[e - 1] - x[e] >= 0.25 * x[e - 1] and len(x) - e >= 4
            assert all(v <= 0.75 * x[e - 1] for v in x[e:])
        elif dyad.pattern == "slow_decline":
            steps = [x[i - 1] - x[i] for i in range(e, e + 5)]
            assert all(0 < s <= 2 * unit for s in steps) and sum(steps) >= 3 * unit
        elif dyad.pattern == "single_low":
            below = [i for i, v in enumerate(x) if v < inst.total_max - 6 * unit]
            assert below == [e] and e <= len(x) - 3
        else:
            mean = sum(x) / len(x)
            assert mean - x[e] >= 8 * unit
            assert x[-1] >= inst.total_max - 4 * unit - 1e-9


# ---------------------------------------------------------------- clinics.toml


def test_add_profiles_keeps_comments_and_is_idempotent(sample: SampleSet, tmp_path: Path) -> None:
    clinics_file = tmp_path / "clinics.toml"
    clinics_file.write_text("# network profiles, edited by hand\n", encoding="utf-8")
    assert add_profiles(clinics_file, sample.profiles) == list(sample.profiles)
    once = clinics_file.read_text(encoding="utf-8")
    add_profiles(clinics_file, sample.profiles)
    twice = clinics_file.read_text(encoding="utf-8")
    assert twice == once
    assert twice.startswith("# network profiles, edited by hand")
    assert all(twice.count(f"[clinics.{cid}]") == 1 for cid in sample.profiles)
    assert set(parse_clinics(twice)) == set(sample.profiles)


def test_add_profiles_replaces_a_changed_profile(sample: SampleSet, tmp_path: Path) -> None:
    clinics_file = tmp_path / "clinics.toml"
    add_profiles(clinics_file, sample.profiles)
    renamed = {"harbor": {**sample.profiles["harbor"], "name": "Harbor (renamed)"}}
    add_profiles(clinics_file, renamed)
    parsed = tomllib.loads(clinics_file.read_text(encoding="utf-8"))
    assert parsed["clinics"]["harbor"]["name"] == "Harbor (renamed)"
    assert list(parsed["clinics"]) == list(sample.profiles)


def test_generate_rejects_a_window_too_short_for_the_patterns(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="weeks"):
        generate_sample(tmp_path, weeks=4, today=TODAY, profile="clean")
