"""`ingest --dry-run`: the outcome ingest would have, shown with pseudonyms, and not one byte written."""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

from typer.testing import CliRunner

from alliance.cli import app
from alliance.samples import SampleSet, add_profiles, generate_sample
from alliance.settings import Settings
from flows.rehearsal import rehearse


def _tree(home: Path) -> dict[str, str]:
    """Every file under the home with the sha256 of its bytes."""
    return {
        str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest() for p in home.rglob("*") if p.is_file()
    }


def _sample(settings: Settings) -> SampleSet:
    sample = generate_sample(settings.inbox, clinics=2, weeks=16, dyads_per_clinic=6, today=date(2026, 3, 1))
    add_profiles(settings.clinics_file, sample.profiles)
    return sample


def test_dry_run_writes_nothing_and_its_exit_code_is_ingests(settings: Settings) -> None:
    sample = _sample(settings)
    path = next(f.path for f in sample.files if f.layout == "eu_csv")
    before = _tree(settings.home)
    dry = CliRunner().invoke(app, ["ingest", str(path), "--dry-run", "--home", str(settings.home)])
    assert _tree(settings.home) == before, "a dry run changed the home"
    assert "would be" in dry.output and "nothing written" in dry.output
    real = CliRunner().invoke(app, ["ingest", str(path), "--home", str(settings.home)])
    assert dry.exit_code == real.exit_code, (dry.output, real.output)
    assert _tree(settings.home) != before  # the real ingest did write: the comparison can fail


def test_dry_run_shows_problems_with_lines_and_pseudonyms_only(settings: Settings) -> None:
    sample = _sample(settings)
    export = next(f for f in sample.files if f.layout == "us_csv" and f.invalid_expected)
    seen = rehearse(export.path, settings)
    assert seen.quarantined and all(seen.reason_lines[rule] for rule in seen.quarantined)
    assert seen.rows_read == seen.would_load + seen.quarantined_rows and seen.quarantined_rows > 0
    assert seen.preview is not None and seen.preview.height == 5
    result = CliRunner().invoke(app, ["ingest", str(export.path), "--dry-run", "--home", str(settings.home)])
    refs = {d.client_ref for d in sample.dyads if d.clinic_id == export.clinic_id}
    assert refs and not [r for r in refs if r in result.output]
    assert not [c for c in sample.canaries if c in result.output]
    assert "lines " in result.output and "client (pseudonym)" in result.output


def test_a_file_that_cannot_be_read_is_a_rejection_and_exit_2(settings: Settings) -> None:
    sample = _sample(settings)
    clinic = sample.files[0].clinic_id
    broken = settings.inbox / clinic / "broken.csv"
    broken.write_text("nothing,like,the,profile\n1,2,3,4\n", encoding="utf-8")
    before = _tree(settings.home)
    result = CliRunner().invoke(app, ["ingest", str(broken), "--dry-run", "--home", str(settings.home)])
    assert result.exit_code == 2 and "would be rejected" in result.output and "missing required column" in result.output
    assert _tree(settings.home) == before


def test_a_file_already_ingested_would_be_a_duplicate(settings: Settings, tmp_path: Path) -> None:
    sample = _sample(settings)
    export = next(f for f in sample.files if f.layout == "us_csv")
    again = tmp_path / "again.csv"
    again.write_bytes(export.path.read_bytes())
    assert rehearse(again, settings, export.clinic_id).status == "loaded"  # before: new bytes
    CliRunner().invoke(app, ["ingest", str(export.path), "--home", str(settings.home)])
    before = _tree(settings.home)
    args = ["ingest", str(again), "--clinic", export.clinic_id, "--dry-run", "--home", str(settings.home)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "would be duplicate" in result.output, result.output
    assert f"same bytes as {export.path.name}" in result.output and "nothing to do" in result.output
    assert _tree(settings.home) == before
