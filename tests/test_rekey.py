"""Key rotation: new pseudonyms everywhere, nothing lost, the old key refused afterwards."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from alliance.cli import app
from alliance.errors import StorageError
from alliance.home import init_home
from alliance.pseudonyms import create_key_file, load_key, pseudonym
from alliance.samples import add_profiles, generate_sample
from alliance.settings import Settings, load_settings
from alliance.storage import UNDATED_CHANGE, Warehouse, table_checksums
from dashboards.data import dyad_reviews
from flows.nightly import run_nightly
from flows.pipeline import ingest_file
from flows.reviews import list_flags, review_flag
from tests.conftest import TEST_KEY
from tests.receivers import Hook


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
    started = datetime.now(UTC)
    result = CliRunner().invoke(app, ["rekey", "--home", str(settings.home)])
    assert result.exit_code == 0, result.output
    # ids no column dates changed: stamped, so a snapshot published before it is compared on every row
    stamp = rows(settings.warehouse, f"SELECT value FROM meta WHERE key = '{UNDATED_CHANGE}'")
    assert datetime.fromisoformat(stamp[0][0]) > started
    new = load_key(settings)
    assert new != TEST_KEY.encode() and list(settings.home.glob("pseudonym.key.retired-*"))
    refs = rows(settings.warehouse, "SELECT clinic_id, client_id, client_ref FROM client_refs")
    assert all(cid == pseudonym(new, clinic, ref) for clinic, cid, ref in refs)
    assert not rows(settings.warehouse, "SELECT 1 FROM ratings ANTI JOIN client_refs USING (clinic_id, client_id)")
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        after = table_checksums(con)
    counts = {t: c for t, (c, _) in after.items() if t != "flag_renames"}
    assert counts == {t: c for t, (c, _) in before.items() if t != "flag_renames"}  # same row counts
    assert after["flag_renames"][0] == after["flags"][0]  # one rename per flag
    assert after["ratings"][1] != before["ratings"][1]  # but other ids
    assert after["reviews"] == before["reviews"]  # append-only: not one review row rewritten
    resolved = """SELECT count(*) FROM reviews r JOIN flag_renames n ON n.old_flag_id = r.flag_id
                  JOIN flags f ON f.flag_id = n.new_flag_id"""
    assert rows(settings.warehouse, resolved) == [(1,)]
    old_ids = {pseudonym(TEST_KEY.encode(), c, r) for c, _, r in refs}
    text = " ".join(
        str(r)
        for t in ("ratings", "quarantine", "flags", "dyads", "cases")
        for r in rows(settings.warehouse, f"SELECT * FROM {t}")
    )
    assert not any(old in text for old in old_ids)
    # the snapshots were written anew: no old pseudonym survives in a free block of a copied file
    published = b"".join(p.read_bytes() for p in (settings.home / "snapshots").glob("*.duckdb"))
    assert old_ids and not any(old.encode() in published for old in old_ids)
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


def sample_home(tmp_path: Path, hook_url: str | None = None) -> tuple[Settings, list[Path]]:
    settings = load_settings(tmp_path / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(tmp_path / "outbox", clinics=1, weeks=16, seed=2, dyads_per_clinic=25)
    add_profiles(settings.clinics_file, sample.profiles)
    if hook_url:
        with settings.clinics_file.open("a") as handle:
            handle.write(f'\n[[clinics.northside.alerts.supervisors]]\nname = "Dr Lee"\nurls = ["{hook_url}"]\n')
    return settings, [f.path for f in sample.files]


def test_rekey_killed_after_its_commit_finishes_the_swap_when_run_again(tmp_path: Path) -> None:
    settings, files = sample_home(tmp_path)
    ingest_file(files[0], settings, clinic_id="northside")
    env = {**os.environ, "ALLIANCE_HOME": str(settings.home), "ALLIANCE_CRASH_AT": "after_rekey_commit"}
    killed = subprocess.run([sys.executable, "-m", "alliance", "rekey"], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    pending = settings.home / "pseudonym.key.new"
    new_key = pending.read_text()  # the only copy of the key the warehouse now uses
    assert settings.key_file.read_text().strip() == TEST_KEY
    again = CliRunner().invoke(app, ["rekey", "--home", str(settings.home)])
    assert again.exit_code == 0, again.output
    assert settings.key_file.read_text() == new_key and not pending.exists()
    assert [p.read_text().strip() for p in settings.home.glob("pseudonym.key.retired-*")] == [TEST_KEY]
    assert CliRunner().invoke(app, ["verify", "--home", str(settings.home)]).exit_code == 0
    assert ingest_file(files[1], settings, clinic_id="northside").status == "loaded"  # the new key is the one


def test_a_stale_new_key_file_from_before_a_commit_is_kept_aside_not_deleted(tmp_path: Path) -> None:
    settings, files = sample_home(tmp_path)
    ingest_file(files[0], settings, clinic_id="northside")
    stale = settings.home / "pseudonym.key.new"
    create_key_file(stale, b"stale-key-written-before-the-commit-0123")
    assert CliRunner().invoke(app, ["rekey", "--home", str(settings.home)]).exit_code == 0
    (abandoned,) = settings.home.glob("pseudonym.key.abandoned-*")
    assert abandoned.read_text().strip() == "stale-key-written-before-the-commit-0123"
    assert load_key(settings) not in (TEST_KEY.encode(), b"stale-key-written-before-the-commit-0123")


def test_after_a_rekey_audit_resolves_and_nothing_is_alerted_twice(tmp_path: Path, hook: Hook) -> None:
    settings, files = sample_home(tmp_path, hook.url())
    (settings.inbox / "northside").mkdir(parents=True, exist_ok=True)
    shutil.copy(files[0], settings.inbox / "northside" / files[0].name)
    first = run_nightly(settings)
    assert first.alerts is not None and first.alerts.sent > 0
    flag = list_flags(settings)["flag_id"][0]
    review_flag(settings, flag, "acknowledged", "Dr Lee", "seen")
    told = len(hook.requests)
    assert CliRunner().invoke(app, ["rekey", "--home", str(settings.home)]).exit_code == 0
    second = run_nightly(settings)
    assert second.alerts is not None and second.alerts.sent == 0
    assert len(hook.requests) == told  # the same flag states, under new ids, are not told again
    resolved = rows(
        settings.warehouse,
        """SELECT count(*) FROM audit a JOIN flag_renames n ON n.old_flag_id = a.subject
           JOIN flags f ON f.flag_id = n.new_flag_id WHERE a.action = 'review'""",
    )
    assert resolved == [(1,)]
    assert CliRunner().invoke(app, ["verify", "--home", str(settings.home)]).exit_code == 0
    # the clinic's own snapshot still carries the review, and the dashboard finds it on the renamed flag
    ((dyad,),) = rows(
        settings.warehouse,
        f"SELECT dyad_id FROM flags JOIN flag_renames ON new_flag_id = flag_id WHERE old_flag_id = '{flag}'",
    )
    with Warehouse.of(settings).reader("northside") as reader:
        assert dyad_reviews(reader, dyad, "northside")["reviewed_by"].to_list() == ["Dr Lee"]


def test_a_rekey_after_a_batch_cut_short_renames_the_dyads_waiting_for_its_end(tmp_path: Path) -> None:
    from flows.reviews import settle_scores

    settings, files = sample_home(tmp_path)
    ingest_file(files[0], settings, clinic_id="northside")
    ingest_file(files[1], settings, clinic_id="northside", publish=False, in_batch=True)  # then the batch is killed
    waiting = "SELECT count(DISTINCT dyad_id) FROM pending_dyads"
    assert rows(settings.warehouse, waiting)[0][0] > 0
    assert CliRunner().invoke(app, ["rekey", "--home", str(settings.home)]).exit_code == 0
    # the waiting dyads carry their new ids: the ids of the old key name no rating any more
    assert rows(settings.warehouse, "SELECT count(*) FROM pending_dyads ANTI JOIN ratings USING (dyad_id)") == [(0,)]
    settle_scores(settings, [], datetime.now(UTC))
    assert rows(settings.warehouse, waiting) == [(0,)]
    unscored = "SELECT count(*) FROM (SELECT DISTINCT dyad_id FROM ratings) ANTI JOIN dyad_sessions USING (dyad_id)"
    assert rows(settings.warehouse, unscored) == [(0,)]
