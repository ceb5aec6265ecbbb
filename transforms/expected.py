"""Expected trajectories from the network's own history: score by session number for clients with a similar intake.

The approach of OQ-Analyst's expected recovery curves (Finch, Lambert & Schaalje 2001) and PCOMS's expected
treatment response: dyads are grouped by their intake score (quintiles), and for each group and session
number the expected (mean) score and a tolerance band (10th–90th percentile) are estimated from every
stored course. A score below the lower band is off the path similar clients took.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import polars as pl

INTAKE_BANDS = 5
MAX_SESSION = 12  # later sessions share the 12th session's band: few courses run longer
LOWER_Q, UPPER_Q = 0.10, 0.90
MIN_CELL = 20  # fewer dyads give a band too unstable to judge by
DIGITS = 4

CURVE_SCHEMA: dict[str, pl.DataType] = {
    "curve_id": pl.String(),
    "instrument": pl.String(),
    "intake_band": pl.Int32(),
    "intake_lo": pl.Float64(),
    "intake_hi": pl.Float64(),
    "session_index": pl.Int32(),
    "expected": pl.Float64(),
    "lower": pl.Float64(),
    "upper": pl.Float64(),
    "n": pl.Int32(),
}


@dataclass(frozen=True)
class Band:
    expected: float
    lower: float
    upper: float
    n: int
    intake_lo: float
    intake_hi: float


@dataclass(frozen=True)
class ExpectedCurve:
    """One instrument's expected score by intake band and session number, with its tolerance band."""

    curve_id: str
    instrument: str
    edges: tuple[float, ...]  # inner intake edges: band k holds intakes in [edges[k-1], edges[k])
    cells: dict[tuple[int, int], Band]

    def band_of(self, intake: float) -> int:
        return bisect.bisect_right(self.edges, intake)

    def at(self, intake: float, session_index: int) -> Band | None:
        """The band for a course that started at ``intake``, at its ``session_index``-th session (1-based)."""
        return self.cells.get((self.band_of(intake), min(session_index, MAX_SESSION)))

    def course(self, intake: float, sessions: int) -> list[Band | None]:
        """The bands of a course's first ``sessions`` sessions: ``at`` for each, its intake band found once."""
        band = self.band_of(intake)
        return [self.cells.get((band, min(i, MAX_SESSION))) for i in range(1, sessions + 1)]


def estimate_expected(features: pl.DataFrame) -> list[ExpectedCurve]:
    """Curves per instrument from ``session_features`` output (dyad_id, instrument, session_index, score)."""
    intake = features.filter(pl.col("session_index") == 1).select(
        "dyad_id", "instrument", pl.col("score").alias("intake")
    )
    frame = features.join(intake, on=["dyad_id", "instrument"], how="inner").with_columns(
        pl.col("session_index").clip(upper_bound=MAX_SESSION).alias("session_cell")
    )
    curves = []
    for (code,), part in sorted(frame.partition_by("instrument", as_dict=True).items()):
        intakes = part.filter(pl.col("session_index") == 1)["intake"]
        if intakes.len() < MIN_CELL * INTAKE_BANDS:
            continue
        edges = tuple(
            sorted(
                {
                    round(float(intakes.quantile(k / INTAKE_BANDS, "linear") or 0.0), DIGITS)
                    for k in range(1, INTAKE_BANDS)
                }
            )
        )
        # band k holds intakes at or above k inner edges, as bisect_right places them
        above = [(pl.col("intake") >= edge).cast(pl.Int32) for edge in edges]
        band = pl.sum_horizontal(above) if above else pl.lit(0)
        banded = part.with_columns(band.cast(pl.Int32).alias("band"))
        stats = (
            banded.group_by("band", "session_cell")
            .agg(
                pl.col("score").mean().alias("expected"),
                pl.col("score").quantile(LOWER_Q, "linear").alias("lower"),
                pl.col("score").quantile(UPPER_Q, "linear").alias("upper"),
                pl.len().alias("n"),
            )
            .filter(pl.col("n") >= MIN_CELL)
            .sort("band", "session_cell")
        )
        bounds = [float("-inf"), *edges, float("inf")]
        cells = {
            (row["band"], row["session_cell"]): Band(
                round(row["expected"], DIGITS),
                round(row["lower"], DIGITS),
                round(row["upper"], DIGITS),
                row["n"],
                bounds[row["band"]],
                bounds[row["band"] + 1],
            )
            for row in stats.iter_rows(named=True)
        }
        curves.append(ExpectedCurve(f"{code}-curve-n{intakes.len()}-c{len(cells)}", code, edges, cells))
    return curves


def curves_frame(curves: list[ExpectedCurve]) -> pl.DataFrame:
    """Rows for the ``expected_trajectories`` table."""
    rows = [
        {
            "curve_id": c.curve_id,
            "instrument": c.instrument,
            "intake_band": band,
            "intake_lo": b.intake_lo,
            "intake_hi": b.intake_hi,
            "session_index": session,
            "expected": b.expected,
            "lower": b.lower,
            "upper": b.upper,
            "n": b.n,
        }
        for c in curves
        for (band, session), b in sorted(c.cells.items())
    ]
    return pl.DataFrame(rows, schema=CURVE_SCHEMA)


def curves_of(frame: pl.DataFrame) -> dict[str, ExpectedCurve]:
    """Curves back from stored rows (one curve_id per instrument)."""
    out = {}
    for (code,), part in frame.partition_by("instrument", as_dict=True).items():
        cells = {
            (r["intake_band"], r["session_index"]): Band(
                r["expected"], r["lower"], r["upper"], r["n"], r["intake_lo"], r["intake_hi"]
            )
            for r in part.iter_rows(named=True)
        }
        edges = sorted({v for b in cells.values() for v in (b.intake_lo, b.intake_hi) if abs(v) != float("inf")})
        out[str(code)] = ExpectedCurve(str(part["curve_id"][0]), str(code), tuple(edges), cells)
    return out
