"""Split validated rating candidates into accepted ratings and quarantine rows with readable reasons."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from alliance.instruments import Instrument
from expectations.suites import MAX_SESSION_NUMBER

RULE_TEXT = {
    "missing": "is empty",
    "missing:total": "is empty, and not every item is there to compute it",
    "not_a_number": "is not a number",
    "not_an_integer": "is not a whole number",
    "bad_date": "is not a date in the clinic's date format",
    "implausible_date": "is not a plausible session date",
    "out_of_range": "is outside the allowed range",
    "total_mismatch": "disagrees with the sum of the items",
    "date_in_future": "is in the future",
    "duplicate_in_file": "repeats the same client, therapist, date and session number as another row",
    "no_rating": "carries no value of any instrument in the profile",
    "foreign_therapist": "is a therapist id of another clinic",
    "file_quarantined": "row passed, but the whole file was quarantined",
    "hidden_row": "the row is hidden in the workbook; unhide it and export again to load it, "
    'or set hidden_rows = "load" in the clinic\'s export profile',
}

# The reason of a summary or footer row, quarantined as no_rating (its label is not repeated: it is a cell).
FOOTER_REASON = (
    "a summary or footer row (its first filled cell is a label such as Total, Average or Exported by), "
    'not a session; set footer_rows = "skip" in the clinic\'s export profile to skip such rows'
)

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "export_id": pl.String(),
    "clinic_id": pl.String(),
    "source_line": pl.Int64(),
    "instrument": pl.String(),
    "rules": pl.List(pl.String()),
    "reasons": pl.List(pl.String()),
    "values": pl.String(),
}


@dataclass(frozen=True)
class Screened:
    """Accepted candidates and quarantine rows of one export, one instrument."""

    accepted: pl.DataFrame
    quarantined: pl.DataFrame


def reason(
    rule: str, line: int | None, vendor_of: dict[str, str], inst: Instrument | None, detail: str | None = None
) -> str:
    """One line a person can act on: 'line 12, column 'SRS Goals' (srs_goals): is outside the allowed range 0–10'.

    ``detail`` replaces the rule's generic text when a check knows more (e.g. which clinic an id belongs to).
    """
    kind, _, field = rule.partition(":")
    text = detail or RULE_TEXT.get(rule) or RULE_TEXT.get(kind, kind)
    where = f"line {line}" if line is not None else "file"
    bounds = (
        (1, MAX_SESSION_NUMBER)
        if field == "session_number"
        else (inst.item_min, inst.item_max)
        if inst is not None and field in inst.item_fields
        else (inst.total_min, inst.total_max)
        if inst is not None and field == "total"
        else None
    )
    if kind == "out_of_range" and bounds is not None:
        allowed = f"outside the allowed range {bounds[0]:g}–{bounds[1]:g}"
        text = f"{detail}, {allowed}" if detail else f"is {allowed}"
    if not field:
        return f"{where}: {text}"
    column = vendor_of.get(inst.total_field if (field == "total" and inst) else field)
    label = f"column {column!r} ({field})" if column else field
    return f"{where}, {label}: {text}"


def screen(
    candidates: pl.DataFrame,
    failures: pl.DataFrame,
    inst: Instrument,
    vendor_of: dict[str, str],
    export_id: str,
    clinic_id: str,
) -> Screened:
    """Rows with no failure are accepted; the others become quarantine rows listing every broken rule.

    A total that is there but is not a number is reported as such, not also as empty (``missing:total``).
    """
    split = split_failing(candidates, failures)
    if split is None:  # every row passed (most files): nothing to join or explain
        return Screened(candidates, pl.DataFrame(schema=QUARANTINE_SCHEMA))
    accepted, rejected, details = split
    return Screened(accepted, quarantine_rows(rejected, inst, vendor_of, export_id, clinic_id, details))


def split_failing(
    candidates: pl.DataFrame, failures: pl.DataFrame, by: str | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, dict[tuple[Any, ...], str] | None] | None:
    """``screen``'s split: (accepted rows, rejected rows with their ``rules``, each failure's own text by
    (row_id, rule)); None when no row failed. With ``by``, rows of several exports are told apart by that
    column as well as by row id (and the texts keyed (export, row_id, rule))."""
    keys = [by, "row_id"] if by else ["row_id"]
    parse = (
        candidates.select(*keys, pl.col("parse_failures").alias("failure"))
        .explode("failure")
        .drop_nulls()
        .unnest("failure")
        if "parse_failures" in candidates.columns
        else candidates.select(*keys, pl.col("parse_errors").alias("rule")).explode("rule").drop_nulls()
    )
    if parse.is_empty() and failures.is_empty():
        return None
    found = pl.concat([parse, failures], how="diagonal_relaxed")
    broken = (
        found.select(*keys, "rule")
        .unique(maintain_order=True)
        .group_by(keys, maintain_order=True)
        .agg(pl.col("rule").alias("rules"))
        .with_columns(
            pl.col("rules").list.eval(
                pl.element().filter(~((pl.element() == "missing:total") & (pl.element() == "not_a_number:total").any()))
            )
        )
    )
    marked = candidates.join(broken, on=keys, how="left", maintain_order="left")
    accepted = marked.filter(pl.col("rules").is_null()).drop("rules")
    rejected = marked.filter(pl.col("rules").is_not_null())
    details = (
        {tuple(row[:-1]): row[-1] for row in found.select(*keys, "rule", "detail").drop_nulls().iter_rows()}
        if "detail" in found.columns
        else None
    )
    return accepted, rejected, details


def quarantine_rows(
    rejected: pl.DataFrame,
    inst: Instrument | None,
    vendor_of: dict[str, str],
    export_id: str,
    clinic_id: str,
    details: dict[tuple[Any, ...], str] | None = None,
) -> pl.DataFrame:
    """Quarantine table rows: line, rules, reasons and the mapped values (client pseudonym, never the reference)."""
    if rejected.is_empty():
        return pl.DataFrame(schema=QUARANTINE_SCHEMA)
    value_columns = [c for c in rejected.columns if c.endswith("__raw") or c in ("client_id", "therapist_id")]
    row_ids = rejected["row_id"].to_list() if details and "row_id" in rejected.columns else [None] * rejected.height
    reasons = [
        [reason(rule, line, vendor_of, inst, (details or {}).get((row_id, rule))) for rule in rules]
        for line, rules, row_id in zip(
            rejected["source_line"].to_list(), rejected["rules"].to_list(), row_ids, strict=True
        )
    ]
    return rejected.select(
        pl.lit(export_id).alias("export_id"),
        pl.lit(clinic_id).alias("clinic_id"),
        pl.col("source_line"),
        pl.lit(inst.code if inst else None, pl.String).alias("instrument"),
        pl.col("rules"),
        pl.Series("reasons", reasons, dtype=pl.List(pl.String)),
        pl.struct([pl.col(c).alias(c.removesuffix("__raw")) for c in value_columns])
        .struct.json_encode()
        .alias("values"),
    )


def foreign_therapists(candidates: pl.DataFrame, known: pl.DataFrame, clinic_id: str) -> pl.DataFrame:
    """Failures (row_id, rule, detail) for rows whose therapist id is known only for other clinics.

    ``known`` holds (clinic_id, therapist_id) pairs already in the warehouse. A therapist id with ratings at
    another clinic and never at this one is refused as ``foreign_therapist:therapist_id``: a file dropped in
    the wrong inbox, or a vendor reusing ids, must not attach another clinic's therapist to this clinic.
    """
    schema = {"row_id": pl.Int64, "rule": pl.String, "detail": pl.String}
    if candidates.is_empty() or known.is_empty():
        return pl.DataFrame(schema=schema)
    own = known.filter(pl.col("clinic_id") == clinic_id)["therapist_id"]
    if candidates["therapist_id"].is_in(own.implode()).all():  # most files: every therapist known here already
        return pl.DataFrame(schema=schema)
    owners = (
        known.filter((pl.col("clinic_id") != clinic_id) & ~pl.col("therapist_id").is_in(own.implode()))
        .group_by("therapist_id")
        .agg(pl.col("clinic_id").unique().sort().alias("owners"))
    )
    return (
        candidates.select("row_id", "therapist_id")
        .join(owners, on="therapist_id", how="inner")
        .sort("row_id")
        .select(
            pl.col("row_id").cast(pl.Int64),
            pl.lit("foreign_therapist:therapist_id").alias("rule"),
            pl.format(
                "is a therapist id of clinic {}, never seen at this clinic",
                pl.col("owners").list.eval(pl.format("'{}'", pl.element())).list.join(", "),
            ).alias("detail"),
        )
    )


class KnownTherapists:
    """The clinics each therapist id has ratings at, to tell without a join whether a file names a therapist
    ``foreign_therapists`` would refuse: one with ratings at other clinics and none at this one."""

    def __init__(self, pairs: pl.DataFrame | None = None) -> None:
        self._clinics: dict[str, set[str]] = {}
        if pairs is not None:
            self.add(pairs)

    def add(self, pairs: pl.DataFrame) -> None:
        """Take in (clinic_id, therapist_id) pairs; a missing id belongs to no clinic (it joins nothing)."""
        for clinic_id, therapist_id in pairs.select("clinic_id", "therapist_id").unique().iter_rows():
            if therapist_id is not None:
                self._clinics.setdefault(therapist_id, set()).add(clinic_id)

    def any_foreign(self, clinic_id: str, candidates: pl.DataFrame) -> bool:
        """Whether ``foreign_therapists(candidates, pairs, clinic_id)`` finds a row."""
        clinics = self._clinics
        return any(t in clinics and clinic_id not in clinics[t] for t in candidates["therapist_id"].unique().to_list())


def accepted_ratings(
    accepted: pl.DataFrame,
    inst: Instrument,
    export_id: str | pl.Expr,
    clinic_id: str | pl.Expr,
    carry: str | None = None,
) -> pl.DataFrame:
    """Rows for the ratings table: the natural key, the items in registry order, the total (ids given as
    values, or as expressions over rows of several exports, whose ``carry`` column is kept first)."""
    return accepted.select(
        *([pl.col(carry)] if carry else []),
        (pl.lit(clinic_id) if isinstance(clinic_id, str) else clinic_id).alias("clinic_id"),
        pl.col("client_id"),
        pl.col("therapist_id"),
        pl.lit(inst.code).alias("instrument"),
        pl.col("session_date"),
        pl.col("session_number").cast(pl.Int32),
        pl.when(pl.any_horizontal(pl.col(inst.item_fields).is_not_null()))
        .then(pl.concat_list(inst.item_fields))
        .alias("items"),
        pl.col("total"),
        (pl.lit(export_id) if isinstance(export_id, str) else export_id).alias("export_id"),
        pl.col("source_line").cast(pl.Int32),
    )
