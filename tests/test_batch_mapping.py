"""Exports of one kind mapped as one frame (``flows.prevalidation.candidates_of``) give each export exactly the
candidates it gets mapped alone (``export_candidates``, the oracle): on a generated network whose clinics share
profiles, and on random frames of strings."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from polars.exceptions import PanicException
from polars.testing import assert_frame_equal

import flows.exports as exports
import flows.prevalidation as prevalidation
from alliance.clinics import Clinic
from alliance.errors import ExportRejected
from alliance.samples import generate_sample
from flows.exports import CanonicalExport, ExportCandidates, export_candidates, read_canonical
from flows.prevalidation import candidates_of
from tests.test_fuzz import PROFILES, raw_frames
from transforms.mapping import footer_split, resolve_columns, to_canonical

KEY = b"batch-mapping-key-0123456789abcd"


def _same(ours: ExportCandidates | None, theirs: ExportCandidates) -> None:
    assert ours is not None
    assert_frame_equal(ours.canonical, theirs.canonical)
    assert_frame_equal(ours.aside, theirs.aside)
    assert (ours.vendor_of, ours.today) == (theirs.vendor_of, theirs.today)
    assert [i.code for i, _ in ours.per_instrument] == [i.code for i, _ in theirs.per_instrument]
    for (_, mine), (_, oracle) in zip(ours.per_instrument, theirs.per_instrument, strict=True):
        assert_frame_equal(mine, oracle)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Clinic]]:
    """A realistic network's exports, each also sent by a twin clinic with the same profile (other pseudonyms)."""
    sample = generate_sample(
        tmp_path_factory.mktemp("mapping"), clinics=4, weeks=16, dyads_per_clinic=8, today=date(2026, 3, 1)
    )
    clinics = {cid: Clinic(id=cid, **profile) for cid, profile in sample.profiles.items()}
    twins = {cid: clinic.model_copy(update={"id": f"{cid}-twin"}) for cid, clinic in clinics.items()}
    return [(f.path, c[f.clinic_id]) for c in (clinics, twins) for f in sample.files]


def _mapped_heights(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The height of each frame ``rating_candidates`` maps from now on, in order."""
    heights: list[int] = []
    build = exports.rating_candidates

    def measured(canonical: pl.DataFrame, *args: object, **kwargs: object) -> pl.DataFrame:
        heights.append(canonical.height)
        return build(canonical, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(exports, "rating_candidates", measured)  # a file mapped alone
    monkeypatch.setattr(prevalidation, "rating_candidates", measured)  # files mapped together
    return heights


def test_exports_mapped_together_equal_each_mapped_alone(
    files: list[tuple[Path, Clinic]], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _mapped_heights(monkeypatch)
    read = [read_canonical(path, clinic) for path, clinic in files]
    ours = candidates_of(read, KEY)
    together = len(calls)
    theirs = [export_candidates(path, clinic, KEY) for path, clinic in files]
    for mine, oracle in zip(ours, theirs, strict=True):
        _same(mine, oracle)
    # one mapping per kind of export and instrument, not per file
    kinds = {
        (clinic.export.model_dump_json(), clinic.timezone, e.today, tuple(e.canonical.schema.items())): len(
            clinic.export.instruments
        )
        for (_, clinic), e in zip(files, read, strict=True)
    }
    alone = len(calls) - together
    assert together == sum(kinds.values()) and len(kinds) < len(files) / 2 and together < alone / 2
    # the equality covers rows that fail to parse, and each clinic's own pseudonyms for the same rows
    assert any(c["parse_errors"].list.len().sum() > 0 for found in theirs for _, c in found.per_instrument)
    first, twin = ours[0], ours[len(files) // 2]
    assert first is not None and twin is not None
    assert first.per_instrument[0][1]["client_id"][0] != twin.per_instrument[0][1]["client_id"][0]


@pytest.mark.parametrize("rows", [1, 300])
def test_a_kind_is_mapped_in_frames_of_at_most_map_rows(
    files: list[tuple[Path, Clinic]], monkeypatch: pytest.MonkeyPatch, rows: int
) -> None:
    """Files of one kind in runs of at most MAP_ROWS rows (one larger file alone), each equal to it mapped alone."""
    monkeypatch.setattr(prevalidation, "MAP_ROWS", rows)
    heights = _mapped_heights(monkeypatch)
    read = [read_canonical(path, clinic) for path, clinic in files]
    ours = candidates_of(read, KEY)
    largest = max(e.canonical.height for e in read)
    alone = sum(len(clinic.export.instruments) for _, clinic in files)
    assert max(heights) <= max(rows, largest) and (len(heights) == alone) == (rows == 1)
    for mine, (path, clinic) in zip(ours, files, strict=True):
        _same(mine, export_candidates(path, clinic, KEY))


@pytest.mark.parametrize(
    "failure", [pl.exceptions.ComputeError("a frame the batch could not map"), PanicException("assertion failed")]
)
def test_a_kind_that_fails_together_is_mapped_file_by_file_and_a_file_fails_alone(
    files: list[tuple[Path, Clinic]], monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    """A Polars panic is a BaseException: it falls back like any engine failure, and never stops the batch."""

    def fails(found: list[CanonicalExport]) -> list[object]:
        raise failure

    monkeypatch.setattr(prevalidation, "_mapped_together", fails)
    identified = prevalidation.identified

    def one_fails(export: CanonicalExport, *args: object) -> ExportCandidates:
        if export is read[1]:
            raise failure
        return identified(export, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(prevalidation, "identified", one_fails)
    read = [read_canonical(path, clinic) for path, clinic in files[:6]]
    ours = candidates_of(read, KEY)
    assert ours[1] is None
    for n, (mine, (path, clinic)) in enumerate(zip(ours, files[:6], strict=True)):
        if n != 1:
            _same(mine, export_candidates(path, clinic, KEY))


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(st.tuples(raw_frames(), st.sampled_from(["UTC", "Europe/Berlin"])), min_size=1, max_size=4))
def test_random_frames_mapped_together_equal_each_mapped_alone(frames: list[tuple[pl.DataFrame, str]]) -> None:
    """Frames of two clinics with one profile in two timezones: a date-time with an offset is another day."""
    read = []
    for raw, tz in frames:
        clinic = Clinic(id=f"c-{tz.lower().replace('/', '-')}", name=tz, timezone=tz, export=PROFILES["csv"])
        try:
            resolved = resolve_columns(raw.columns, clinic.export.columns, "f.csv")
        except ExportRejected:
            continue
        canonical, aside = footer_split(to_canonical(raw, resolved))
        today = datetime.now(ZoneInfo(tz)).date()
        read.append(CanonicalExport(clinic, canonical, aside, {v: k for k, v in resolved.items()}, today))
    for export, mine in zip(read, candidates_of(read, KEY), strict=True):
        oracle = candidates_of([export], KEY)[0]  # one export of its kind is mapped alone
        assert oracle is not None
        _same(mine, oracle)
