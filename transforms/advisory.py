"""Rules 2 (drop) and 3 (low item), judged for every series at once in Polars.

These two advisory rules fire on most alliance courses (at backfill scale a drop on 89% of series, a low item on
77%), so the per-dyad loop spent most of its time on them and their findings. Here each is a few passes over every
session. Reasons and evidence are the text the per-dyad rules wrote (tests/reference, held to it by
tests/test_rules_oracle.py): every number in them is formatted by Python, once per distinct value.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import polars as pl

from alliance.instruments import instrument
from transforms.episodes import EPS, Thresholds, _fmt

RULES = ("drop", "low_item")
# one row per episode of series k (a row of the grouped series): evidence at sessions start..last, ended by
# session stop (the series' length while ongoing)
EPISODE_SCHEMA: dict[str, pl.DataType] = {
    "k": pl.Int64(), "rule": pl.String(), "start": pl.Int64(), "last": pl.Int64(), "stop": pl.Int64(),
    "ongoing": pl.Boolean(), "magnitude": pl.Float64(), "reason": pl.String(), "evidence": pl.String(),
}  # fmt: skip
SETTINGS_SCHEMA: dict[str, pl.DataType] = {
    "clinic_id": pl.String(), "instrument": pl.String(), "drop": pl.Float64(), "drop_json": pl.String(),
    "low_item": pl.Float64(), "low_item_json": pl.String(), "low_item_text": pl.String(),
}  # fmt: skip
i, n, x, start, stop = pl.col("i"), pl.col("n"), pl.col("score"), pl.col("start"), pl.col("stop")


def settings_frame(thresholds: dict[tuple[str, str], Thresholds]) -> pl.DataFrame:
    """One row per (clinic, alliance instrument): each rule's threshold, and the text evidence and reasons show it
    as. A low item applies only where the instrument has a practice threshold (``low_item`` not null)."""
    rows = []
    for (clinic, code), th in thresholds.items():
        if instrument(code).construct != "alliance":
            continue
        item = th.low_item
        text = None if item is None else f"{item:g}"
        rows.append((clinic, code, th.drop, json.dumps(th.drop), item, json.dumps(item), text))
    return pl.DataFrame(rows, schema=SETTINGS_SCHEMA, orient="row")


def advisories(sessions: pl.DataFrame, thresholds: dict[tuple[str, str], Thresholds]) -> pl.DataFrame:
    """Every drop and low-item episode (EPISODE_SCHEMA) in ``sessions``: one row per session of each series k,
    with its position i in the series, the series' length n, clinic_id, instrument, session_date,
    session_number, score and items."""
    frame = sessions.join(settings_frame(thresholds), on=["clinic_id", "instrument"], nulls_equal=True)
    if frame.is_empty():
        return pl.DataFrame(schema=EPISODE_SCHEMA)
    frame = frame.sort("k", "i")
    frame = frame.with_columns(*score_texts(frame["score"]), pl.col("session_number").cast(pl.String).alias("number"))
    parts = frame.filter(pl.col("low_item").is_not_null()).partition_by("instrument")
    episodes = pl.concat([_drops(frame), *(_low_items(part) for part in parts)])
    # how far below its level a session is: its score for a drop, its lowest item for a low item
    floor = pl.when(pl.col("rule") == "drop").then(x).otherwise(pl.col("items").list.min())
    return with_evidence(episodes, frame, (pl.col("level") - floor).filter(i >= start).max())


def texts(values: pl.Series, render: Callable[[float], str] = _fmt) -> pl.Expr:
    """Each value of the column ``values`` as ``render`` writes it, called once per distinct value (Polars
    formats floats its own way), named ``<column>_text``."""
    distinct = values.unique().drop_nulls().to_list()
    column = pl.col(values.name)
    rendered = [render(v) for v in distinct]
    return column.replace_strict(distinct, rendered, default=None, return_dtype=pl.String).alias(f"{values.name}_text")


def same(offset: int) -> pl.Expr:
    """Whether the session ``offset`` rows away is in the same series (rows in series order)."""
    return pl.col("k") == pl.col("k").shift(offset)


def run_starts() -> pl.Expr:
    """Over the sessions where a rule holds, in series order: where a run of them starts (a new series, or a
    session after one where it does not hold)."""
    return (~same(1) | (i != i.shift(1) + 1)).fill_null(True)


def score_texts(scores: pl.Series) -> list[pl.Expr]:
    """Each score as JSON (``score_json``) and as reasons show it (``score_text``)."""
    return [texts(scores, json.dumps).alias("score_json"), texts(scores)]


def text(*parts: str | pl.Expr) -> pl.Expr:
    """Literal text and columns joined (``pl.format`` reads the braces of JSON as placeholders)."""
    return pl.concat_str([part if isinstance(part, pl.Expr) else pl.lit(part) for part in parts])


def _drops(frame: pl.DataFrame) -> pl.DataFrame:
    """Rule 2: opens where the score fell at least ``drop`` from the session before, and stays open while it is
    ``drop`` below that level. A candidate's close is the first later session back within ``drop`` of its level.
    A candidate inside an open episode has a lower level, so it closes no later than that episode: an episode
    opens exactly at each candidate at or past every earlier candidate's close."""
    before = frame.with_columns(
        pl.when(same(1))
        .then(pl.col("score", "score_json", "score_text").shift(1))
        .name.map(lambda c: c.replace("score", "level"))
    )
    candidates = before.filter((i > 0) & ((x - pl.col("level")) <= (-pl.col("drop") + EPS)))
    closes = (
        candidates.select("k", start=i, level=pl.col("level"), within=pl.col("drop") - EPS)
        .join(frame.select("k", j=i, later=x), on="k")
        .filter((pl.col("j") > start) & (pl.col("level") - pl.col("later") < pl.col("within")))
        .group_by("k", "start")
        .agg(stop=pl.col("j").min())
    )
    episodes = (
        candidates.rename({"i": "start"})
        .join(closes, on=["k", "start"], how="left")
        .with_columns(stop.fill_null(n))
        .sort("k", "start")
        .filter(start >= stop.cum_max().shift(1).over("k").fill_null(0))
    )
    ended = frame.select("k", stop=i, back=pl.format("; back to {} at session {}", "score_text", "number"))
    return episodes.join(ended, on=["k", "stop"], how="left").select(
        "k",
        rule=pl.lit("drop"),
        start=start,
        last=stop - 1,
        stop=stop,
        ongoing=stop == n,
        level=pl.col("level"),
        reason=pl.concat_str(
            pl.format("{} fell from {} to {} at session {}", "instrument", "level_text", "score_text", "number"),
            pl.col("back").fill_null(""),
        ),
        head=text('{"reference": ', pl.col("level_json"), ", "),
        tail=text(', "threshold": ', pl.col("drop_json"), "}"),
    )


