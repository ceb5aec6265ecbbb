"""The rules and scoring as they run against the rules and scoring as first written (tests/reference): identical
findings, reasons, evidence and per-session marks, on a realistic network and on random courses; exact arithmetic
as ``statistics``."""

from __future__ import annotations

import statistics
from datetime import date, timedelta

import duckdb
import polars as pl
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from alliance.clinics import RuleConfig, load_clinics
from alliance.home import init_home
from alliance.samples import add_profiles, generate_sample
from alliance.settings import load_settings
from flows.pipeline import ingest_file
from flows.scoring import _features
from tests.conftest import TEST_KEY
from tests.reference import rules as reference
from tests.reference import scoring as reference_scoring
from transforms import exact
from transforms.calibration import Calibration
from transforms.expected import MAX_SESSION, Band, ExpectedCurve, curves_of
from transforms.findings import Scored, score

scores = st.floats(min_value=0, max_value=40).map(lambda v: round(v, 1))
any_floats = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


@given(values=st.lists(st.one_of(scores, any_floats), min_size=2, max_size=40))
def test_exact_means_and_sds_are_statistics_own(values: list[float]) -> None:
    assert exact.mean(values) == statistics.mean(values)
    assert exact.stdev(values) == statistics.stdev(values)
    assert exact.variance(values) == statistics.variance(values)
    for i, (mean, sd) in enumerate(exact.prefix_moments(values)):
        assert mean == (statistics.mean(values[:i]) if i else None)
        assert sd == (statistics.stdev(values[:i]) if i >= 2 else None)


def assert_same(
    features: pl.DataFrame,
    configs: dict[str, RuleConfig],
    calibrations: dict[str, Calibration],
    curves: dict[str, ExpectedCurve],
) -> Scored:
    fast = score(features, configs, calibrations, curves)
    clear = reference_scoring.score(features, configs, calibrations, curves, episodes_of=reference.series_episodes)
    assert_frame_equal(fast.findings, clear.findings)
    assert_frame_equal(fast.sessions, clear.sessions)
    return fast


@pytest.mark.slow
def test_the_rules_find_what_the_reference_rules_find_on_a_realistic_network(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    settings = load_settings(tmp_path_factory.mktemp("oracle") / "home")
    init_home(settings)
    settings.key_file.write_text(TEST_KEY)
    sample = generate_sample(settings.inbox, clinics=4, weeks=52, seed=11, dyads_per_clinic=60)
    add_profiles(settings.clinics_file, sample.profiles)
    for file in sample.files:
        ingest_file(file.path, settings)
    configs = {cid: clinic.rules for cid, clinic in load_clinics(settings.clinics_file).items()}
    with duckdb.connect(str(settings.warehouse), read_only=True) as con:
        ratings = con.sql("SELECT * EXCLUDE (export_id) FROM ratings").pl()
        calibrations = {
            row["instrument"]: Calibration(
                row["instrument"], row["sd"], row["r"], row["rc"], row["n_scores"], row["n_pairs"], row["within_sd"]
            )
            for row in con.sql(
                "SELECT * FROM calibrations QUALIFY row_number() OVER (PARTITION BY instrument ORDER BY estimated_at DESC) = 1"
            )
            .pl()
            .iter_rows(named=True)
        }
        curves = curves_of(
            con.sql(
                """SELECT * EXCLUDE (estimated_at) FROM expected_trajectories
                QUALIFY estimated_at = max(estimated_at) OVER (PARTITION BY instrument)"""
            ).pl()
        )
    scored = assert_same(_features(ratings, configs), configs, calibrations, curves)
    # the comparison means something only if the network raises most rules, ongoing and repaired
    assert scored.findings["rule"].n_unique() >= 9
    assert set(scored.findings["outcome"]) >= {"ongoing", "repaired"}


@st.composite
def courses(draw: st.DrawFn) -> pl.DataFrame:
    """Ratings of a few dyads: SRS near the ceiling with falls, WAI-SR and ORS, gaps in the session numbers."""
    rows = []
    for d in range(draw(st.integers(1, 4))):
        for code, items, top in (("SRS", 4, 10.0), ("ORS", 4, 10.0), ("WAI_SR", 12, 5.0)):
            if code != "SRS" and not draw(st.booleans()):
                continue
            n = draw(st.integers(1, 16))
            number, day = 0, date(2026, 1, 5)
            level = draw(st.sampled_from([top, top * 0.9, top * 0.6]))
            for _ in range(n):
                number += draw(st.sampled_from([1, 1, 1, 2, 4]))
                day += timedelta(days=7)
                values = [
                    round(
                        min(
                            top,
                            max(
                                top / 10 if code == "WAI_SR" else 0.0,
                                level - draw(st.sampled_from([0.0, 0.0, 0.3, 1.0, 2.5, top / 2])),
                            ),
                        ),
                        1,
                    )
                    for _ in range(items)
                ]
                rows.append(
                    {
                        "dyad_id": f"d{d}",
                        "clinic_id": "c1",
                        "client_id": f"p{d}",
                        "therapist_id": "t1",
                        "instrument": code,
                        "session_date": day,
                        "session_number": number,
                        "items": values,
                        "total": round(sum(values), 1),
                    }
                )
    return pl.DataFrame(
        rows,
        schema={
            "dyad_id": pl.String,
            "clinic_id": pl.String,
            "client_id": pl.String,
            "therapist_id": pl.String,
            "instrument": pl.String,
            "session_date": pl.Date,
            "session_number": pl.Int32,
            "items": pl.List(pl.Float64),
            "total": pl.Float64,
        },
    )


@st.composite
def expected_curves(draw: st.DrawFn) -> dict[str, ExpectedCurve]:
    """Expected curves whose intake edges and lower bands sit on the scores' 0.1 steps, some cells missing."""
    curves = {}
    for code, top in (("SRS", 40.0), ("ORS", 40.0), ("WAI_SR", 60.0)):
        if not draw(st.booleans()):
            continue
        steps = st.sampled_from([round(top * f, 1) for f in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)])
        edges = tuple(sorted(set(draw(st.lists(steps, max_size=4)))))
        cells = {}
        for band in range(len(edges) + 1):
            for cell in range(1, MAX_SESSION + 1):
                if draw(st.integers(0, 4)):  # a cell with too few dyads has no band
                    lower = draw(steps)
                    cells[(band, cell)] = Band(lower + 1.0, lower, lower + 2.0, 20, 0.0, top)
        # two instruments' curves may share an id: each series reads its own instrument's
        curves[code] = ExpectedCurve(draw(st.sampled_from([f"{code}-drawn", "drawn"])), code, edges, cells)
    return curves


