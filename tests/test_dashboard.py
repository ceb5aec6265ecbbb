"""The supervisor dashboard: queries, chart specs, and the Streamlit app (AppTest) on a home the pipeline built."""

from __future__ import annotations

import getpass
import json
import math
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from alliance.clinics import RuleConfig, load_clinics
from alliance.errors import ConfigError
from alliance.home import init_home
from alliance.samples import add_profiles, generate_sample
from alliance.settings import Settings, load_settings
from alliance.storage import Warehouse
from dashboards import charts, data, launch
from flows.pipeline import ingest_file
from tests.conftest import TEST_KEY
from transforms.trends import CHART_SCHEMA

APP = Path(__file__).parents[1] / "dashboards" / "app.py"
CLINIC = "northside"
OTHER = "rheinpark"


def build_home(home: Path, clinics: int = 2, dyads_per_clinic: int = 24, weeks: int = 16) -> Settings:
    """A home filled by the project's own generator and pipeline (flags, reviews table, snapshots)."""
    settings = load_settings(home)
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(
        settings.inbox, clinics=clinics, weeks=weeks, seed=7, dyads_per_clinic=dyads_per_clinic, profile="clean"
    )
    add_profiles(settings.clinics_file, sample.profiles)
    for file in sample.files:
        assert ingest_file(file.path, settings).status == "loaded"
    return settings


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return build_home(tmp_path_factory.mktemp("dashboard") / "home")


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., AppTest]]:
    """Run the app on a home, as one clinic's dashboard or the network's, optionally on a given tab."""
    address = st_config.get_option("server.address")

    def run(
        home: Path,
        clinic: str | None = None,
        page: str | None = None,
        bound: str = "127.0.0.1",
        auth: dict[str, str] | None = None,
        user: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
        **state: Any,
    ) -> AppTest:
        monkeypatch.setenv(launch.HOME_ENV, str(home))
        if clinic:
            monkeypatch.setenv(launch.CLINIC_ENV, clinic)
        else:
            monkeypatch.delenv(launch.CLINIC_ENV, raising=False)
        at = AppTest.from_file(str(APP), default_timeout=60)
        st_config.set_option("server.address", bound)  # 127.0.0.1: as `alliance dashboard` starts it
        if auth is not None:
            at.secrets["auth"] = auth
        if user is not None:
            at.user = user
        for key, value in (query or {}).items():
            at.query_params[key] = value
        if page:
            at.session_state["page"] = page
        for key, value in state.items():
            at.session_state[key] = value
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    yield run
    st_config.set_option("server.address", address)


