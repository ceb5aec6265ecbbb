"""Rules that hold session by session, judged for every series at once in Polars: rule 1 (low score), rule 8
(not on track), alliance below the expected band, and rule 9a (engagement gap).

Each holds or not at each session of a series, and its episodes are the runs of consecutive sessions where it
holds, each ended by the first session where it does not. The per-dyad loop ran them on every series; here each
is a few passes over every session. Reasons and evidence are the text the per-dyad rules wrote (tests/reference,
held to it by tests/test_rules_oracle.py): every number in them is formatted by Python, once per distinct value.
"""

from __future__ import annotations

import json

import polars as pl

from alliance.instruments import instrument
from transforms.advisory import EPISODE_SCHEMA, run_starts, same, score_texts, text, texts, with_evidence
from transforms.episodes import EPS, Thresholds
from transforms.expected import MAX_SESSION

RULES = ("low_score", "below_expected", "not_on_track", "engagement_gap")
SETTINGS_SCHEMA: dict[str, pl.DataType] = {
    "clinic_id": pl.String(), "instrument": pl.String(), "alliance": pl.Boolean(), "outcome": pl.Boolean(),
    "cutoff": pl.Float64(), "cutoff_text": pl.String(), "cutoff_json": pl.String(), "improvement": pl.Float64(),
    "gap_sessions": pl.Int64(), "curve_id": pl.String(), "curve_json": pl.String(),
}  # fmt: skip
BAND_SCHEMA: dict[str, pl.DataType] = {
    "instrument": pl.String(), "curve_id": pl.String(), "band": pl.Int64(), "cell": pl.Int64(),
    "lower": pl.Float64(), "expected": pl.Float64(),
}  # fmt: skip
i, x, number = pl.col("i"), pl.col("score"), pl.col("session_number")
cutoff, lower, curve = pl.col("cutoff"), pl.col("lower"), pl.col("curve_id")


def settings_frame(thresholds: dict[tuple[str, str], Thresholds]) -> pl.DataFrame:
    """One row per (clinic, instrument): what the four rules read, and the text reasons and evidence show it as."""
    rows = []
    for (clinic, code), th in thresholds.items():
        inst, cut, expected = instrument(code), th.cutoff, th.expected
        improvement = th.rc if th.rc is not None else 5.0 * inst.srs_point  # rule 8's reliable improvement
        rows.append(
            (
                clinic, code, inst.construct == "alliance", inst.construct == "outcome",
                cut, None if cut is None else f"{cut:g}", json.dumps(cut), improvement, th.gap_sessions,
                None if expected is None else expected.curve_id,
                None if expected is None else json.dumps(expected.curve_id),
            )
        )  # fmt: skip
    return pl.DataFrame(rows, schema=SETTINGS_SCHEMA, orient="row")


