"""GX's failing rows, read by their position in a frame whose text is handed to GX as codes, equal them read by
named index columns from the text itself, the first way (``tests/reference/gx_failures.py``): on random frames
with duplicates, alone and in batches, and on a realistic network's exports."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from alliance.clinics import Clinic
from alliance.samples import generate_sample
from expectations import validate as validate_module
from expectations import validate_exports, validate_ratings
from flows.exports import export_candidates
from tests.reference.gx_failures import failures as reference_failures
from tests.test_batch_validation import KEY, _candidates
from tests.test_fuzz import SRS, raw_frames


def _both(validation: Callable[[], list[pl.DataFrame]]) -> tuple[list[pl.DataFrame], list[pl.DataFrame]]:
    """The validation's failures as ``_failures`` reads them, and as the reference reads them."""
    found = validation()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(validate_module, "_failures", reference_failures)
        expected = validation()
    return found, expected


@hypothesis_settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(raw_frames(), min_size=1, max_size=3), repeat=st.integers(0, 3))
def test_failing_rows_by_position_equal_them_by_named_columns(frames: list[pl.DataFrame], repeat: int) -> None:
    parts = [c for c in map(_candidates, frames) if c is not None]
    # a frame's rows again under new row ids: each one a duplicate of an earlier row
    parts = [pl.concat([part, part.head(repeat).with_columns(pl.col("row_id") + part.height)]) for part in parts]
    for found, expected in zip(*_both(lambda: validate_exports(parts, SRS)), strict=True):
        assert_frame_equal(found, expected)
    for found, expected in zip(*_both(lambda: [validate_ratings(p, SRS) for p in parts]), strict=True):
        assert_frame_equal(found, expected)


def test_a_realistic_network_fails_the_same_rows_for_the_same_rules(tmp_path: Path) -> None:
    network = generate_sample(tmp_path, clinics=4, weeks=20, dyads_per_clinic=12, today=date(2026, 3, 1))
    by_code: dict[str, tuple[object, list[pl.DataFrame]]] = {}
    for export in network.files:
        clinic = Clinic(id=export.clinic_id, **network.profiles[export.clinic_id])
        for inst, candidates in export_candidates(export.path, clinic, KEY).per_instrument:
            # an item left blank now and then: the network plants none
            blank = pl.when(pl.col("row_id") % 11 != 0).then(pl.col(f"{inst.item_fields[0]}__raw")).name.keep()
            by_code.setdefault(inst.code, (inst, []))[1].append(candidates.with_columns(blank))
    rules: set[str] = set()
    for inst, parts in by_code.values():
        found, expected = _both(lambda: validate_exports(parts, inst))  # type: ignore[arg-type]  # noqa: B023
        for got, want in zip(found, expected, strict=True):
            assert_frame_equal(got, want)
            rules |= set(got["rule"])
    # the network plants out-of-range, missing and duplicated rows: each kind is compared, not an empty frame
    assert {rule.split(":")[0] for rule in rules} >= {"out_of_range", "missing", "duplicate_in_file", "total_mismatch"}
    assert {"missing:client_ref", "missing:srs_relationship"} <= rules


def test_gx_is_handed_no_client_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    network = generate_sample(tmp_path, clinics=1, weeks=8, dyads_per_clinic=6, today=date(2026, 3, 1))
    export = network.files[0]
    clinic = Clinic(id=export.clinic_id, **network.profiles[export.clinic_id])
    inst, candidates = export_candidates(export.path, clinic, KEY).per_instrument[0]
    handed: list[object] = []
    definition = validate_module._batch_definition()

    class Recording:
        def get_batch(self, batch_parameters: dict[str, object]) -> object:
            handed.append(batch_parameters["dataframe"])
            return definition.get_batch(batch_parameters=batch_parameters)

    monkeypatch.setattr(validate_module, "_batch_definition", Recording)
    validate_ratings(candidates, inst)
    (frame,) = handed
    texts = {value for name in ("client_ref", "therapist_id") for value in candidates[name].drop_nulls()}
    assert texts and "client_ref" in frame.columns  # type: ignore[attr-defined]
    assert not texts & {value for column in frame.columns for value in frame[column]}  # type: ignore[attr-defined]