def warehouse_frame(settings: Settings, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
    """What the pipeline's working file holds (the truth the dashboard must agree with)."""
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        return con.sql(sql, params=params or None).pl()


def chart_specs(at: AppTest) -> list[dict[str, Any]]:
    return [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]


def layer_names(spec: dict[str, Any]) -> list[str]:
    return [layer.get("name", "") for layer in spec.get("layer", [])]


def queue_table(at: AppTest) -> pl.DataFrame:
    return pl.from_pandas(at.dataframe[0].value)


@pytest.fixture
def queue(network: Settings) -> pl.DataFrame:
    with data.open_reader(network.home, CLINIC) as reader:
        return data.load_queue(reader, CLINIC)


# --- the app -----------------------------------------------------------------------------------------------------


def test_the_per_flag_view_shows_the_clinics_open_flags_ranked_by_risk(
    app: Callable[..., AppTest], network: Settings, queue: pl.DataFrame
) -> None:
    at = app(network.home, CLINIC, f_per_flag=True)
    table = queue_table(at)
    assert table.height == min(queue.height, 25) > 0
    assert table["flag_id"].to_list() == queue["flag_id"].head(25).to_list()
    assert table["risk_score"].to_list() == sorted(table["risk_score"].to_list(), reverse=True)
    assert set(table["status"]) <= {"open", "acknowledged"}
    assert {"rule", "severity", "therapist_id", "dyad_id", "reason", "age_days"} <= set(table.columns)
    expected = warehouse_frame(
        network,
        """SELECT f.flag_id FROM flags f JOIN dyads d USING (dyad_id)
           WHERE f.clinic_id = ? AND f.status IN ('open', 'acknowledged') AND f.ongoing AND d.in_queue""",
        [CLINIC],
    )
    assert set(queue["flag_id"]) == set(expected["flag_id"])
    others = warehouse_frame(network, "SELECT dyad_id FROM dyads WHERE clinic_id <> ?", [CLINIC])
    assert not set(table["dyad_id"]) & set(others["dyad_id"])
    assert "clinic_id" not in table.columns  # one clinic's dashboard: no clinic column, no other clinic


def test_network_dashboard_shows_every_clinic(app: Callable[..., AppTest], network: Settings) -> None:
    at = app(network.home)
    assert set(queue_table(at)["clinic_id"]) == {CLINIC, OTHER}
    at.selectbox(key="scope").set_value(OTHER).run()
    assert set(queue_table(at)["clinic_id"]) == {OTHER}


def test_a_clinic_dashboard_reads_only_its_own_snapshot(network: Settings) -> None:
    with data.open_reader(network.home, CLINIC) as reader:
        opened = reader.frame("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").item()
        assert Path(opened).name == f"clinic-{CLINIC}.duckdb"
        assert data.clinic_ids(reader) == [CLINIC]
    stamp = data.snapshot_stamp(Warehouse(network.warehouse), CLINIC)
    assert Path(stamp[0]).name == f"clinic-{CLINIC}.duckdb"
    with pytest.raises(data.NoSnapshot), data.open_reader(network.home, "nowhere"):
        pass  # never the working file of every clinic, nor the network snapshot


def test_flag_view_filters(app: Callable[..., AppTest], network: Settings, queue: pl.DataFrame) -> None:
    at = app(network.home, CLINIC, f_per_flag=True)
    therapist = queue["therapist_id"][0]
    at.multiselect(key="f_therapist").set_value([therapist]).run()
    assert set(queue_table(at)["therapist_id"]) == {therapist}
    assert queue_table(at).height == queue.filter(pl.col("therapist_id") == therapist).height
    rule = queue.filter(pl.col("therapist_id") == therapist)["rule"][0]
    at.multiselect(key="f_rule").set_value([rule]).run()
    assert set(queue_table(at)["rule"]) == {rule}
    at.multiselect(key="f_therapist").set_value([])
    at.multiselect(key="f_rule").set_value([]).run()
    severity = queue["severity"][0]
    at.multiselect(key="f_severity").set_value([severity]).run()
    assert set(queue_table(at)["severity"]) == {severity}
    at.multiselect(key="f_severity").set_value([]).run()
    dyad = queue["dyad_id"][-1]
    at.text_input(key="f_dyad").input(dyad[:7]).run()
    assert set(queue_table(at)["dyad_id"]) == {dyad}
    at.text_input(key="f_dyad").input("zzzz").run()
    assert not at.dataframe
    assert "No flag matches" in at.info[0].value


def test_dyad_page_shows_the_trajectory_and_flag_history(
    app: Callable[..., AppTest], network: Settings, queue: pl.DataFrame
) -> None:
    at = app(network.home, CLINIC, f_per_flag=True)
    dyad = at.selectbox(key="queue_pick").value
    assert dyad == queue["dyad_id"][0]
    at.button(key="open_dyad").click().run()
    assert at.session_state["page"] == "Dyad"
    specs = chart_specs(at)
    titles = [spec["title"] for spec in specs]
    assert "SRS: score per session" in titles  # northside rates SRS and ORS
    srs = specs[titles.index("SRS: score per session")]
    assert {"cutoff", "baseline_band", "sessions", "flag_starts"} <= set(layer_names(srs))
    tooltips = [t["field"] for layer in srs["layer"] for t in layer.get("encoding", {}).get("tooltip", [])]
    assert {"relationship", "goals", "approach", "overall"} <= set(tooltips)  # item scores on hover
    ref = warehouse_frame(
        network, "SELECT r.client_ref FROM dyads d JOIN client_refs r USING (clinic_id, client_id) WHERE dyad_id = ?",
        [dyad],
    ).item()  # fmt: skip
    assert any(f"Client {ref} " in c.value for c in at.caption)  # the clinic's own reference beside the code
    history = pl.from_pandas(at.dataframe[0].value)
    flags = warehouse_frame(network, "SELECT flag_id FROM flags WHERE dyad_id = ?", [dyad])
    assert set(history["flag_id"]) == set(flags["flag_id"])


def test_a_dyad_of_another_clinic_is_not_shown(app: Callable[..., AppTest], network: Settings) -> None:
    foreign = warehouse_frame(network, "SELECT dyad_id FROM dyads WHERE clinic_id = ? LIMIT 1", [OTHER]).item()
    at = app(network.home, CLINIC, page="Dyad", dyad=foreign)
    assert at.selectbox(key="dyad").value is None
    assert not chart_specs(at)


def test_acknowledge_from_the_page_goes_through_the_review_path(
    app: Callable[..., AppTest], network: Settings, queue: pl.DataFrame
) -> None:
    dyad = queue.filter(pl.col("status") == "open")["dyad_id"][0]
    at = app(network.home, CLINIC, page="Dyad", dyad=dyad)
    flag_id = at.selectbox(key="review_flag").value
    assert flag_id in set(queue["flag_id"])
    before = data.snapshot_stamp(Warehouse(network.warehouse), CLINIC)
    assert warehouse_frame(network, "SELECT * FROM reviews WHERE flag_id = ?", [flag_id]).is_empty()
    at.radio(key="review_status").set_value("acknowledged")
    at.text_area(key="review_note").input("raised in supervision")
    at.form_submit_button[0].click().run()
    assert not at.exception and not at.error
    assert any(f"{flag_id}: open → acknowledged" in s.value for s in at.success)
    status = warehouse_frame(network, "SELECT status FROM flags WHERE flag_id = ?", [flag_id]).item()
    assert status == "acknowledged"
    reviews = warehouse_frame(network, "SELECT * FROM reviews WHERE flag_id = ?", [flag_id])
    assert reviews.select("reviewed_by", "from_status", "to_status", "note").rows() == [
        (f"local:{getpass.getuser()}", "open", "acknowledged", "raised in supervision")
    ]  # no sign-in configured: the local account, never a typed name
    assert data.snapshot_stamp(Warehouse(network.warehouse), CLINIC) != before  # republished, so re-read
    history = pl.from_pandas(at.dataframe[0].value)
    assert history.filter(pl.col("flag_id") == flag_id)["status"].item() == "acknowledged"
    shown = pl.from_pandas(at.dataframe[1].value)  # the reviews table, with the note (clinic snapshot)
    assert shown.filter(pl.col("flag_id") == flag_id)["note"].item() == "raised in supervision"
    assert at.text_area(key="review_note").value == ""


def test_trends_page_renders_control_charts_and_funnel(app: Callable[..., AppTest], network: Settings) -> None:
    at = app(network.home, CLINIC, page="Trends")
    specs = chart_specs(at)
    controls = [s for s in specs if "upper_limit" in layer_names(s)]
    assert len(controls) == 4  # clinic and one therapist: mean alliance and flagged share
    assert any(s["title"].startswith(f"{CLINIC}: weekly mean") for s in controls)
    funnel = [s for s in specs if "therapists" in layer_names(s)]
    assert len(funnel) == 1 and {"limits", "overall"} <= set(layer_names(funnel[0]))
    therapist = at.selectbox(key="trend_therapist").options[-1]
    at.selectbox(key="trend_therapist").set_value(therapist).run()
    assert any(s["title"].startswith(f"{therapist}: weekly") for s in chart_specs(at))


def test_data_health_page_renders(app: Callable[..., AppTest], network: Settings) -> None:
    at = app(network.home, CLINIC, page="Data health")
    assert any("within the last 3 days" in s.value for s in at.success)
    names = [spec.get("name") for spec in chart_specs(at)]
    assert {"exports", "quarantine"} <= set(names)
    silence = pl.from_pandas(at.dataframe[0].value)
    assert silence["clinic_id"].to_list() == [CLINIC]


@pytest.mark.parametrize("setup", ["missing", "empty", "initialised"])
def test_an_empty_home_gets_a_friendly_message(app: Callable[..., AppTest], tmp_path: Path, setup: str) -> None:
    home = tmp_path / "home"
    if setup != "missing":
        home.mkdir()
    if setup == "initialised":
        init_home(load_settings(home))
    at = app(home)
    assert "No data yet" in at.info[0].value
    assert not at.error


def test_an_unknown_clinic_gets_a_friendly_message(app: Callable[..., AppTest], network: Settings) -> None:
    at = app(network.home, "nowhere")
    assert "No data yet for clinic nowhere" in at.info[0].value


# --- cases ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def cases(network: Settings) -> pl.DataFrame:
    with data.open_reader(network.home, CLINIC) as reader:
        return data.load_cases(reader, CLINIC)


def test_queue_lists_one_row_per_case_with_the_headline_whole(
    app: Callable[..., AppTest], network: Settings, cases: pl.DataFrame
) -> None:
    at = app(network.home, CLINIC)
    table = queue_table(at)
    expected = warehouse_frame(
        network, "SELECT case_id, dyad_id, headline_reason FROM cases WHERE clinic_id = ? AND status IN "
        "('open', 'acknowledged') ORDER BY risk_score DESC", [CLINIC],
    )  # fmt: skip
    assert table.height == expected.height > 0 and set(table["dyad_id"]) == set(expected["dyad_id"])
    assert table["dyad_id"].n_unique() == table.height  # one row per dyad at risk, not per flag
    assert table["risk_score"].to_list() == sorted(table["risk_score"].to_list(), reverse=True)
    assert {"severity", "status", "headline_reason", "change", "therapist_id"} <= set(table.columns)
    by_dyad = dict(expected.select("dyad_id", "headline_reason").iter_rows())
    assert all(r["headline_reason"] == by_dyad[r["dyad_id"]] for r in table.iter_rows(named=True))  # not cut
    dates = warehouse_frame(
        network, "SELECT dyad_id, change, change_session_date FROM cases WHERE clinic_id = ?", [CLINIC]
    )
    changes = {d: f"{'new' if c == 'new' else 'worse since' if c == 'worse' else 'back after repair, since'} {t}"
               for d, c, t in dates.iter_rows()}  # fmt: skip
    assert all(r["change"] == changes[r["dyad_id"]] for r in table.iter_rows(named=True))  # what changed, since when
    assert at.dataframe[0].proto.row_height > 64  # Streamlit wraps text only in rows taller than 4rem
    assert "clinic_id" not in table.columns
    refs = warehouse_frame(
        network, "SELECT c.dyad_id, r.client_ref FROM cases c JOIN client_refs r USING (clinic_id, client_id) "
        "WHERE c.clinic_id = ?", [CLINIC],
    )  # fmt: skip
    assert dict(table.select("dyad_id", "client_ref").iter_rows()) == {
        k: v for k, v in refs.iter_rows() if k in set(table["dyad_id"])
    }  # the clinic's own reference beside the dyad code
    assert at.metric[0].label == "Cases in queue" and at.metric[0].value == str(expected.height)


def test_the_network_queue_has_the_clinic_column_and_no_client_reference(
    app: Callable[..., AppTest], network: Settings
) -> None:
    at = app(network.home)
    table = queue_table(at)
    assert set(table["clinic_id"]) == {CLINIC, OTHER}
    assert "client_ref" not in table.columns
    refs = warehouse_frame(network, "SELECT client_ref FROM client_refs")["client_ref"].to_list()
    shown = json.dumps([at.dataframe[0].value.astype(str).values.tolist()])
    assert refs and not any(f'"{ref}"' in shown for ref in refs)
    dyad = table["dyad_id"][0]
    page = app(network.home, page="Dyad", dyad=dyad)
    assert page.metric and not any(c.value.startswith("Client ") for c in page.caption)


def test_case_queue_filters(app: Callable[..., AppTest], network: Settings, cases: pl.DataFrame) -> None:
    at = app(network.home, CLINIC)
    rule = cases["rules"][0][-1]
    at.multiselect(key="f_rule").set_value([rule]).run()
    assert set(queue_table(at)["dyad_id"]) == set(cases.filter(pl.col("rules").list.contains(rule))["dyad_id"])
    at.multiselect(key="f_rule").set_value([]).run()
    ref = cases["client_ref"][-1]
    at.text_input(key="f_dyad").input(ref.lower()).run()
    assert queue_table(at)["dyad_id"].to_list() == [cases["dyad_id"][-1]]
    at.text_input(key="f_dyad").input("zzzz").run()
    assert not at.dataframe and "No case matches" in at.info[0].value


def test_filter_cases_by_rule_and_reference() -> None:
    cases = pl.DataFrame(
        {
            "case_id": ["c1", "c2", "c3"],
            "dyad_id": ["d1aa", "d2bb", "d3cc"],
            "client_ref": ["N-01", None, "N-03"],
            "therapist_id": ["t1", "t2", "t1"],
            "severity": ["high", "medium", "low"],
            "status": ["open", "acknowledged", "open"],
            "rules": [["drop", "rupture"], ["rupture"], ["low_score"]],
        }
    )
    assert data.filter_cases(cases, rules=["rupture"])["case_id"].to_list() == ["c1", "c2"]
    assert data.filter_cases(cases, therapists=["t1"], rules=["drop", "low_score"])["case_id"].to_list() == ["c1", "c3"]
    assert data.filter_cases(cases, dyad=" n-03")["case_id"].to_list() == ["c3"]
    assert data.filter_cases(cases, dyad="d2b")["case_id"].to_list() == ["c2"]
    assert data.filter_cases(cases, statuses=["acknowledged"]).columns == cases.columns


def test_a_case_page_opens_from_the_queue_and_at_its_url(
    app: Callable[..., AppTest], network: Settings, cases: pl.DataFrame
) -> None:
    at = app(network.home, CLINIC)
    case_id = at.selectbox(key="case_pick").value
    assert case_id == cases["case_id"][0]
    at.button(key="open_case").click().run()
    assert at.query_params["case"] == case_id  # the page's URL: /?case=<case_id>
    linked = app(network.home, CLINIC, query={"clinic": CLINIC, "case": case_id})  # as an alert links it
    for page in (at, linked):
        assert page.header[0].value == f"Case {case_id}"
        metrics = {m.label: m.value for m in page.metric}
        assert metrics["Severity"] == cases["severity"][0] and metrics["Status"] == cases["status"][0]
        assert any(cases["headline_reason"][0] in m.value for m in page.markdown)
        assert any(f"client {cases['client_ref'][0]}" in c.value for c in page.caption)
        evidence = pl.from_pandas(page.dataframe[0].value)
        flag_ids = warehouse_frame(network, "SELECT unnest(flag_ids) AS f FROM cases WHERE case_id = ?", [case_id])
        assert set(evidence["flag_id"]) == set(flag_ids["f"]) and evidence["reason"].is_not_null().all()
        assert "SRS: score per session" in [spec["title"] for spec in chart_specs(page)]
    at.button(key="back_to_queue").click().run()
    assert "case" not in at.query_params and at.metric[0].label == "Cases in queue"


def test_a_case_of_another_clinic_is_refused(app: Callable[..., AppTest], granted: Settings) -> None:
    foreign = warehouse_frame(granted, "SELECT case_id FROM cases WHERE clinic_id = ? LIMIT 1", [OTHER]).item()
    at = app(granted.home, CLINIC, query={"case": foreign})
    assert any(f"Case {foreign!r} is not among the clinics open to" in e.value for e in at.error)
    assert not at.dataframe and not chart_specs(at)
    kim = signed("kim@example.org", groups=["north-sup"])
    refused = app(granted.home, bound="0.0.0.0", auth=AUTH, user=kim, query={"case": foreign})
    assert any("kim@example.org" in e.value for e in refused.error) and not refused.dataframe


def test_acknowledge_a_case_in_one_action(app: Callable[..., AppTest], network: Settings, cases: pl.DataFrame) -> None:
    case_id = cases.filter(pl.col("status") == "open")["case_id"][0]
    at = app(network.home, CLINIC, query={"case": case_id})
    assert at.radio(key="case_status").options == ["acknowledged", "resolved"]
    at.radio(key="case_status").set_value("acknowledged")
    at.text_area(key="case_note").input("raised in supervision")
    at.form_submit_button[0].click().run()
    assert not at.exception and not at.error
    assert any(f"Case {case_id}: open → acknowledged" in s.value for s in at.success)
    recorded = warehouse_frame(
        network, "SELECT reviewed_by, from_status, to_status, note, flag_ids FROM case_reviews WHERE case_id = ?",
        [case_id],
    )  # fmt: skip
    assert recorded.select("reviewed_by", "from_status", "to_status", "note").rows() == [
        (f"local:{getpass.getuser()}", "open", "acknowledged", "raised in supervision")
    ]
    flags = warehouse_frame(
        network, "SELECT status FROM flags WHERE flag_id IN (SELECT unnest(flag_ids) FROM cases WHERE case_id = ?)",
        [case_id],
    )  # fmt: skip
    assert set(flags["status"]) == {"acknowledged"}
    assert recorded["flag_ids"][0].len() > 0
    assert {m.label: m.value for m in at.metric}["Status"] == "acknowledged"  # the republished snapshot, re-read
    history = pl.from_pandas(at.dataframe[1].value)
    assert history["note"].to_list() == ["raised in supervision"] and history["to_status"].to_list() == ["acknowledged"]
    assert at.radio(key="case_status").options == ["resolved"]


def test_trends_open_on_the_series_out_of_control(app: Callable[..., AppTest], network: Settings) -> None:
    with data.open_reader(network.home, CLINIC) as reader:
        trend = data.trend_frames(data.scored_sessions(reader, CLINIC), data.queue_min_risk(reader))
    alarms = data.out_of_control(trend)
    assert alarms.height  # the generated network has declining dyads
    at = app(network.home, CLINIC, page="Trends")
    code = at.selectbox(key="trend_instrument").value
    assert code == alarms["instrument"][0]
    therapists = alarms.filter((pl.col("level") == "therapist") & (pl.col("instrument") == code))["therapist_id"]
    assert at.selectbox(key="trend_therapist").value == therapists[0]
    assert any("Out of control in the last 4 weeks" in w.value for w in at.warning)


def test_out_of_control_takes_worrying_signals_of_recent_weeks() -> None:
    weeks = [date(2026, 9, 7) + timedelta(weeks=i) for i in range(8)]

    def series(therapist: str, metric: str, signals: list[str | None]) -> pl.DataFrame:
        n = len(signals)
        return pl.DataFrame(
            {"level": ["therapist"] * n, "clinic_id": ["c"] * n, "therapist_id": [therapist] * n,
             "instrument": ["SRS"] * n, "metric": [metric] * n, "week": weeks[:n], "value": [1.0] * n,
             "ewma": [1.0] * n, "lower": [0.0] * n, "upper": [2.0] * n, "signal": signals},
            schema=CHART_SCHEMA,
        )  # fmt: skip

    trend = pl.concat(
        [
            series("a", "mean_score", [None] * 6 + ["low", "low"]),  # alliance down lately: out of control
            series("b", "mean_score", ["low"] * 2 + [None] * 6),  # long ago only
            series("c", "mean_score", [None] * 7 + ["high"]),  # alliance up: good news
            series("d", "flagged_share", [None] * 7 + ["high"]),  # flagged share up: out of control
        ]
    )
    alarms = data.out_of_control(trend)
    assert alarms.select("therapist_id", "metric", "signals").rows() == [
        ("a", "mean_score", 2),
        ("d", "flagged_share", 1),
    ]


# --- data.py -----------------------------------------------------------------------------------------------------


def test_funnel_limits_by_hand() -> None:
    limits = data.funnel_limits(0.2, 25)
    at25 = {row["z"]: row for row in limits.filter(pl.col("n") == 25).iter_rows(named=True)}
    # σ = √(0.2·0.8/25) = 0.08
    assert at25[2.0]["lower"] == pytest.approx(0.04) and at25[2.0]["upper"] == pytest.approx(0.36)
    assert at25[3.0]["lower"] == 0.0 and at25[3.0]["upper"] == pytest.approx(0.44)  # 0.2 − 0.24 clipped at 0
    at1 = limits.filter((pl.col("n") == 1) & (pl.col("z") == 3.0)).row(0, named=True)
    assert at1["upper"] == 1.0
    assert limits["n"].min() == 1 and limits["n"].max() == 25


def test_funnel_points_pool_the_share_and_place_each_caseload() -> None:
    loads = pl.DataFrame(
        {
            "clinic_id": ["c"] * 3,
            "therapist_id": ["a", "b", "c"],
            "active_dyads": [100, 100, 4],
            "flagged_dyads": [10, 30, 2],
        }
    ).with_columns((pl.col("flagged_dyads") / pl.col("active_dyads")).alias("flagged_share"))
    points, p = data.funnel_points(loads)
    assert p == pytest.approx(42 / 204)
    by = {row["therapist_id"]: row for row in points.iter_rows(named=True)}
    assert by["b"]["z"] == pytest.approx((0.3 - p) / math.sqrt(p * (1 - p) / 100))
    assert by["b"]["position"] == "above 2σ"  # z ≈ 2.3
    assert by["a"]["position"] == "below 2σ"  # z ≈ −2.7
    assert by["c"]["position"] == "within limits"  # 50% of 4 dyads is chance at this caseload


def test_filter_queue_and_paging() -> None:
    queue = pl.DataFrame(
        {
            "dyad_id": ["d1aa", "d1aa", "d2bb", "d3cc"],
            "therapist_id": ["t1", "t1", "t2", "t1"],
            "rule": ["sudden_loss", "drop", "rupture", "drop"],
            "severity": ["high", "low", "medium", "low"],
            "status": ["open", "acknowledged", "open", "open"],
        }
    )
    assert data.filter_queue(queue, therapists=["t1"], rules=["drop"])["dyad_id"].to_list() == ["d1aa", "d3cc"]
    assert data.filter_queue(queue, statuses=["acknowledged"]).height == 1
    assert data.filter_queue(queue, dyad=" D2B ")["dyad_id"].to_list() == ["d2bb"]
    assert data.filter_queue(queue).height == 4
    per_dyad = data.one_per_dyad(queue)
    assert per_dyad.select("dyad_id", "rule", "flags").rows() == [("d1aa", "sudden_loss", 2), ("d2bb", "rupture", 1),
                                                                  ("d3cc", "drop", 1)]  # fmt: skip
    assert data.page_count(0, 25) == 1 and data.page_count(26, 25) == 2
    assert data.page_of(queue, 2, 3)["dyad_id"].to_list() == ["d3cc"]


def test_rupture_and_repair_marks() -> None:
    sessions = pl.DataFrame(
        {
            "instrument": ["SRS"] * 5,
            "session_index": [1, 2, 3, 4, 5],
            "session_number": [1, 2, 3, 5, 6],
            "score": [38.0, 37.5, 25.0, 30.0, 37.0],
        }
    )
    flags = pl.DataFrame(
        {"rule": ["rupture", "drop"], "instrument": ["SRS", "SRS"], "first_session": [3, 3], "last_session": [5, 3],
         "outcome": ["repaired", "repaired"]}
    )  # fmt: skip
    marks = data.rupture_marks(flags, sessions)
    assert marks.select("session_number", "score", "event").rows() == [(3, 25.0, "rupture"), (6, 37.0, "repair")]
    unrepaired = flags.with_columns(pl.lit("ongoing").alias("outcome"))
    assert data.rupture_marks(unrepaired, sessions)["event"].to_list() == ["rupture"]


def test_flag_marks_name_the_most_severe_rule_first() -> None:
    flags = pl.DataFrame(
        {
            "instrument": ["SRS", "SRS", "SRS", "ORS"],
            "rule": ["drop", "sudden_loss", "low_item", "not_on_track"],
            "severity": ["low", "high", "advisory", "low"],
            "first_session": [9, 9, 2, 9],
        }
    )
    marks = data.flag_marks(flags, "SRS")
    assert marks.rows() == [(2, "low_item"), (9, "sudden_loss, drop")]


def test_cutoff_follows_the_clinic_rules() -> None:
    assert data.cutoff_for("SRS") == 36
    assert data.cutoff_for("ORS") == 25
    assert data.cutoff_for("WAI_SR") is None  # no published cutoff, so no line
    assert data.cutoff_for("SRS", RuleConfig(low_cutoff=34)) == 34


def test_export_silence_marks_clinics_that_stopped(network: Settings) -> None:
    last = warehouse_frame(network, "SELECT max(received_at) AS t FROM exports WHERE clinic_id = ?", [CLINIC]).item()
    with data.open_reader(network.home, None) as reader:
        later = data.export_silence(reader, [CLINIC, OTHER, "quiet"], 3, now=last + timedelta(days=5))
        soon = data.export_silence(reader, [CLINIC], 3, clinic_id=CLINIC, now=last + timedelta(hours=1))
    by = {row["clinic_id"]: row for row in later.iter_rows(named=True)}
    assert by[CLINIC]["stopped"] and by[CLINIC]["days_since"] == pytest.approx(5.0, abs=0.1)
    assert by["quiet"]["stopped"] and by["quiet"]["last_export"] is None  # configured, never sent anything
    assert soon["clinic_id"].to_list() == [CLINIC] and not soon["stopped"].any()


def test_quarantine_counts_come_from_the_rules(network: Settings) -> None:
    with data.open_reader(network.home, CLINIC) as reader:
        counts = data.quarantine_counts(reader, CLINIC)
    expected = warehouse_frame(
        network, "SELECT count(*) FROM quarantine q, unnest(q.rules) AS r(rule) WHERE clinic_id = ?", [CLINIC]
    ).item()
    assert counts["ratings"].sum() == expected > 0
    assert set(counts["check_name"]) <= {r.split(":")[0] for r in counts["rule"]}


# --- charts.py ---------------------------------------------------------------------------------------------------


def _sessions(code: str, items: int) -> pl.DataFrame:
    frame = pl.DataFrame(
        {
            "instrument": [code] * 4,
            "session_index": [1, 2, 3, 4],
            "session_number": [1, 2, 3, 4],
            "session_date": [date(2025, 1, 6) + timedelta(weeks=i) for i in range(4)],
            "score": [38.0, 37.0, 30.0, 37.5],
            "items": [[9.5] * items, [9.25] * items, [7.5] * items, [9.4] * items],
            "delta": [None, -1.0, -7.0, 7.5],
            "baseline": [37.5] * 4,
            "band_sd": [2.0] * 4,
            "slope": [None, None, None, -0.5],
            "rules": [[], ["drop"], ["drop", "rupture"], []],
            "risk": [0.0, 8.0, 49.0, 0.0],
        }
    )
    return data.instrument_sessions(frame, code)


def test_trajectory_chart_has_cutoff_band_flags_and_events() -> None:
    sessions = _sessions("SRS", 4)
    opened = pl.DataFrame(
        {"session_number": [3], "opened": ["rupture, drop"]}, schema_overrides={"session_number": pl.Int64}
    )
    events = pl.DataFrame({"instrument": ["SRS", "SRS"], "session_number": [3, 4], "score": [30.0, 37.5],
                           "event": ["rupture", "repair"]})  # fmt: skip
    spec = charts.trajectory_chart(sessions, "SRS", 36.0, opened, events).to_dict()
    layers = {layer["name"]: layer for layer in spec["layer"]}
    assert {"baseline_band", "baseline", "cutoff", "score", "sessions", "flag_starts", "rupture_repair"} <= set(layers)
    cutoff_data = spec["datasets"][layers["cutoff"]["data"]["name"]]
    assert cutoff_data == [{"cutoff": 36.0, "label": "cutoff 36", "session_number": 4}]
    assert layers["cutoff"]["mark"]["type"] == "rule"
    assert layers["cutoff"]["encoding"]["strokeDash"]["legend"]["title"] == "line"  # named off the plot area
    assert "cutoff_label" not in layers  # an in-plot label ran into the baseline and the last session's labels
    x_domain = layers["sessions"]["encoding"]["x"]["scale"]["domain"]
    sessions_shown = [row["session_number"] for row in spec["datasets"][layers["sessions"]["data"]["name"]]]
    assert x_domain == [min(sessions_shown) - 0.5, max(sessions_shown) + 0.5]  # edge labels clear of the axes
    band = layers["baseline_band"]
    assert band["mark"]["type"] == "area"
    assert (band["encoding"]["y"]["field"], band["encoding"]["y2"]["field"]) == ("band_low", "band_high")
    band_rows = spec["datasets"][band["data"]["name"]]
    assert (band_rows[0]["band_low"], band_rows[0]["band_high"]) == (35.5, 39.5)
    assert layers["sessions"]["encoding"]["y"]["field"] == "score"
    labels = spec["datasets"][layers["flag_starts"]["data"]["name"]]
    assert labels[0]["label"] == "rupture +1" and labels[0]["opened"] == "rupture, drop"
    assert layers["rupture_repair"]["encoding"]["shape"]["field"] == "event"
    domains = {json.dumps(layer["encoding"]["y"].get("scale")) for layer in spec["layer"]}
    assert domains == {json.dumps({"domain": [28, 40.0]})}  # lowest score 30 less 2 points, on every layer


def test_trajectory_chart_without_cutoff_or_band() -> None:
    empty = pl.DataFrame(schema={"session_number": pl.Int64, "opened": pl.String})
    events = data.rupture_marks(pl.DataFrame(schema={"rule": pl.String}), pl.DataFrame())
    spec = charts.trajectory_chart(_sessions("WAI_SR", 12), "WAI_SR", None, empty, events, band=False).to_dict()
    assert layer_names(spec) == ["score", "sessions"]
    assert spec["layer"][0]["encoding"]["y"]["scale"]["domain"] == [27, 60.0]  # 30 − 5% of the 12–60 range, floored


def test_control_chart_layers_and_signal_colours() -> None:
    rows = pl.DataFrame(
        {
            "week": [date(2025, 1, 6) + timedelta(weeks=i) for i in range(3)],
            "value": [0.1, 0.1, 0.5],
            "ewma": [0.1, 0.1, 0.2],
            "lower": [0.0, 0.0, 0.0],
            "upper": [0.15, 0.15, 0.15],
            "signal": [None, None, "high"],
        }
    )
    spec = charts.control_chart(rows, "x", "flagged_share").to_dict()
    assert layer_names(spec) == ["observed", "ewma", "upper_limit", "lower_limit", "signals"]
    signals = spec["layer"][-1]
    assert signals["encoding"]["color"]["scale"] == {"domain": ["high", "low"], "range": [charts.FLAG_RED, "#27ae60"]}
    assert spec["layer"][0]["encoding"]["y"]["axis"]["format"] == ".0%"


def test_funnel_chart_layers() -> None:
    loads = pl.DataFrame(
        {"clinic_id": ["c", "c"], "therapist_id": ["a", "b"], "active_dyads": [10, 20], "flagged_dyads": [1, 4]}
    ).with_columns((pl.col("flagged_dyads") / pl.col("active_dyads")).alias("flagged_share"))
    points, p = data.funnel_points(loads)
    spec = charts.funnel_chart(points, data.funnel_limits(p, 20), p).to_dict()
    layers = {layer["name"]: layer for layer in spec["layer"]}
    assert set(layers) == {"limits", "overall", "overall_label", "therapists"}
    assert spec["datasets"][layers["overall"]["data"]["name"]][0]["p"] == pytest.approx(5 / 30)
    assert len(spec["datasets"][layers["therapists"]["data"]["name"]]) == 2
    # the axis ends just above the 3σ limit at the smallest caseload shown (10): p + 3·√(p(1−p)/10) ≈ 0.52
    top = spec["layer"][0]["encoding"]["y"]["scale"]["domain"][1]
    assert top == round((5 / 30 + 3 * math.sqrt(5 / 30 * 25 / 30 / 10)) * 1.25 + 0.01, 2)


# --- launch.py ---------------------------------------------------------------------------------------------------


def test_launch_command_and_environment(tmp_path: Path) -> None:
    command = launch.command(8765)
    assert command[1:5] == ["-m", "streamlit", "run", str(launch.APP)]
    pairs = dict(zip(command[5::2], command[6::2], strict=True))
    assert pairs["--server.port"] == "8765"
    assert pairs["--server.address"] == "127.0.0.1"
    assert pairs["--server.headless"] == "true"
    assert pairs["--browser.gatherUsageStats"] == "false"
    env = launch.environment(tmp_path, "northside")
    assert env[launch.HOME_ENV] == str(tmp_path.resolve()) and env[launch.CLINIC_ENV] == "northside"
    assert launch.CLINIC_ENV not in launch.environment(tmp_path, None)


def test_launch_refuses_an_unknown_clinic(network: Settings) -> None:
    with pytest.raises(ConfigError, match="no clinic 'nowhere'"):
        launch.check_clinic(network.home, "nowhere")
    launch.check_clinic(network.home, CLINIC)


def test_without_sign_in_the_page_says_it_serves_only_on_this_machine(
    app: Callable[..., AppTest], network: Settings
) -> None:
    at = app(network.home, CLINIC)
    assert any("serves only on this machine (127.0.0.1)" in w.value for w in at.sidebar.warning)
    assert at.dataframe  # and it works


def test_without_sign_in_a_public_bind_shows_no_data(app: Callable[..., AppTest], network: Settings) -> None:
    at = app(network.home, CLINIC, bound="0.0.0.0")
    assert any("No identity provider is configured" in e.value for e in at.error)
    assert not at.dataframe and not at.tabs


AUTH = {
    "redirect_uri": "http://localhost:8501/oauth2callback",
    "cookie_secret": "x" * 32,
    "client_id": "dashboard",
    "client_secret": "s",
    "server_metadata_url": "http://localhost:1/.well-known/openid-configuration",
}


def test_with_sign_in_configured_nothing_shows_before_signing_in(
    app: Callable[..., AppTest], network: Settings
) -> None:
    auth = AUTH
    at = app(network.home, bound="0.0.0.0", auth=auth)
    assert [b.label for b in at.button] == ["Sign in"]
    assert not at.dataframe and not at.tabs and not at.metric


@pytest.fixture(scope="module")
def granted(network: Settings) -> Settings:
    """The network home with sign-in grants: one person for two clinics, a group for one, a network lead."""
    clinics = sorted(load_clinics(network.clinics_file))
    with network.clinics_file.open("a", encoding="utf-8") as handle:
        handle.write(
            f'\n[[access.grants]]\nemail = "both@example.org"\nclinics = {clinics!r}\n'.replace("'", '"')
            + f'\n[[access.grants]]\ngroup = "north-sup"\nclinics = ["{CLINIC}"]\n'
            + '\n[[access.grants]]\ngroup = "leads"\nrole = "network"\n'
        )
    return network


def signed(email: str, **claims: Any) -> dict[str, Any]:
    return {"is_logged_in": True, "email": email, "sub": email, **claims}


def test_a_group_member_sees_only_their_clinic(app: Callable[..., AppTest], granted: Settings) -> None:
    at = app(granted.home, bound="0.0.0.0", auth=AUTH, user=signed("kim@example.org", groups=["north-sup"]))
    assert at.dataframe and "clinic_id" not in queue_table(at).columns  # a clinic's queue, from its own snapshot
    assert any(f"Clinic **{CLINIC}**" in m.value for m in at.sidebar.markdown)
    assert any("Signed in as kim@example.org" in c.value for c in at.sidebar.caption)
    assert not at.sidebar.selectbox  # one clinic: no picker, and no network view
    refused = app(
        granted.home, bound="0.0.0.0", auth=AUTH, user=signed("kim@example.org", groups=["north-sup"]),
        query={"clinic": "rheinpark"},
    )  # fmt: skip
    assert any("kim@example.org has no access to clinic 'rheinpark'." in e.value for e in refused.error)
    assert not refused.dataframe and not refused.tabs


def test_a_supervisor_of_two_clinics_picks_between_them(app: Callable[..., AppTest], granted: Settings) -> None:
    at = app(granted.home, bound="0.0.0.0", auth=AUTH, user=signed("both@example.org"))
    picker = at.sidebar.selectbox(key="clinic")
    assert picker.options == sorted(load_clinics(granted.clinics_file)) and picker.value == CLINIC


def test_a_network_lead_sees_the_network_view(app: Callable[..., AppTest], granted: Settings) -> None:
    at = app(granted.home, bound="0.0.0.0", auth=AUTH, user=signed("lead@example.org", groups=["leads"]))
    assert at.sidebar.selectbox(key="scope").options[0] == "All clinics"


def test_an_account_without_a_grant_sees_nothing(app: Callable[..., AppTest], granted: Settings) -> None:
    at = app(granted.home, bound="0.0.0.0", auth=AUTH, user=signed("stranger@example.org"))
    assert any("no clinic is open to this account" in w.value for w in at.warning)
    assert not at.dataframe and not at.tabs