@hypothesis_settings(max_examples=150, deadline=None)
@given(
    ratings=courses(),
    rc=st.one_of(st.none(), st.floats(1.0, 8.0)),
    within_sd=st.floats(0.5, 4.0),
    window=st.sampled_from([3, 4, 5]),
)
def test_the_rules_find_what_the_reference_rules_find_on_random_courses(
    ratings: pl.DataFrame, rc: float | None, within_sd: float, window: int
) -> None:
    configs = {"c1": RuleConfig(trend_window=window)}
    calibrations = {
        code: Calibration(code, 5.0, 0.5, rc, 100, 80, within_sd) for code in ("SRS", "ORS", "WAI_SR") if rc
    }
    assert_same(_features(ratings, configs), configs, calibrations, {})


@hypothesis_settings(max_examples=150, deadline=None)
@given(
    ratings=courses(),
    rc=st.sampled_from([None, 1.0, 2.5, 3.0, 4.0]),
    within_sd=st.sampled_from([0.5, 1.0, 1.25, 2.0]),
    rupture_k=st.sampled_from([1.0, 2.0]),
    decline=st.sampled_from([0.0, 1.0, 3.5]),
    cutoff=st.sampled_from([None, 30.0, 36.0]),
    window=st.sampled_from([3, 4]),
    drop=st.sampled_from([0.01, 0.3, 1.0, 2.5]),
    low_item=st.sampled_from([None, 4.5, 9.0]),
    curves=expected_curves(),
)
def test_the_screened_rules_match_the_reference_at_the_thresholds(
    ratings: pl.DataFrame,
    rc: float | None,
    within_sd: float,
    rupture_k: float,
    decline: float,
    cutoff: float | None,
    window: int,
    drop: float,
    low_item: float | None,
    curves: dict[str, ExpectedCurve],
) -> None:
    """Reliable changes, SDs, cutoffs, drops, item thresholds, intake edges and expected bands on the scores' own
    0.1 steps: falls and lows land exactly on them, where a screen or a vectorised rule that rounds the wrong way
    would differ."""
    configs = {
        "c1": RuleConfig(
            trend_window=window, rupture_k=rupture_k, trend_decline=decline, low_cutoff=cutoff, drop_points=drop
        ),
        # a second clinic with other settings: each series is screened with its own clinic's thresholds
        "c2": RuleConfig(
            trend_window=window + 2, rupture_k=3.0 - rupture_k, trend_decline=3.5 - decline, low_item=low_item
        ),
    }
    calibrations = {
        code: Calibration(code, 5.0, 0.5, rc, 100, 80, within_sd) for code in ("SRS", "ORS", "WAI_SR") if rc
    }
    # odd dyads belong to the second clinic
    ratings = ratings.with_columns(
        pl.when(pl.col("dyad_id").is_in(["d1", "d3"]))
        .then(pl.lit("c2"))
        .otherwise(pl.col("clinic_id"))
        .alias("clinic_id")
    )
    assert_same(_features(ratings, configs), configs, calibrations, curves)
