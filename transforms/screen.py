"""Which rules could open an episode on each series, judged for every series at once in Polars.

Most courses never come near most rules: a rupture needs a session k pooled SDs below the dyad's earlier mean,
a sudden loss a fall of a reliable change. Each test below is a necessary condition of a rule's first session of
evidence, loosened by ``MARGIN``, so a rule it rules out would have found nothing; the per-dyad rules then run
only where a rule could fire (tests/test_rules_oracle.py holds the result to the unscreened reference rules).
"""

from __future__ import annotations

import polars as pl

from transforms.episodes import Thresholds

# far above float noise between Polars' sums and the rules' exact arithmetic, far below a score's 0.1 step
MARGIN = 1e-3
# the rules screened here, run per series (transforms.rules); the others run over every series at once
SCREENED = ("new_low", "reliable_decrease", "sudden_loss", "rupture", "declining_trend")
THRESHOLD_SCHEMA: dict[str, pl.DataType] = {
    "clinic_id": pl.String(), "instrument": pl.String(), "cutoff": pl.Float64(), "rc": pl.Float64(),
    "pooled_sd": pl.Float64(), "rupture_k": pl.Float64(), "trend_window": pl.Int64(), "trend_decline": pl.Float64(),
}  # fmt: skip


def thresholds_frame(thresholds: dict[tuple[str, str], Thresholds]) -> pl.DataFrame:
    """One row per (clinic, instrument) with the thresholds the screen reads."""
    rows = [
        (clinic, code, th.cutoff, th.rc, th.pooled_sd or 0.0, th.rupture_k, th.trend_window, th.trend_decline)
        for (clinic, code), th in thresholds.items()
    ]
    return pl.DataFrame(rows, schema=THRESHOLD_SCHEMA, orient="row")


def possible_rules(features: pl.DataFrame, thresholds: pl.DataFrame) -> pl.DataFrame:
    """``features`` (in course order within each dyad and instrument) with a column ``can_<rule>`` per screened
    rule: true at each session where the rule could open an episode."""
    series = ["dyad_id", "instrument"]
    x, i = pl.col("score"), pl.col("_i")
    rc, last_two, fall = pl.col("rc"), pl.col("_last_two"), pl.col("_fall")
    # a new low opens below the cutoff after two or more sessions none of which was, and a reliable
    # change below their mean
    new_low = (
        (i >= 2)
        & (x < pl.col("cutoff") + MARGIN)
        & (pl.col("_lowest_before") > pl.col("cutoff") - MARGIN)
        & (pl.col("_earlier_mean") - x >= rc - MARGIN)
    )
    # rule 7 opens where the level before its windows (a median of earlier sessions, so at most their highest)
    # is trend_decline above the last two sessions, or where those sit rc below the first three's mean
    steep = (i >= pl.col("trend_window")) & (pl.col("_highest_before") - last_two >= pl.col("trend_decline") - MARGIN)
    held_low = (i >= 5) & (pl.col("_first_three") - last_two >= rc - MARGIN)
    # rule 6 opens k SDs below the earlier mean, and its SD is never below the pooled one
    deep = (i >= 2) & (x < pl.col("_earlier_mean") - pl.col("rupture_k") * pl.col("pooled_sd") + MARGIN)
    # a session the thresholds did not join to (no clinic id) rules nothing out
    unmatched = pl.col("rupture_k").is_null()

    def could(opens: pl.Expr) -> pl.Expr:
        return opens.fill_null(False) | unmatched

    return (
        features.join(thresholds, on=["clinic_id", "instrument"], how="left", maintain_order="left")
        .with_columns(
            pl.int_range(pl.len()).over(series).alias("_i"),
            ((x.cum_sum() - x) / pl.int_range(pl.len())).over(series).alias("_earlier_mean"),
            ((x + x.shift(1)) / 2).over(series).alias("_last_two"),
            (x.shift(1) - x).over(series).alias("_fall"),
            x.cum_max().shift(pl.col("trend_window").first().fill_null(0)).over(series).alias("_highest_before"),
            x.cum_min().shift(1).over(series).alias("_lowest_before"),
            x.head(3).mean().over(series).alias("_first_three"),
        )
        .with_columns(
            could(new_low).alias("can_new_low"),
            could(fall >= rc - MARGIN).alias("can_reliable_decrease"),
            could(fall >= rc - MARGIN).alias("can_sudden_loss"),
            could(deep).alias("can_rupture"),
            (could(steep) | could(held_low)).alias("can_declining_trend"),
        )
    )
