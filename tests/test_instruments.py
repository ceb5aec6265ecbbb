from __future__ import annotations

import json

import pytest

from alliance.errors import ConfigError
from alliance.instruments import instrument, registry
from expectations.suites import build_suite, suite_path


def test_registry_holds_the_published_scales() -> None:
    srs, ors, wai = instrument("SRS"), instrument("ors"), instrument("WAI_SR")
    assert (srs.item_min, srs.item_max, srs.total_min, srs.total_max, len(srs.items)) == (0, 10, 0, 40, 4)
    assert ors.total_max == 40 and ors.construct == "outcome"
    assert (wai.total_min, wai.total_max, len(wai.items)) == (12, 60, 12)
    assert wai.subscales["task"] == ("q1", "q2", "q10", "q12")
    assert sorted(i for items in wai.subscales.values() for i in items) == sorted(wai.items)
    arm = instrument("ARM5")
    assert arm.score == "mean" and arm.reverse == ("q3",) and arm.total_max == 7


def test_unknown_instrument_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown instrument 'XYZ'"):
        instrument("XYZ")


@pytest.mark.parametrize("code", sorted(registry()))
def test_committed_suite_matches_the_registry(code: str) -> None:
    """A registry edit without `alliance expectations --write` fails here."""
    committed = json.loads(suite_path(code).read_text(encoding="utf-8"))
    assert committed == build_suite(registry()[code])
