"""One seeded generator of realistic clinic exports, shared by the demo, the tests and the benchmark.

Each clinic gets an export in one vendor layout (US CSV, German CSV, Excel, nested JSON) with planted
alliance trajectories, a known number of invalid ratings and canary strings in its free-text columns,
so that every later stage can be checked against what was planted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import tomlkit
from tomlkit.items import Table

from alliance.samples.clinics import LAYOUTS, ClinicData, PlantedDyad, clinic_plan
from alliance.samples.layouts import profile as clinic_profile
from alliance.samples.layouts import write_eu_csv, write_json, write_us_csv, write_xlsx
from alliance.samples.network import EXTENSIONS, MIN_WEEKS, PATTERNS, build_clinic, corrected, flat_rows
from alliance.samples.realistic import REALISTIC_PATTERNS
from alliance.samples.trajectories import Scale

PROFILES = ("realistic", "clean")
__all__ = [
    "LAYOUTS",
    "PATTERNS",
    "PROFILES",
    "REALISTIC_PATTERNS",
    "PlantedDyad",
    "SampleFile",
    "SampleSet",
    "add_profiles",
    "generate_sample",
]


@dataclass(frozen=True)
class SampleFile:
    """One written export and the counts a correct ingest must reproduce."""

    clinic_id: str
    path: Path
    layout: str
    rows_expected: int
    invalid_expected: int
    corrected_expected: int


@dataclass(frozen=True)
class SampleSet:
    """Everything generate_sample wrote and planted."""

    files: list[SampleFile]
    profiles: dict[str, dict]
    dyads: list[PlantedDyad]
    canaries: list[str]


def _write_clinic(
    data: ClinicData, folder: Path, today: date, seed: int, re_export: bool
) -> tuple[SampleFile, SampleFile | None]:
    """The clinic's export and, for a US CSV clinic asked for one, its corrected re-export."""
    plan = data.plan
    rng = random.Random(f"{seed}/{plan.id}/layout")
    stem = f"{plan.id}_{today:%Y%m%d}"
    path = folder / f"{stem}.{EXTENSIONS[plan.layout]}"
    invalid = sum(block.invalid for block in data.blocks)
    ratings = sum(row.ratings for block in data.blocks for row in block.rows)
    export = SampleFile(plan.id, path, plan.layout, ratings, invalid, 0)
    if plan.layout == "json":
        write_json(path, data.blocks, plan, today)
        return export, None
    lines = flat_rows(data, rng)
    if plan.layout == "eu_csv":
        write_eu_csv(path, lines)
    elif plan.layout == "xlsx":
        write_xlsx(path, lines, plan, today)
    else:
        write_us_csv(path, lines)
    if not (re_export and plan.layout == "us_csv"):
        return export, None
    fixed, changed = corrected(lines, Scale.of(plan.alliance), rng)
    fixed_path = folder / f"{stem}_corrected.csv"
    write_us_csv(fixed_path, fixed)
    return export, SampleFile(plan.id, fixed_path, plan.layout, ratings, invalid, changed)


# ---------------------------------------------------------------- public API


def generate_sample(
    out: Path,
    clinics: int = 4,
    weeks: int = 16,
    seed: int = 7,
    today: date | None = None,
    dyads_per_clinic: int = 30,
    profile: str = "realistic",
    noise: float = 1.0,
) -> SampleSet:
    """Write exports under out/<clinic_id>/ and return what was planted.

    ``profile="realistic"`` (the default) gives courses with the noise of real SRS data, ``noise`` scaling
    the session-to-session spread; ``profile="clean"`` gives long courses near the ceiling with little noise.

    Example: ``generate_sample(Path("demo"), clinics=4, today=date(2025, 3, 1)).files[0].path``
    is ``demo/northside/northside_20250301.csv``.
    """
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}")
    if noise <= 0:
        raise ValueError("noise must be positive")
    if weeks < MIN_WEEKS:
        raise ValueError(f"weeks must be at least {MIN_WEEKS} so planted patterns have room")
    if clinics < 1 or dyads_per_clinic < 1:
        raise ValueError("clinics and dyads_per_clinic must be positive")
    today = today or date.today()
    files: list[SampleFile] = []
    re_exports: list[SampleFile] = []
    profiles: dict[str, dict] = {}
    dyads: list[PlantedDyad] = []
    canaries: list[str] = []
    for index in range(clinics):
        plan = clinic_plan(index)
        data = build_clinic(plan, seed, weeks, today, dyads_per_clinic, canaries, profile, noise)
        folder = out / plan.id
        folder.mkdir(parents=True, exist_ok=True)
        # only the first US CSV clinic (index 0) sends a corrected re-export
        export, re_export = _write_clinic(data, folder, today, seed, re_export=index == 0)
        files.append(export)
        re_exports += [re_export] if re_export else []
        profiles[plan.id] = clinic_profile(plan)
        dyads += data.dyads
    return SampleSet(files + re_exports, profiles, dyads, canaries)


def _toml_table(spec: dict) -> Table:
    table = tomlkit.table()
    for key, value in spec.items():
        table[key] = _toml_table(value) if isinstance(value, dict) else value
    return table


def add_profiles(clinics_file: Path, profiles: dict[str, dict]) -> list[str]:
    """Add (or replace) [clinics.<id>] tables in clinics.toml, keeping its comments; return the ids written.

    Example: ``add_profiles(home / "clinics.toml", generate_sample(home / "inbox").profiles)``.
    """
    text = clinics_file.read_text(encoding="utf-8") if clinics_file.exists() else ""
    document = tomlkit.parse(text)
    if "clinics" not in document:
        document["clinics"] = tomlkit.table(is_super_table=True)
    section = document["clinics"]
    assert isinstance(section, Table)
    for clinic_id, spec in profiles.items():
        section[clinic_id] = _toml_table(spec)
    clinics_file.write_text(tomlkit.dumps(document), encoding="utf-8")
    return list(profiles)
