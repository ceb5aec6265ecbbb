"""Fresh findings merged into the flags in scope, as one join on ``flag_id``: update, never duplicate; reviews kept.

The flag-by-flag version it replaced is kept in tests/reference/flags.py as its oracle (test_reconcile_oracle.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import polars as pl

from transforms.flags import EPS, FINDING_SCHEMA, FLAG_SCHEMA
from transforms.rules import SEVERITIES

CHANGE_SCHEMA: dict[str, pl.DataType] = {"flag_id": pl.String(), "change": pl.String()}
OPEN = ("open", "acknowledged")


@dataclass(frozen=True)
class Reconciled:
    """The new state of every flag in scope, and what changed (new, worsened, reopened, auto_resolved)."""

    flags: pl.DataFrame
    changes: pl.DataFrame


def _rank(column: str) -> pl.Expr:
    return pl.col(column).replace_strict(list(SEVERITIES), list(range(len(SEVERITIES))), default=-1)


def _found(findings: pl.DataFrame, prior: pl.DataFrame, now: pl.Expr) -> pl.DataFrame:
    """Each finding as a flag, with the change it makes (or null), in the findings' order."""
    # a flag id found twice: the first takes over the flag, the second starts a new one
    first = pl.col("flag_id").is_first_distinct()
    joined = findings.with_columns(first.alias("_first")).join(
        prior.rename({name: f"_{name}" for name in prior.columns if name != "flag_id"}).with_columns(
            pl.lit(True).alias("_known")
        ),
        on="flag_id",
        how="left",
        maintain_order="left",
    )
    known = pl.col("_known").fill_null(False) & pl.col("_first")
    ongoing, was = pl.col("ongoing"), pl.col("_status")
    reopened = known & ongoing & (was == "auto_resolved")
    resolved = known & ~ongoing & was.is_in(OPEN)
    worse = (
        known
        & ongoing
        & (
            (_rank("severity") > _rank("_severity"))
            | (pl.col("magnitude") > pl.col("_magnitude").fill_null(0.0) + EPS)
            | (pl.col("_provisional") & ~pl.col("provisional"))
        ).fill_null(False)
    )
    new_status = (
        pl.when(~known)
        .then(pl.when(ongoing).then(pl.lit("open")).otherwise(pl.lit("auto_resolved")))
        .when(reopened)
        .then(pl.lit("open"))
        .when(resolved)
        .then(pl.lit("auto_resolved"))
        .otherwise(was)
    )
    unchanged = pl.all_horizontal(
        [pl.col(name).eq_missing(pl.col(f"_{name}")) for name in FINDING_SCHEMA if name != "flag_id"]
    )
    flags = joined.with_columns(
        status=new_status,
        first_flagged_at=pl.when(known).then(pl.col("_first_flagged_at")).otherwise(now),
        worsened_at=pl.when(reopened | worse).then(now).when(known).then(pl.col("_worsened_at")),
        resolved_at=(
            pl.when(~known)
            .then(pl.when(ongoing).then(None).otherwise(now))
            .when(reopened)
            .then(None)
            .when(resolved)
            .then(now)
            .otherwise(pl.col("_resolved_at"))
        ),
        resolution=(
            pl.when(~known)
            .then(pl.when(ongoing).then(None).otherwise(pl.col("outcome")))
            .when(reopened)
            .then(None)
            .when(resolved)
            .then(pl.col("outcome"))
            .otherwise(pl.col("_resolution"))
        ),
        risk_score=pl.when(known).then(pl.col("_risk_score")).otherwise(pl.lit(0.0)),
        change=(
            pl.when(~known)
            .then(pl.when(ongoing).then(pl.lit("new")))
            .when(reopened)
            .then(pl.lit("reopened"))
            .when(resolved)
            .then(pl.lit("auto_resolved"))
            .when(worse)
            .then(pl.lit("worsened"))
        ),
    ).with_columns(
        updated_at=pl.when(known & unchanged & (pl.col("status") == was)).then(pl.col("_updated_at")).otherwise(now)
    )
    return flags.select(*FLAG_SCHEMA, "change")


def _unfound(prior: pl.DataFrame, found: pl.Series, now: pl.Expr) -> pl.DataFrame:
    """The flags in scope no finding supports any more: closed if open, no longer ongoing; in their order."""
    left = prior.filter(~pl.col("flag_id").is_in(found.implode()))
    was_open = pl.col("status").is_in(OPEN)
    touched = was_open | pl.col("ongoing")
    return left.with_columns(
        ongoing=pl.when(touched).then(pl.lit(False)).otherwise(pl.col("ongoing")),
        updated_at=pl.when(touched).then(now).otherwise(pl.col("updated_at")),
        status=pl.when(was_open).then(pl.lit("auto_resolved")).otherwise(pl.col("status")),
        resolved_at=pl.when(was_open).then(now).otherwise(pl.col("resolved_at")),
        resolution=(
            pl.when(~was_open)
            .then(pl.col("resolution"))
            .when(pl.col("rule") == "stopped_appearing")
            .then(pl.lit("returned"))
            .otherwise(pl.lit("no longer supported"))
        ),
        change=pl.when(was_open).then(pl.lit("auto_resolved")),
    ).select(*FLAG_SCHEMA, "change")


def reconcile(findings: pl.DataFrame, existing: pl.DataFrame, now: datetime) -> Reconciled:
    """Merge fresh findings into the flags in scope (``existing``): a known flag keeps its review state, reopens
    when its rule holds again, closes when it no longer does, and is marked worse when it grew; the flags no
    finding supports any more are closed. Flags come out in the findings' order, then the rest in theirs."""
    findings = findings.select(pl.col(name).cast(kind) for name, kind in FINDING_SCHEMA.items())
    prior = existing.select(pl.col(name).cast(kind) for name, kind in FLAG_SCHEMA.items())
    if prior.height and prior["flag_id"].is_duplicated().any():
        # a flag id held twice: the last row counts, at the place of the first
        order = prior.with_row_index("_at").group_by("flag_id", maintain_order=True).agg(pl.col("_at").first())
        prior = order.join(prior.unique("flag_id", keep="last"), on="flag_id").sort("_at").drop("_at")
    stamp = pl.lit(now, dtype=FLAG_SCHEMA["updated_at"])
    merged = pl.concat([_found(findings, prior, stamp), _unfound(prior, findings["flag_id"], stamp)])
    changes = merged.filter(pl.col("change").is_not_null()).select(*CHANGE_SCHEMA)
    return Reconciled(merged.drop("change"), changes)
