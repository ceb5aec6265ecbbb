"""The night scores only what its files touched: a full rescore only when rules, policy or calibration moved.

The oracle is ``rescore()`` (every dyad): after an incremental night, a full rescore must change nothing.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from alliance.clinics import load_clinics
from alliance.home import init_home
from alliance.samples import SampleSet, add_profiles, generate_sample
from alliance.settings import Settings, load_settings
from alliance.storage import Warehouse
from alliance.storage.checksums import table_checksums
from flows.nightly import run_nightly
from flows.reviews import rescore, review_flag
from tests.conftest import TEST_KEY

SCORED_TABLES = ("flags", "dyads", "dyad_sessions", "cases", "calibrations", "expected_trajectories")


def _scored(settings: Settings) -> dict[str, tuple[int, str]]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        sums = table_checksums(con, stable_only=True)
    return {table: sums[table] for table in SCORED_TABLES}


def _home(folder: Path) -> tuple[Settings, SampleSet]:
    """A home with two clinics' exports in its inbox, not yet loaded."""
    settings = load_settings(folder)
    init_home(settings)
    settings.key_file.write_text(TEST_KEY + "\n")
    sample = generate_sample(settings.inbox, clinics=2, weeks=12, dyads_per_clinic=10, today=date(2026, 2, 1))
    add_profiles(settings.clinics_file, sample.profiles)
    return settings, sample


def _last_run(settings: Settings) -> tuple[str, int]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        row = con.execute("SELECT kind, dyads_scored FROM scoring_runs ORDER BY started_at DESC LIMIT 1").fetchone()
    assert row is not None
    return str(row[0]), int(row[1])


def test_an_incremental_night_leaves_every_dyad_as_a_full_rescore_would(settings: Settings) -> None:
    first = generate_sample(settings.inbox, clinics=3, weeks=12, dyads_per_clinic=10, today=date(2026, 2, 1))
    add_profiles(settings.clinics_file, first.profiles)
    export = next(f for f in first.files if f.layout == "us_csv" and "corrected" not in f.path.name)
    data = export.path.read_bytes()
    run_nightly(settings)
    # the clinic corrects a few sessions: their alliance falls (too little to re-estimate reliable change)
    _lowered(data, "us_csv", export.path.parent / "corrected_again.csv")
    night = run_nightly(settings)
    assert [r.status for r in night.exports] == ["loaded"] and night.exports[0].rows_updated > 0
    assert night.exports[0].scoring is None  # the file's dyads are left to the batch's end, which scores them once
    scored = night.scoring
    assert scored is not None and 0 < scored.dyads_scored <= 10 and not scored.recalibrated  # incremental
    assert _last_run(settings) == ("batch", scored.dyads_scored)
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