def _low_items(frame: pl.DataFrame) -> pl.DataFrame:
    """Rule 3 on one instrument's sessions: runs of sessions with an item below the practice threshold; the reason
    names the low items of the run's last session."""
    names = instrument(frame["instrument"][0]).items
    low = pl.col("low_item") - EPS
    # the lowest of its first len(names) items (nulls aside) is below the threshold exactly when one of them is
    hold = (pl.col("items").list.head(len(names)).list.min() < low).fill_null(False)
    item = pl.col("items").list.get
    lows = [pl.when(item(j, null_on_oob=True) < low).then(pl.lit(name)) for j, name in enumerate(names)]
    return (
        frame.with_columns(pl.when(same(-1)).then(pl.col("number").shift(-1)).alias("next"))
        .filter(hold)
        .with_columns(run_starts().cum_sum().alias("run"))
        .group_by("k", "run", maintain_order=True)
        .agg(
            pl.col("n", "instrument", "low_item", "low_item_text", "low_item_json", "items", "number", "next").last(),
            start=i.first(),
            last=i.last(),
        )
        .with_columns(pl.concat_list(lows).list.drop_nulls().list.join(", ").alias("lows"))
        .select(
            "k",
            rule=pl.lit("low_item"),
            start=start,
            last=pl.col("last"),
            stop=pl.col("last") + 1,
            ongoing=pl.col("last") + 1 == n,
            level=pl.col("low_item"),
            reason=pl.concat_str(
                pl.format("{} item(s) {} below {} at session {}", "instrument", "lows", "low_item_text", "number"),
                pl.format("; session {} recovered", "next").fill_null(""),
            ),
            head=text('{"low_item": ', pl.col("low_item_json"), ", "),
            tail=pl.lit("}"),
        )
    )


def with_evidence(episodes: pl.DataFrame, frame: pl.DataFrame, magnitude: pl.Expr | None = None) -> pl.DataFrame:
    """Each episode's evidence: ``head``, the sessions from the one before it to its last (as the per-dyad rules'
    ``Series.points``), ``tail``; and its ``magnitude``, an aggregation over its sessions when given."""
    session = text(
        '{"date": "', pl.col("session_date").cast(pl.String), '", "score": ', pl.col("score_json"),
        ', "session": ', pl.col("number"), "}",
    )  # fmt: skip
    rows = (
        episodes.with_columns(i=pl.int_ranges(pl.max_horizontal(start - 1, 0), pl.col("last") + 1))
        .explode("i")
        .join(frame.select("k", "i", "score", "items", session.alias("session")), on=["k", "i"], maintain_order="left")
    )
    return (
        rows.group_by("k", "rule", "start", maintain_order=True)
        .agg(
            pl.col("last", "stop", "ongoing", "reason", "head", "tail").first(),
            (pl.col("magnitude").first() if magnitude is None else magnitude).alias("magnitude"),
            pl.col("session").str.join(", ").alias("sessions"),
        )
        .with_columns(evidence=text(pl.col("head"), '"sessions": [', pl.col("sessions"), "]", pl.col("tail")))
        .select(list(EPISODE_SCHEMA))
        .cast(EPISODE_SCHEMA)  # type: ignore[arg-type]
    )
