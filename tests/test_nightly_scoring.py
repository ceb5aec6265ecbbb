"""The night scores only what its files touched: a full rescore only when rules, policy or calibration moved.

The oracle is ``rescore()`` (every dyad): after an incremental night, a full rescore must change nothing.
"""

from __future__ import annotations

import csv
import io
from datetime import date

import duckdb

from alliance.samples import add_profiles, generate_sample
from alliance.settings import Settings
from alliance.storage.snapshots import table_checksums
from flows.nightly import run_nightly
from flows.reviews import rescore

SCORED_TABLES = ("flags", "dyads", "dyad_sessions", "cases", "calibrations", "expected_trajectories")


def _scored(settings: Settings) -> dict[str, tuple[int, str]]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        sums = table_checksums(con, stable_only=True)
    return {table: sums[table] for table in SCORED_TABLES}


def _last_run(settings: Settings) -> tuple[str, int]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        row = con.execute("SELECT kind, dyads_scored FROM scoring_runs ORDER BY started_at DESC LIMIT 1").fetchone()
    assert row is not None
    return str(row[0]), int(row[1])


def test_an_incremental_night_leaves_every_dyad_as_a_full_rescore_would(settings: Settings) -> None:
    first = generate_sample(settings.inbox, clinics=3, weeks=12, dyads_per_clinic=10, today=date(2026, 2, 1))
    add_profiles(settings.clinics_file, first.profiles)
    export = next(f for f in first.files if f.layout == "us_csv" and "corrected" not in f.path.name)
    rows = list(csv.reader(io.StringIO(export.path.read_text(encoding="utf-8"))))
    run_nightly(settings)
    # the clinic corrects a few sessions: their alliance falls (too little to re-estimate reliable change)
    goals = rows[0].index("SRS Goals & Topics")
    for row in rows[1:8]:
        row[goals] = "2.0"
    corrected = io.StringIO()
    csv.writer(corrected, lineterminator="\r\n").writerows(rows)
    (export.path.parent / "corrected_again.csv").write_text(corrected.getvalue(), encoding="utf-8")
    night = run_nightly(settings)
    assert [r.status for r in night.exports] == ["loaded"] and night.exports[0].rows_updated > 0
    scored = night.exports[0].scoring
    assert scored is not None and scored.dyads_scored > 0 and not scored.recalibrated  # incremental
    assert _last_run(settings) == ("ingest", scored.dyads_scored)  # nothing left for the night to score
    after_night = _scored(settings)
    assert after_night["flags"][0] > 0
    rescore(settings)
    assert _scored(settings) == after_night  # the oracle: scoring every dyad again changes nothing


def test_a_night_re_scores_everything_when_a_clinics_rules_change(settings: Settings) -> None:
    sample = generate_sample(settings.inbox, clinics=2, weeks=12, dyads_per_clinic=8, today=date(2026, 2, 1))
    add_profiles(settings.clinics_file, sample.profiles)
    run_nightly(settings)
    quiet = run_nightly(settings)  # no files, nothing changed: nothing scored, the clinics' snapshots left alone
    assert quiet.exports == [] and quiet.scoring is not None and quiet.scoring.dyads_scored == 0
    clinic = next(iter(sample.profiles))
    with settings.clinics_file.open("a", encoding="utf-8") as handle:
        handle.write(f"\n[clinics.{clinic}.rules]\nrupture_k = 1.0\n")
    changed = run_nightly(settings)
    assert changed.scoring is not None and changed.scoring.dyads_scored > 0
    assert _last_run(settings) == ("rescore", changed.scoring.dyads_scored)
