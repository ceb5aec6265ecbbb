"""The realistic profile: SRS figures from published norms, read back from the written US CSV files."""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from datetime import date
from pathlib import Path

import pytest

from alliance.samples import REALISTIC_PATTERNS, SampleSet, generate_sample

TODAY = date(2025, 3, 1)


@pytest.fixture(scope="module")
def realistic(tmp_path_factory: pytest.TempPathFactory) -> SampleSet:
    # clinics 1 and 5 are US CSV (SRS): 2 clinics x 400 dyads over a year
    return generate_sample(
        tmp_path_factory.mktemp("real"), clinics=5, weeks=52, seed=5, today=TODAY, dyads_per_clinic=400
    )


def srs_sessions(sample: SampleSet) -> dict[str, list[tuple[int, float]]]:
    """client ref -> (session number, SRS total) from the written US CSV exports."""
    courses: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for file in sample.files:
        if file.layout != "us_csv" or file.corrected_expected:
            continue
        with file.path.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                if row["Client ID"] and row["SRS Total"].replace(".", "").isdigit() and row["Session #"].isdigit():
                    courses[row["Client ID"]].append((int(row["Session #"]), float(row["SRS Total"])))
    return courses


def test_session_scores_sit_where_published_srs_norms_put_them(realistic: SampleSet) -> None:
    totals = [total for course in srs_sessions(realistic).values() for _, total in course]
    assert len(totals) > 3000
    assert 0.62 <= sum(36 <= t <= 40 for t in totals) / len(totals) <= 0.78
    assert 0.20 <= sum(t == 40 for t in totals) / len(totals) <= 0.33


def test_clients_differ_in_level_and_scatter_around_it(realistic: SampleSet) -> None:
    stable = [d for d in realistic.dyads if d.pattern == "stable" and d.level is not None]
    levels = [min(40.0, d.level or 0.0) for d in stable]
    assert 2.0 <= statistics.stdev(levels) <= 3.2
    assert sum(30 <= level <= 34 for level in levels) / len(levels) >= 0.04  # some sit at 30–34 throughout
    spreads = [d.within_sd or 0.0 for d in stable]
    assert min(spreads) >= 1.0 and max(spreads) <= 2.0


def test_courses_are_short_and_some_sessions_go_unrated(realistic: SampleSet) -> None:
    courses = srs_sessions(realistic)
    stable = {d.client_ref for d in realistic.dyads if d.pattern == "stable"}
    lengths = [max(n for n, _ in course) for ref, course in courses.items() if ref in stable]
    assert 7 <= statistics.median(lengths) <= 9
    # a fifth of full courses are 5 or fewer; courses still running when the export was cut add to it
    assert 0.15 <= sum(n <= 5 for n in lengths) / len(lengths) <= 0.36
    planted = [c for ref, c in courses.items() if ref in {d.client_ref for d in realistic.dyads}]
    numbered = sum(max(n for n, _ in c) for c in planted)
    rated = sum(len(c) for c in planted)
    assert 0.01 <= 1 - rated / numbered <= 0.09  # gaps in session numbers are unrated sessions


def test_every_realistic_shape_is_planted_and_its_event_is_rated(realistic: SampleSet) -> None:
    courses = srs_sessions(realistic)
    us = {f.clinic_id for f in realistic.files if f.layout == "us_csv"}
    planted = [d for d in realistic.dyads if d.clinic_id in us and d.pattern != "stable"]
    assert {d.pattern for d in planted} == set(REALISTIC_PATTERNS[1:])
    for dyad in planted:
        course = dict(courses[dyad.client_ref])
        assert dyad.event_session in course
    share = len([d for d in realistic.dyads if d.pattern != "stable"]) / len(realistic.dyads)
    assert 0.15 <= share <= 0.25


def test_a_sudden_loss_falls_and_stays_down(realistic: SampleSet) -> None:
    courses = srs_sessions(realistic)
    for dyad in (d for d in realistic.dyads if d.pattern == "sudden_loss" and d.clinic_id in {"northside", "clinic05"}):
        course = dict(courses[dyad.client_ref])
        event = dyad.event_session or 0
        before = [v for n, v in course.items() if n < event]
        after = [v for n, v in course.items() if n >= event]
        assert statistics.mean(before) - statistics.mean(after) >= 3.0


def test_more_noise_spreads_a_dyad_further(tmp_path: Path) -> None:
    calm = generate_sample(tmp_path / "a", clinics=1, weeks=30, seed=2, today=TODAY, dyads_per_clinic=80, noise=0.5)
    loud = generate_sample(tmp_path / "b", clinics=1, weeks=30, seed=2, today=TODAY, dyads_per_clinic=80, noise=2.0)
    assert max(d.within_sd or 0 for d in calm.dyads) <= 1.0 < min(d.within_sd or 0 for d in loud.dyads)


def test_unknown_profile_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="profile"):
        generate_sample(tmp_path, profile="noisy")
