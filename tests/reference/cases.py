"""Cases decided by reading every dyad, flag and case of the scope, kept as the oracle of
transforms.cases.update_cases, which skips the dyads that can neither hold nor get a case (test_cases.py)."""

from __future__ import annotations

from transforms.cases import decide_cases as update_cases

__all__ = ["update_cases"]
