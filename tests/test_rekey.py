"""Key rotation: new pseudonyms everywhere, nothing lost, the old key refused afterwards."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from alliance.cli import app
from alliance.errors import StorageError
from alliance.home import init_home
from alliance.pseudonyms import load_key, pseudonym
from alliance.samples import add_profiles, generate_sample
from alliance.settings import load_settings
from alliance.storage import table_checksums
from flows.pipeline import ingest_file
from flows.reviews import list_flags, review_flag
from tests.conftest import TEST_KEY


def rows(path: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_rekey_rederives_every_id_and_keeps_everything(tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(tmp_path / "outbox", clinics=2, weeks=12, seed=4, dyads_per_clinic=15, profile="clean")
    add_profiles(settings.clinics_file, sample.profiles)
    first, *later = sample.files
    ingest_file(first.path, settings, clinic_id=first.clinic_id)
    flag = list_flags(settings)["flag_id"][0]
    review_flag(settings, flag, "acknowledged", "Dr Lee", "seen")
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        before = table_checksums(con)
    result = CliRunner().invoke(app, ["rekey", "--home", str(settings.home)])
    assert result.exit_code == 0, result.output
    new = load_key(settings)
    assert new != TEST_KEY.encode() and list(settings.home.glob("pseudonym.key.retired-*"))
    refs = rows(settings.warehouse, "SELECT clinic_id, client_id, client_ref FROM client_refs")
    assert all(cid == pseudonym(new, clinic, ref) for clinic, cid, ref in refs)
    assert not rows(settings.warehouse, "SELECT 1 FROM ratings ANTI JOIN client_refs USING (clinic_id, client_id)")
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        after = table_checksums(con)
    assert {t: c for t, (c, _) in after.items()} == {t: c for t, (c, _) in before.items()}  # same row counts
    assert after["ratings"][1] != before["ratings"][1]  # but other ids
    assert rows(settings.warehouse, "SELECT count(*) FROM reviews JOIN flags USING (flag_id)") == [(1,)]
    old_ids = {pseudonym(TEST_KEY.encode(), c, r) for c, _, r in refs}
    text = " ".join(
        str(r)
        for t in ("ratings", "quarantine", "flags", "dyads", "cases")
        for r in rows(settings.warehouse, f"SELECT * FROM {t}")
    )
    assert not any(old in text for old in old_ids)
    # every case still names its dyad and the flags behind it under their new ids
    assert rows(settings.warehouse, "SELECT count(*) FROM cases ANTI JOIN dyads USING (dyad_id)") == [(0,)]
    assert rows(
        settings.warehouse,
        "SELECT count(*) FROM (SELECT unnest(flag_ids) AS flag_id FROM cases) ANTI JOIN flags USING (flag_id)",
    ) == [(0,)]
    # later exports join the same dyads under the new key: nothing is counted twice
    for file in later:
        ingest_file(file.path, settings, clinic_id=file.clinic_id)
    assert CliRunner().invoke(app, ["verify", "--home", str(settings.home)]).exit_code == 0
    # the retired key is refused from now on
    settings.key_file.write_text(TEST_KEY)
    with pytest.raises(StorageError, match="not the one this warehouse was built with"):
        ingest_file(first.path, settings, clinic_id=first.clinic_id)
