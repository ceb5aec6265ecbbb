"""Trajectory features per dyad and instrument: session index, change, baseline, slope, EWMA, own-mean distance."""

from __future__ import annotations

import hashlib

import polars as pl

DYAD_KEY = ("clinic_id", "client_id", "therapist_id")
SERIES = ("dyad_id", "instrument")
EWMA_ALPHA = 0.3
BASELINE_SESSIONS = 3


def dyad_code(clinic_id: str, client_id: str, therapist_id: str) -> str:
    """Short, stable code of a dyad, derived from the pseudonym (so it reveals nothing either)."""
    return "d" + hashlib.sha256(f"{clinic_id}|{client_id}|{therapist_id}".encode()).hexdigest()[:11]


def with_dyad_id(ratings: pl.DataFrame) -> pl.DataFrame:
    """Add ``dyad_id``, computed once per distinct dyad."""
    keys = ratings.select(DYAD_KEY).unique()
    codes = keys.with_columns(pl.Series("dyad_id", [dyad_code(*row) for row in keys.iter_rows()], dtype=pl.String))
    return ratings.join(codes, on=list(DYAD_KEY), how="left", maintain_order="left")


def course_scores(ratings: pl.DataFrame) -> pl.DataFrame:
    """Ratings in course order with each session's ``session_index`` (1-based, by date then number) and
    ``score``: all that reliable change and the expected trajectories are estimated from."""
    frame = ratings if "dyad_id" in ratings.columns else with_dyad_id(ratings)
    return frame.sort([*SERIES, "session_date", "session_number"]).with_columns(
        pl.int_range(1, pl.len() + 1).over(list(SERIES)).cast(pl.Int32).alias("session_index"),
        pl.col("total").alias("score"),
    )


def session_features(ratings: pl.DataFrame, window: int = 4) -> pl.DataFrame:
    """One row per rated session with the features the rules read.

    Input: ratings rows (clinic_id, client_id, therapist_id, instrument, session_date, session_number,
    items, total). Output adds dyad_id, session_index (1-based, by date then number), score, delta,
    baseline (mean of the first 3 sessions), slope (least squares over the last ``window`` sessions),
    ewma, dyad_mean, dyad_sd, z_own and min_item.
    """
    t = pl.col("session_index").cast(pl.Float64)
    x = pl.col("score")
    over = list(SERIES)

    def rolling(expr: pl.Expr) -> pl.Expr:
        return expr.rolling_mean(window_size=window, min_samples=window).over(over)

    return (
        course_scores(ratings)
        .with_columns(
            (x - x.shift(1).over(over)).alias("delta"),
            x.filter(pl.col("session_index") <= BASELINE_SESSIONS).mean().over(over).alias("baseline"),
            # rolling least squares: cov(t, x) / var(t) from rolling means, as numpy.polyfit gives
            ((rolling(t * x) - rolling(t) * rolling(x)) / (rolling(t * t) - rolling(t) ** 2)).alias("slope"),
            x.ewm_mean(alpha=EWMA_ALPHA, adjust=False).over(over).alias("ewma"),
            x.mean().over(over).alias("dyad_mean"),
            x.std().over(over).alias("dyad_sd"),
            pl.col("items").list.min().alias("min_item"),
        )
        .with_columns(pl.when(pl.col("dyad_sd") > 0).then((x - pl.col("dyad_mean")) / pl.col("dyad_sd")).alias("z_own"))
    )
