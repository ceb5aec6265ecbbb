"""Scoring and flags on the generated network: planted dyads found, queue share, incremental = full, reviews."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import polars as pl
import pytest
from typer.testing import CliRunner

from alliance.cli import app
from alliance.errors import AllianceError, StorageError
from alliance.home import init_home
from alliance.samples import SampleSet, add_profiles, generate_sample
from alliance.settings import Settings, load_settings
from alliance.storage import Warehouse
from flows.pipeline import ingest_file
from flows.reviews import list_flags, rescore, review_flag
from tests.conftest import TEST_KEY
from transforms.calibration import estimate
from transforms.expected import estimate_expected
from transforms.trajectory import course_scores, session_features

# What each planted shape must raise. WAI-SR has no published cutoff, so its single low session shows as a fall.
EXPECTED = {
    ("sudden_loss", "SRS"): {"sudden_loss"},
    ("sudden_loss", "WAI_SR"): {"sudden_loss"},
    ("slow_decline", "SRS"): {"declining_trend"},
    ("slow_decline", "WAI_SR"): {"declining_trend"},
    ("single_low", "SRS"): {"low_score"},
    ("single_low", "WAI_SR"): {"reliable_decrease", "drop"},
    ("rupture_repair", "SRS"): {"rupture"},
    ("rupture_repair", "WAI_SR"): {"rupture"},
}
STABLE_FLAGGED_LIMIT = 0.10  # stated share of stable dyads that may ever reach the queue


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, SampleSet]:
    settings = load_settings(tmp_path_factory.mktemp("network") / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(settings.inbox, clinics=4, weeks=26, seed=7, dyads_per_clinic=40, profile="clean")
    add_profiles(settings.clinics_file, sample.profiles)
    for file in sample.files:
        assert ingest_file(file.path, settings).status == "loaded"
    return settings, sample


def frame(settings: Settings, sql: str) -> pl.DataFrame:
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        return con.sql(sql).pl()


def planted(settings: Settings, sample: SampleSet) -> pl.DataFrame:
    """Planted dyads with their dyad_id, the rules ever flagged, and their highest session risk."""
    dyads = pl.DataFrame([d.__dict__ for d in sample.dyads])
    ids = frame(
        settings,
        """SELECT c.clinic_id, c.client_ref, d.therapist_id, d.dyad_id, max(s.risk) AS max_risk
           FROM client_refs c JOIN dyads d USING (clinic_id, client_id) JOIN dyad_sessions s USING (dyad_id)
           GROUP BY ALL""",
    )
    rules = frame(settings, "SELECT dyad_id, list(DISTINCT rule) AS rules FROM flags GROUP BY dyad_id")
    return dyads.join(ids, on=["clinic_id", "client_ref", "therapist_id"]).join(rules, on="dyad_id", how="left")


def test_every_planted_event_is_flagged_with_its_rule(network: tuple[Settings, SampleSet]) -> None:
    settings, sample = network
    found = planted(settings, sample)
    events = found.filter(pl.col("pattern") != "stable")
    assert events.height >= 4 * 4  # every shape in every clinic
    for row in events.iter_rows(named=True):
        expected = EXPECTED[(row["pattern"], row["instrument"])]
        assert expected & set(row["rules"] or []), (row["pattern"], row["instrument"], row["rules"])


def test_few_stable_dyads_reach_the_queue(network: tuple[Settings, SampleSet]) -> None:
    settings, sample = network
    stable = planted(settings, sample).filter(pl.col("pattern") == "stable")
    ever = (stable["max_risk"] >= settings.queue_min_risk).mean()
    assert ever is not None and ever <= STABLE_FLAGGED_LIMIT
    assert stable.filter(pl.col("rules").list.contains("sudden_loss")).height <= 2


def test_queue_share_is_near_what_supervisors_can_act_on(network: tuple[Settings, SampleSet]) -> None:
    settings, _ = network
    ((queue, dyads),) = frame(settings, "SELECT count(*) FILTER (WHERE in_queue), count(*) FROM dyads").rows()
    assert 0.05 <= queue / dyads <= 0.20
    summary = frame(settings, "SELECT sum(dyads_in_queue), sum(dyads) FROM clinic_summary").row(0)
    assert summary == (queue, dyads)


def test_one_open_flag_per_dyad_instrument_and_rule(network: tuple[Settings, SampleSet]) -> None:
    settings, _ = network
    twice = frame(
        settings,
        """SELECT dyad_id, instrument, rule, count(*) AS n FROM flags
           WHERE status IN ('open', 'acknowledged') GROUP BY ALL HAVING n > 1""",
    )
    assert twice.is_empty()
    assert frame(settings, "SELECT count(*) - count(DISTINCT flag_id) FROM flags").item() == 0


def test_flags_explain_themselves(network: tuple[Settings, SampleSet]) -> None:
    settings, _ = network
    sudden = frame(settings, "SELECT reason, evidence, rc_used, calibration_id FROM flags WHERE rule = 'sudden_loss'")
    confirmed = sudden.filter(pl.col("reason").str.contains("3 criteria met"))
    assert confirmed.height > 0
    assert confirmed["reason"].str.contains(r"^(SRS|WAI_SR) fell from \d+\.\d to \d+\.\d at session \d+").all()
    assert confirmed["rc_used"].is_not_null().all() and confirmed["calibration_id"].is_not_null().all()
    evidence = json.loads(confirmed["evidence"][0])
    assert evidence["criteria"] == {"a": True, "b": True, "c": True} and len(evidence["sessions"]) >= 4
    used = set(confirmed["calibration_id"].to_list())
    stored = set(frame(settings, "SELECT calibration_id FROM calibrations")["calibration_id"].to_list())
    assert used <= stored


def test_incremental_scoring_equals_a_full_rescore(network: tuple[Settings, SampleSet]) -> None:
    settings, _ = network
    volatile = ["updated_at", "first_flagged_at", "worsened_at", "resolved_at"]
    before = frame(settings, "SELECT * EXCLUDE (evidence), evidence::VARCHAR AS evidence FROM flags ORDER BY flag_id")
    sessions = frame(settings, "SELECT * FROM dyad_sessions ORDER BY dyad_id, instrument, session_index")
    result = rescore(settings)
    assert (result.new, result.worsened, result.reopened, result.auto_resolved) == (0, 0, 0, 0)
    after = frame(settings, "SELECT * EXCLUDE (evidence), evidence::VARCHAR AS evidence FROM flags ORDER BY flag_id")
    assert after.drop(volatile).equals(before.drop(volatile))
    assert frame(settings, "SELECT * FROM dyad_sessions ORDER BY dyad_id, instrument, session_index").equals(sessions)


def test_reingesting_never_duplicates_flags(network: tuple[Settings, SampleSet]) -> None:
    settings, sample = network
    count = frame(settings, "SELECT count(*) FROM flags").item()
    first = sample.files[0]
    archived = next((settings.archive / first.clinic_id).glob(f"*__{first.path.name}"))
    assert ingest_file(archived, settings, clinic_id=first.clinic_id).status == "duplicate"
    assert frame(settings, "SELECT count(*) FROM flags").item() == count


def test_review_action_changes_status_and_is_recorded(network: tuple[Settings, SampleSet]) -> None:
    settings, _ = network
    flag = list_flags(settings, status="queue").row(0, named=True)
    assert review_flag(settings, flag["flag_id"], "acknowledged", "Dr Lee", "raised in supervision") == "open"
    assert review_flag(settings, flag["flag_id"], "resolved", "Dr Lee", "repaired in session") == "acknowledged"
    reviews = frame(
        settings, f"SELECT reviewed_by, from_status, to_status, note FROM reviews WHERE flag_id = '{flag['flag_id']}'"
    )
    assert reviews.rows() == [
        ("Dr Lee", "open", "acknowledged", "raised in supervision"),
        ("Dr Lee", "acknowledged", "resolved", "repaired in session"),
    ]
    status = frame(settings, f"SELECT status, resolution FROM flags WHERE flag_id = '{flag['flag_id']}'").row(0)
    assert status == ("resolved", "reviewed")
    assert flag["flag_id"] not in list_flags(settings, status="queue")["flag_id"].to_list()
    rescore(settings)  # a supervisor's decision survives re-scoring
    assert frame(settings, f"SELECT status FROM flags WHERE flag_id = '{flag['flag_id']}'").item() == "resolved"
    with pytest.raises(StorageError, match="already resolved"):
        review_flag(settings, flag["flag_id"], "resolved", "Dr Lee")
    with pytest.raises(StorageError, match="no flag 'nope'"):
        review_flag(settings, "nope", "resolved", "Dr Lee")
    with pytest.raises(AllianceError, match="status must be one of"):
        review_flag(settings, flag["flag_id"], "auto_resolved", "Dr Lee")


def test_flags_command_formats(network: tuple[Settings, SampleSet]) -> None:
    settings, _ = network
    runner = CliRunner()
    home = str(settings.home)
    result = runner.invoke(
        app, ["flags", "--clinic", "northside", "--status", "open", "--format", "json", "--home", home]
    )
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    columns = frame(settings, "SELECT * FROM flags LIMIT 0").columns
    assert records and set(records[0]) == set(columns)
    assert {r["clinic_id"] for r in records} == {"northside"} and {r["status"] for r in records} == {"open"}
    risks = [r["risk_score"] for r in records]
    assert risks == sorted(risks, reverse=True)
    csv_out = runner.invoke(app, ["flags", "--status", "all", "--format", "csv", "--home", home])
    assert csv_out.exit_code == 0 and csv_out.output.splitlines()[0].startswith("flag_id,clinic_id")
    table = runner.invoke(app, ["flags", "--status", "queue", "--home", home])
    assert table.exit_code == 0 and "flag(s)" in table.output
    bad = runner.invoke(app, ["flags", "--status", "later", "--home", home])
    assert bad.exit_code == 1 and "Error: status must be one of" in bad.output


def test_review_command_round_trip(network: tuple[Settings, SampleSet]) -> None:
    settings, _ = network
    flag_id = list_flags(settings, status="queue")["flag_id"][0]
    result = CliRunner().invoke(
        app,
        [
            "review",
            flag_id,
            "--status",
            "acknowledged",
            "--by",
            "Sam",
            "--note",
            "call client",
            "--home",
            str(settings.home),
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"flag {flag_id}: open -> acknowledged (by Sam)" in result.output


def test_csv_cells_that_look_like_formulas_are_neutralised() -> None:
    from alliance.cli import _neutralise

    assert [_neutralise(v) for v in ("=1+1", "+x", "-2", "@sum", "\tA", "\rB", "plain")] == [
        "'=1+1", "'+x", "'-2", "'@sum", "'\tA", "'\rB", "plain",
    ]  # fmt: skip


def test_views_exist_and_answer(network: tuple[Settings, SampleSet]) -> None:
    settings, _ = network
    for view in ("review_queue", "dyad_trajectory", "therapist_summary", "clinic_summary"):
        assert frame(settings, f"SELECT count(*) FROM {view}").item() > 0, view
    queue = frame(settings, "SELECT risk_score FROM review_queue")["risk_score"].to_list()
    assert queue == sorted(queue, reverse=True) and min(queue) >= settings.queue_min_risk


def test_rescore_command(network: tuple[Settings, SampleSet], tmp_path: Path) -> None:
    settings, _ = network
    result = CliRunner().invoke(app, ["rescore", "--recalibrate", "--home", str(settings.home)])
    assert result.exit_code == 0, result.output
    assert "review queue:" in result.output and "open dyads" in result.output
    assert "Queue settings" in result.output and "at most 12% of open dyads" in result.output


def test_a_hostile_reviewer_name_is_stored_and_echoed_plain(network: tuple[Settings, SampleSet]) -> None:
    settings, _ = network
    flag_id = list_flags(settings, status="queue")["flag_id"][1]
    hostile = "Dr Lee\x1b[2J\r\nflag resolved by admin <!channel> @here"
    result = CliRunner().invoke(
        app, ["review", flag_id, "--status", "acknowledged", "--by", hostile, "--home", str(settings.home)]
    )
    assert result.exit_code == 0, result.output
    clean = "Dr Lee flag resolved by admin \u2039!channel\u203a \uff20here"
    assert f"(by {clean})" in result.output and "\x1b" not in result.output and "<!channel>" not in result.output
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        reviewed = con.execute("SELECT reviewed_by FROM reviews WHERE flag_id = ?", [flag_id]).fetchall()
        actors = con.execute("SELECT actor FROM audit WHERE subject = ?", [flag_id]).fetchall()
    assert reviewed == [(clean,)] and actors == [(clean,)]


def test_rescore_tells_what_each_queue_setting_would_give(network: tuple[Settings, SampleSet]) -> None:
    settings, _ = network
    options = rescore(settings).queue_options
    assert options is not None
    current, *others = options.to_dicts()
    assert current["setting"] == f"risk ≥ {settings.queue_min_risk:g}"
    stricter = next(o for o in others if o["setting"] == "risk ≥ 55")
    assert stricter["queued"] <= current["queued"]
    for option in others:
        if "at most" in option["setting"]:
            share = float(option["setting"].split("at most ")[1].split("%")[0]) / 100
            assert option["share_of_open"] <= share + 1 / max(1, option["open_dyads"])


def test_reestimation_reads_only_scores_and_estimates_as_from_every_feature(
    network: tuple[Settings, SampleSet],
) -> None:
    settings, _ = network
    with Warehouse.of(settings).writer() as writer:
        slim = course_scores(writer.course_ratings())
        full = session_features(writer.ratings_of(None))
    assert "items" not in slim.columns and slim.height == full.height
    calibrations, curves = estimate(slim), estimate_expected(slim)
    assert calibrations and curves  # the comparison means something only with estimates to compare
    assert calibrations == estimate(full)
    assert curves == estimate_expected(full)
