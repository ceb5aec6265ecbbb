"""Reliable change per instrument from the pooled data (Jacobson & Truax 1991)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

Z_95 = 1.96
DIGITS = 6  # parallel float sums differ in the last bits between runs; rounding keeps estimates identical
MIN_PAIRS = 30  # fewer consecutive-session pairs give an SD and r too unstable to flag on


@dataclass(frozen=True)
class Calibration:
    """Pooled SD of session scores, consecutive-session correlation r, and RC = 1.96·√2·SD·√(1−r).

    ``within_sd`` is the typical spread of one dyad's own scores (root mean within-dyad variance): the
    "SD across clients" that keeps a dyad with a tiny SD of its own from reading noise as rupture.
    """

    instrument: str
    sd: float
    r: float
    rc: float
    n_scores: int
    n_pairs: int
    within_sd: float

    @property
    def calibration_id(self) -> str:
        """Names the estimate a flag used, e.g. 'SRS-n12345'; the same data give the same id."""
        return f"{self.instrument}-n{self.n_scores}-p{self.n_pairs}"


def reliable_change(sd: float, r: float) -> float:
    """RC for a difference of two scores, e.g. ``reliable_change(3.0, 0.6)`` ≈ 5.26."""
    return Z_95 * math.sqrt(2) * sd * math.sqrt(max(0.0, 1 - r))


def estimate(features: pl.DataFrame) -> list[Calibration]:
    """One calibration per instrument with enough consecutive pairs; features from ``session_features``."""
    pairs = features.with_columns(pl.col("score").shift(1).over("dyad_id", "instrument").alias("previous"))
    within = (
        features.group_by("dyad_id", "instrument")
        .agg(pl.col("score").var().alias("var"))
        .group_by("instrument")
        .agg(pl.col("var").mean().sqrt().alias("within_sd"))
    )
    stats = (
        pairs.group_by("instrument")
        .agg(
            pl.col("score").std().alias("sd"),
            pl.corr("previous", "score").alias("r"),
            pl.len().alias("n_scores"),
            pl.col("previous").is_not_null().sum().alias("n_pairs"),
        )
        .join(within, on="instrument", how="left")
    )
    out = []
    for row in stats.sort("instrument").iter_rows(named=True):
        if row["n_pairs"] < MIN_PAIRS or row["sd"] is None or row["r"] is None or math.isnan(row["r"]):
            continue
        sd, r = round(row["sd"], DIGITS), round(row["r"], DIGITS)
        out.append(
            Calibration(
                instrument=row["instrument"],
                sd=sd,
                r=r,
                rc=round(reliable_change(sd, r), DIGITS),
                n_scores=row["n_scores"],
                n_pairs=row["n_pairs"],
                within_sd=round(row["within_sd"] or 0.0, DIGITS),
            )
        )
    return out