def test_a_batch_cut_short_is_settled_by_the_next_as_if_it_had_ended(tmp_path: Path) -> None:
    from flows.pipeline import ingest_file
    from flows.reviews import settle_scores

    (cut, [corrected]), (whole, _) = _corrected_after_a_night(tmp_path, "us_csv")
    started = datetime.now(UTC)
    before = _scored(cut)
    result = ingest_file(corrected, cut, publish=False, in_batch=True)  # then the batch is killed
    assert result.status == "loaded" and result.scoring is None
    assert _scored(cut) == before  # nothing scored yet: the file's dyads wait in pending_dyads
    with duckdb.connect(str(cut.warehouse), read_only=True) as con:
        waiting = con.execute("SELECT DISTINCT clinic_id, export_id FROM pending_dyads").fetchall()
    assert waiting == [(corrected.parent.name, result.export_id)]
    settle_scores(cut, [], started)  # the next batch has no file of that clinic, and settles it all the same
    run_nightly(whole)  # the same file in a batch that ends
    assert _scored(cut) == _scored(whole) != before
    with duckdb.connect(str(cut.warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM pending_dyads").fetchone() == (0,)


def test_a_file_arriving_after_a_batch_cut_short_scores_and_publishes_the_dyads_it_left(tmp_path: Path) -> None:
    from flows.pipeline import ingest_file

    (cut, [corrected, arriving]), (whole, _) = _corrected_after_a_night(tmp_path, "us_csv", "eu_csv")
    assert corrected.parent.name != arriving.parent.name  # the lone file's own dyads are not the ones left
    ingest_file(corrected, cut, publish=False, in_batch=True)  # then the batch is killed
    started = datetime.now(UTC)
    result = ingest_file(arriving, cut)  # a file of another clinic arrives on its own: it scores what was left too
    assert result.scoring is not None and set(result.scoring.clinics) == {corrected.parent.name, arriving.parent.name}
    with duckdb.connect(str(cut.warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM pending_dyads").fetchone() == (0,)
        published = con.execute("SELECT DISTINCT clinic_id FROM snapshots WHERE published_at >= ?", [started])
        assert {row[0] for row in published.fetchall()} >= {corrected.parent.name, arriving.parent.name}
    run_nightly(whole)  # both files in one batch that ends
    assert _scored(cut) == _scored(whole)


def _corrected_after_a_night(tmp_path: Path, *layouts: str) -> list[tuple[Settings, list[Path]]]:
    """Two homes, "cut" and "whole", after the same first night, each with an export of each layout corrected
    (the goals of its first sessions at 2) waiting in its clinic's inbox, in that order."""
    homes = []
    for name in ("cut", "whole"):
        settings, sample = _home(tmp_path / name)
        originals = [f for f in sample.files if "corrected" not in f.path.name]
        exports = [next(f for f in originals if f.layout == layout) for layout in layouts]
        read = [(e.path.read_bytes(), e.layout, e.path.parent / "corrected_again.csv") for e in exports]
        run_nightly(settings)
        homes.append((settings, [_lowered(data, layout, target) for data, layout, target in read]))
    return homes


LAYOUTS: dict[str, tuple[str, str, str, str, bool]] = {  # delimiter, encoding, goals, total, decimal comma
    "us_csv": (",", "utf-8", "SRS Goals & Topics", "SRS Total", False),
    "eu_csv": (";", "cp1252", "ziele  &  Themen", "Summe", True),
}


def _lowered(data: bytes, layout: str, target: Path) -> Path:
    """The export again with the goals of its first sessions at 2: an alliance that falls, a corrected file."""
    delimiter, encoding, goals, total, comma = LAYOUTS[layout]

    def number(cell: str) -> float:
        return float(cell.replace(",", ".") if comma else cell)

    def cell(value: float) -> str:
        return f"{value:.1f}".replace(".", ",") if comma else f"{value:.1f}"

    rows = list(csv.reader(io.StringIO(data.decode(encoding)), delimiter=delimiter))
    g, t = rows[0].index(goals), rows[0].index(total)
    for row in rows[1:8]:
        try:
            row[t] = cell(number(row[t]) - number(row[g]) + 2.0)
        except ValueError:
            continue  # a planted invalid cell: left as it is
        row[g] = cell(2.0)
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    target.write_bytes(out.getvalue().encode(encoding))
    return target


def _runs(settings: Settings) -> list[tuple[str, int]]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        rows = con.execute("SELECT kind, dyads_scored FROM scoring_runs ORDER BY started_at").fetchall()
    return [(str(kind), int(n)) for kind, n in rows]


def test_a_batch_whose_end_re_scores_every_dyad_scores_each_once(tmp_path: Path) -> None:
    from flows.pipeline import ingest_file

    homes = []
    for name in ("cut", "whole"):
        settings, sample = _home(tmp_path / name)
        homes.append((settings, sample))
    (whole, _), (cut, sample) = homes[1], homes[0]
    night = run_nightly(whole)  # a first load: reliable change is estimated at the batch's end, once
    assert all(r.scoring is None or r.scoring.dyads_scored == 0 for r in night.exports)
    assert _runs(whole) == [("rescore", night.scoring.dyads_scored if night.scoring else -1)]
    first = sample.files[0].path
    result = ingest_file(first, cut, publish=False, in_batch=True)  # then the batch is killed
    assert result.status == "loaded" and result.scoring is None
    with duckdb.connect(str(cut.warehouse), read_only=True) as con:
        assert con.execute("SELECT count(DISTINCT dyad_id) FROM pending_dyads").fetchone()[0] > 0  # type: ignore[index]
        assert con.execute("SELECT count(*) FROM flags").fetchone() == (0,)  # ratings waiting for the batch's end
    run_nightly(cut)  # the next run sweeps the rest and scores every dyad, those of the first file too
    assert _scored(cut) == _scored(whole)


def test_a_full_scoring_in_chunks_leaves_what_one_pass_leaves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dyads scored 7 at a time and clinics settled one at a time (each over the dyad bound) leave the tables, and
    report the changes, that one pass over all of them does."""
    from flows import scoring

    scored = []
    for name, chunk, dyads in (("chunked", 7, 1), ("whole", 10**9, 10**9)):
        monkeypatch.setattr(scoring, "SCORE_CHUNK_DYADS", chunk)
        monkeypatch.setattr(scoring, "SETTLE_DYADS", dyads)  # with one dyad, each clinic is settled alone
        settings, sample = _home(tmp_path / name)
        first = run_nightly(settings)  # a first load: every dyad scored at the end, in chunks of 7 dyads or one
        with settings.clinics_file.open("a", encoding="utf-8") as handle:
            handle.write(f"\n[clinics.{next(iter(sample.profiles))}.rules]\nrupture_k = 1.0\n")
        second = run_nightly(settings)  # every dyad again, against the flags the first left
        assert first.scoring is not None and second.scoring is not None
        reported = [
            (r.dyads_scored, r.new, r.worsened, r.reopened, r.auto_resolved, r.queue_dyads, r.cases_opened,
             r.cases_worse, r.cases_closed, sorted(r.clinics))
            for r in (first.scoring, second.scoring)
        ]  # fmt: skip
        scored.append((_scored(settings), reported))
    assert scored[0] == scored[1]
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        clinics = con.execute("SELECT count(DISTINCT clinic_id) FROM dyads").fetchall()[0][0]
    assert scored[0][1][0][0] > 7 and clinics == 2  # more than one chunk of each


def test_clinics_are_settled_in_groups_bounded_by_clinics_and_dyads(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows import scoring

    monkeypatch.setattr(scoring, "SETTLE_CLINICS", 3)
    monkeypatch.setattr(scoring, "SETTLE_DYADS", 100)
    clinics = ["a", "b", "c", "d", "e", "f", "g", "h"]
    dyads = {"a": 10, "b": 10, "c": 10, "d": 10, "e": 90, "f": 150, "g": 40}  # h: no rated dyad yet
    assert scoring.settle_groups(clinics, dyads) == [["a", "b", "c"], ["d", "e"], ["f"], ["g", "h"]]
    assert scoring.settle_groups([], dyads) == []


def test_a_full_scoring_cut_short_after_a_committed_chunk_is_done_whole_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full scoring commits chunk by chunk (its memory stays that of a chunk): stopped after the first, it leaves
    a full scoring due, and the next night ends where one uninterrupted night ends."""
    from flows import scoring

    monkeypatch.setattr(scoring, "SCORE_CHUNK_DYADS", 7)
    whole, _ = _home(tmp_path / "whole")
    run_nightly(whole)

    def stop(name: str) -> None:
        if name == "after_scoring_chunk":
            raise KeyboardInterrupt  # as Ctrl-C would; kill -9 at this point is tests/test_crash.py's

    cut, _ = _home(tmp_path / "cut")
    with monkeypatch.context() as patched:
        patched.setattr(scoring, "crash_point", stop)
        with pytest.raises(KeyboardInterrupt):
            run_nightly(cut)
    with duckdb.connect(str(cut.warehouse), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM flags").fetchone()[0] > 0  # type: ignore[index]  # one chunk's
        assert con.execute("SELECT value FROM meta WHERE key = 'scored_with'").fetchall() == [("",)]
    assert _scored(cut) != _scored(whole)
    run_nightly(cut)  # nothing left to sweep: the full scoring is due, and done whole
    assert _scored(cut) == _scored(whole)


def test_a_settle_that_changes_no_silence_stores_no_flag_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Silence is judged for every dyad of a settled clinic; only the flags it changed are written back, so a
    network's old dropouts are not deleted and inserted again each night."""
    from alliance.storage.scoring import ScoringTables
    from flows.reviews import settle_scores

    sample = generate_sample(settings.inbox, clinics=2, weeks=40, dyads_per_clinic=12, today=date(2026, 2, 1))
    add_profiles(settings.clinics_file, sample.profiles)
    run_nightly(settings)
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        held = con.execute("SELECT DISTINCT outcome FROM flags WHERE rule = 'stopped_appearing'").fetchall()
    assert sorted(held) == [("inactive",), ("ongoing",)]  # open and closed silences both held
    before = _scored(settings)
    stored: list[int] = []
    replace = ScoringTables.replace_flags

    def spy(self: ScoringTables, flags: pl.DataFrame) -> None:
        stored.append(flags.height)
        replace(self, flags)

    monkeypatch.setattr(ScoringTables, "replace_flags", spy)
    settle_scores(settings, sorted(sample.profiles), datetime.now(UTC))
    assert stored == [0]  # judged again, nothing changed: nothing stored again
    assert _scored(settings) == before


def test_silence_the_queue_and_cases_decided_from_ongoing_flags_are_those_from_every_flag(settings: Settings) -> None:
    """The settle step reads a clinic's ongoing flags alone; the oracle hands every flag, closed ones too, to the
    same decisions."""
    from polars.testing import assert_frame_equal

    from alliance.clinics import load_clinics
    from alliance.storage import Warehouse
    from transforms.cases import update_cases
    from transforms.flags import declines_at_last_session
    from transforms.queue import QueuePolicy, queue_frame

    sample = generate_sample(settings.inbox, clinics=2, weeks=40, dyads_per_clinic=15, today=date(2026, 2, 1))
    add_profiles(settings.clinics_file, sample.profiles)
    run_nightly(settings)
    configs = {cid: clinic.rules for cid, clinic in load_clinics(settings.clinics_file).items()}
    policy = QueuePolicy(settings.queue_min_risk, settings.queue_target_share)
    now = datetime.now(UTC)
    with Warehouse.of(settings).writer() as writer:
        every, ongoing = writer.flags_of(clinic_ids=None), writer.flags_of(clinic_ids=None, ongoing=True)
        assert 0 < ongoing.height < every.height // 2  # most flags are closed ones
        last, cases, dyads = writer.last_sessions(None), writer.cases_of(None), writer.dyads_of(None)
    assert declines_at_last_session(ongoing) == declines_at_last_session(every) != {}
    queue = queue_frame(ongoing, last, configs, policy)
    assert_frame_equal(queue, queue_frame(every, last, configs, policy))
    assert queue["in_queue"].any()
    for part in ("cases", "changes"):
        got, want = (getattr(update_cases(cases, dyads, flags, now), part) for flags in (ongoing, every))
        assert_frame_equal(got, want)
    assert update_cases(cases.clear(), dyads, ongoing, now).cases.height > 0  # cases to open, from ongoing flags


def test_a_night_after_an_upgrade_scores_every_dyad_once(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new version may word or judge findings differently (0.2.0: closed silences): its first night scores every
    dyad, so a clinic without new exports does not keep the old version's flags."""
    from flows import scoring

    # reliable change is not re-estimated by the later nights: that would score every dyad, skipping none
    settings = settings.model_copy(update={"recalibrate_growth": 100.0})
    sample = generate_sample(settings.inbox, clinics=2, weeks=12, dyads_per_clinic=8, today=date(2026, 2, 1))
    add_profiles(settings.clinics_file, sample.profiles)
    run_nightly(settings)
    quiet = run_nightly(settings)
    assert quiet.scoring is not None and quiet.scoring.dyads_scored == 0
    monkeypatch.setattr(scoring, "__version__", "99.0.0")
    upgraded = run_nightly(settings)
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        dyads = con.execute("SELECT count(DISTINCT dyad_id) FROM ratings").fetchall()[0][0]
    assert upgraded.scoring is not None and upgraded.scoring.dyads_scored == dyads > 0
    assert _last_run(settings) == ("rescore", dyads)
    after = run_nightly(settings)
    assert after.scoring is not None and after.scoring.dyads_scored == 0  # once


def _until(data: bytes, last: date, target: Path) -> Path:
    """A US export cut to the sessions up to ``last``, as the clinic would have exported it then (rows whose
    date does not parse, planted invalid cells, kept in every cut)."""
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    column = rows[0].index("Session Date")

    def kept(row: list[str]) -> bool:
        try:
            return datetime.strptime(row[column], "%m/%d/%Y").date() <= last
        except ValueError:
            return True

    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows([rows[0], *filter(kept, rows[1:])])
    target.write_bytes(out.getvalue().encode("utf-8"))
    return target


def test_dyads_settled_for_good_are_skipped_and_each_night_leaves_what_a_full_rescore_would(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Most of a long-running clinic's dyads ended long ago: settling it skips them until they are rated again.
    Over nights whose cumulative exports add weeks of sessions (the clinic's latest day moving on, courses
    ending, silences closing), each night leaves every dyad, flag and case as scoring every dyad again does,
    also after a supervisor reopened the clinic's ended silences. While a full scoring is due, nothing is skipped."""
    from flows import scoring

    # reliable change is not re-estimated by the later nights: that would score every dyad, skipping none
    settings = settings.model_copy(update={"recalibrate_growth": 100.0})
    sample = generate_sample(settings.home.parent / "drop", clinics=2, weeks=40, dyads_per_clinic=12,
                             today=date(2026, 2, 1))  # fmt: skip
    add_profiles(settings.clinics_file, sample.profiles)
    export = next(f for f in sample.files if f.layout == "us_csv" and "corrected" not in f.path.name)
    data = export.path.read_bytes()
    for file in sample.files:
        (settings.inbox / file.clinic_id).mkdir(parents=True, exist_ok=True)
        if file.clinic_id != export.clinic_id:
            (settings.inbox / file.clinic_id / file.path.name).write_bytes(file.path.read_bytes())
    skipped: list[int] = []
    judge = scoring.settled_for_good

    def spy(*args: object) -> pl.Series:
        found = judge(*args)  # type: ignore[arg-type]
        skipped.append(int(found.sum()))
        return found

    monkeypatch.setattr(scoring, "settled_for_good", spy)
    for n, last in enumerate((date(2025, 8, 1), date(2025, 10, 15), date(2025, 12, 20), date(2026, 2, 1))):
        if n == 3:  # a supervisor reopens every ended silence of the clinic: settling it resolves each again
            ended = _sql(
                settings,
                "SELECT flag_id FROM flags WHERE rule = 'stopped_appearing' AND NOT ongoing "
                f"AND clinic_id = '{export.clinic_id}'",
            )
            assert ended
            for (flag_id,) in ended:
                review_flag(settings, str(flag_id), "open", "dr.lee")
        _until(data, last, settings.inbox / export.clinic_id / f"export_{n}.csv")
        night = run_nightly(settings)
        assert n == 0 or (night.scoring is not None and not night.scoring.recalibrated)
        after_night = _scored(settings)
        rescore(settings)
        assert _scored(settings) == after_night, last  # the oracle: every dyad scored and settled again
    assert sum(skipped[1:]) > 0, skipped  # the later nights skipped dyads settled for good

    skipped.clear()  # a full scoring due (a clinic's rules changed) when a file's dyads are scored alone
    dyad = str(_sql(settings, "SELECT min(dyad_id) FROM ratings")[0][0])
    with Warehouse.of(settings).writer() as writer, writer.transaction():
        writer.set_meta(scoring.SCORED_WITH, "rules of another day")
        scoring.score_dyads(writer, load_clinics(settings.clinics_file), settings, [dyad])
    assert skipped == []  # nothing skipped: the flags of the dyads left out may not stand as these rules say


def _sql(settings: Settings, query: str) -> list[tuple[object, ...]]:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        return con.execute(query).fetchall()