def bands_frame(thresholds: dict[tuple[str, str], Thresholds]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Each instrument's expected curve: its inner intake edges (instrument, curve_id, edge) and its bands by
    intake band and session cell."""
    curves = {(code, th.expected.curve_id): th.expected for (_, code), th in thresholds.items() if th.expected}
    edges = [(*key, edge) for key, c in curves.items() for edge in c.edges]
    bands = [
        (*key, band, cell, b.lower, b.expected) for key, c in curves.items() for (band, cell), b in c.cells.items()
    ]
    edge_schema = {"instrument": pl.String(), "curve_id": pl.String(), "edge": pl.Float64()}
    return pl.DataFrame(edges, schema=edge_schema, orient="row"), pl.DataFrame(bands, schema=BAND_SCHEMA, orient="row")


def session_runs(sessions: pl.DataFrame, thresholds: dict[tuple[str, str], Thresholds]) -> pl.DataFrame:
    """Every episode of the four rules (EPISODE_SCHEMA) in ``sessions``: one row per session of each series k,
    with its position i in the series, the series' length n, clinic_id, instrument, session_date,
    session_number and score."""
    frame = sessions.join(settings_frame(thresholds), on=["clinic_id", "instrument"], nulls_equal=True)
    if frame.is_empty():
        return pl.DataFrame(schema=EPISODE_SCHEMA)
    frame = _with_bands(frame.sort("k", "i"), thresholds)
    frame = frame.with_columns(
        *score_texts(frame["score"]),
        texts(frame["lower"]),
        texts(frame["expected"]),
        number.cast(pl.String).alias("number"),  # as with_evidence reads it
        # sessions are in series order: the one before and after within the same series
        pl.when(same(1)).then(number.shift(1)).alias("before"),
        pl.when(same(-1)).then(number.shift(-1)).cast(pl.String).alias("next"),
    ).with_columns(
        pl.when(i == 0)
        .then(pl.col("score", "score_text", "score_json"))
        .forward_fill()
        .name.map(lambda c: c.replace("score", "intake")),
        (number - pl.col("before") - 1).alias("gap"),
    )
    on_curve = curve.is_not_null()
    below_band = lower.is_not_null() & (x < lower - EPS)
    holds = {
        "low_score": pl.col("alliance") & (x < cutoff - EPS),
        "below_expected": pl.col("alliance") & on_curve & (i >= 1) & below_band,
        "not_on_track": pl.col("outcome")
        & (i >= 2)
        & pl.when(on_curve)
        .then(below_band)
        .otherwise((x < cutoff - EPS) & (x - pl.col("intake") < pl.col("improvement") - EPS)),
        "engagement_gap": ~pl.col("outcome") & (i > 0) & (pl.col("gap") >= pl.col("gap_sessions")),
    }
    runs = pl.concat([_runs(frame, rule, hold) for rule, hold in holds.items()])
    return with_evidence(_described(runs), frame)


def _with_bands(frame: pl.DataFrame, thresholds: dict[tuple[str, str], Thresholds]) -> pl.DataFrame:
    """Each session's expected band (lower, expected; null where its cell has none): the band of the series'
    intake (how many of the curve's inner edges are at or below it) at the session's cell."""
    edges, bands = bands_frame(thresholds)
    intake_band = (
        frame.filter(i == 0)
        .select("k", "instrument", "curve_id", intake=x)
        .join(edges, on=["instrument", "curve_id"], how="left")
        .group_by("k")
        .agg((pl.col("edge") <= pl.col("intake")).sum().cast(pl.Int64).alias("band"))
    )
    return (
        frame.join(intake_band, on="k", how="left", maintain_order="left")
        .with_columns((i + 1).clip(upper_bound=MAX_SESSION).alias("cell"))
        .join(bands, on=["instrument", "curve_id", "band", "cell"], how="left", maintain_order="left")
    )


def _runs(frame: pl.DataFrame, rule: str, hold: pl.Expr) -> pl.DataFrame:
    """The runs of sessions of each series where ``hold``: their span, and what reasons and magnitudes read."""
    lowest = x.min()
    return (
        frame.filter(hold.fill_null(False))
        .with_columns(run_starts().cum_sum().alias("run"))
        .group_by("k", "run", maintain_order=True)
        .agg(
            pl.col(
                "n", "instrument", "cutoff", "cutoff_text", "cutoff_json", "curve_id", "curve_json", "gap_sessions",
                "intake_text", "intake_json",
            ).first(),
            pl.col("number", "score_text", "lower_text", "expected_text", "before", "next", "gap").last(),
            start=i.first(),
            last=i.last(),
            sessions=pl.len(),
            lowest=lowest,
            lowest_text=pl.col("score_text").filter(x == lowest).first(),
            lowest_at=pl.col("number").filter(x == lowest).first(),
            depth=(lower - x).max(),
        )
        .with_columns(rule=pl.lit(rule))
    )  # fmt: skip


def _described(runs: pl.DataFrame) -> pl.DataFrame:
    """Each run's magnitude, reason and evidence around its sessions, as the per-dyad rules wrote them."""
    rule, on_curve = pl.col("rule"), curve.is_not_null()
    banded = (rule == "below_expected") | ((rule == "not_on_track") & on_curve)
    shortfall = cutoff - pl.col("lowest")
    magnitude = (
        pl.when(banded).then(pl.col("depth"))
        .when(rule == "engagement_gap").then(pl.col("gap").cast(pl.Float64))
        .otherwise(shortfall)
    )  # fmt: skip
    at = (pl.col("score_text"), " at session ", pl.col("number"))
    in_a_row = (
        pl.when(pl.col("sessions") > 1).then(pl.format(" ({} sessions in a row)", "sessions")).otherwise(pl.lit(""))
    )
    band = text(" (lower ", pl.col("lower_text"), ", expected ", pl.col("expected_text"))
    reason = (
        pl.when(rule == "low_score")
        .then(text(pl.col("instrument"), " ", pl.col("lowest_text"), " at session ", pl.col("lowest_at"),
                   " is below the cutoff ", pl.col("cutoff_text"), in_a_row, ": discuss"))
        .when(rule == "below_expected")
        .then(text(pl.col("instrument"), " ", *at, " is below the band clients starting near ", pl.col("intake_text"),
                   " score at this session", band, ")"))
        .when(banded)
        .then(text(pl.col("instrument"), " ", *at, " is below the expected recovery band", band,
                   " for clients starting near ", pl.col("intake_text"), ")"))
        .when(rule == "not_on_track")
        .then(text(pl.col("instrument"), " ", *at, " below the cutoff ", pl.col("cutoff_text"),
                   " with no reliable improvement since intake (", pl.col("intake_text"), ")"))
        .otherwise(text(pl.col("gap").cast(pl.String), " sessions without a rating between sessions ",
                        pl.col("before").cast(pl.String), " and ", pl.col("number")))
    )  # fmt: skip
    head = (
        pl.when(rule == "engagement_gap").then(text('{"gap_sessions": ', pl.col("gap_sessions").cast(pl.String), ", "))
        .when(rule == "below_expected").then(text('{"curve": ', pl.col("curve_json"), ", "))
        .when(banded).then(text('{"curve": ', pl.col("curve_json"), ', "intake": ', pl.col("intake_json"), ", "))
        .when(rule == "not_on_track")
        .then(text('{"cutoff": ', pl.col("cutoff_json"), ', "intake": ', pl.col("intake_json"), ", "))
        .otherwise(text('{"cutoff": ', pl.col("cutoff_json"), ", "))
    )  # fmt: skip
    stop = pl.col("last") + 1
    return runs.select(
        "k",
        "rule",
        "start",
        "last",
        stop=stop,
        ongoing=stop == pl.col("n"),
        magnitude=magnitude,
        reason=pl.concat_str(reason, pl.format("; session {} recovered", "next").fill_null("")),
        head=head,
        tail=pl.lit("}"),
    )
