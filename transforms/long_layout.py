"""Long (tidy) exports made wide: one row per session, a column per item or total, as a wide export has them.

A long file has one row per item (``client, therapist, date, session, measure, item, score``) or per
instrument total (``…, measure, total``). Rows of one session (same client, therapist, date and session
number) become one row whose source line is the session's first line; the rest of the pipeline then reads
it exactly as it reads a wide file, so both layouts of one clinic give identical ratings.

Rows that cannot become part of a session are set aside with a rule and a reason (never a cell value):
a measure or item label the profile does not know, or an item given twice for one session.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from alliance.clinics import ExportProfile, LongLayout, normalise_column
from alliance.errors import ExportRejected
from alliance.instruments import Instrument, instrument
from alliance.vocabulary import column_key, item_of, split_instrument
from transforms.mapping import ASIDE_REASON, ASIDE_RULE, FOOTER_ROW, HIDDEN_ROW, SOURCE_LINE

FIELD = "__field"


@dataclass(frozen=True)
class Widened:
    """A long file made wide, and the column mapping (vendor name -> canonical field) that reads it."""

    frame: pl.DataFrame
    columns: dict[str, str]


def wide_column(long: LongLayout, field: str) -> str:
    """The name a widened rating column goes by in quarantine reasons, e.g. "Score (srs_goals)"."""
    return f"{long.score} ({field})"


def _vendor(raw: pl.DataFrame, name: str, file_name: str) -> str:
    found = [c for c in raw.columns if normalise_column(c) == normalise_column(name)]
    if not found:
        raise ExportRejected(file_name, f"the long layout's column {name!r} is missing; check [export.long]")
    return found[0]


def _instrument_of(label: str | None, profile: ExportProfile, long: LongLayout) -> Instrument | None:
    """The listed instrument a measure label names: the profile's measures first, then the usual names."""
    if long.measure is None:
        return instrument(profile.instruments[0])
    if label is None:
        return None
    given = {column_key(k): v.upper() for k, v in long.measures.items()}
    code = given.get(column_key(label))
    if code is None:
        named, rest = split_instrument(column_key(label))
        code = named if not rest else None
    return instrument(code) if code in profile.instruments else None


def _field_of(label: str | None, inst: Instrument, long: LongLayout) -> str | None:
    """The canonical field an item label names within one instrument ('Goals & Topics' -> srs_goals)."""
    if long.item is None:
        return inst.total_field
    if label is None:
        return None
    given = {column_key(k): v.lower() for k, v in long.items.items()}
    key = given.get(column_key(label))
    if key is not None:
        return inst.total_field if key == "total" else inst.item_field(key) if key in inst.items else None
    _named, rest = split_instrument(column_key(label))
    return item_of(rest, inst)


def rating_fields(profile: ExportProfile, present: set[str]) -> list[str]:
    """The rating columns a long file widens to: per instrument, the items the file gives anywhere, and the
    total; a session missing an item the others have then reads as an empty cell of a wide file."""
    return [
        f
        for inst in profile.instrument_specs
        for f in (*inst.item_fields, inst.total_field)
        if f in present or f == inst.total_field
    ]


def _labels(pairs: pl.DataFrame, profile: ExportProfile) -> pl.DataFrame:
    """Each distinct (measure, item) label pair of the file with its field, or why it has none."""
    long = profile.long
    assert long is not None
    fields: list[str | None] = []
    reasons: list[str | None] = []
    for label, item_label in pairs.iter_rows():
        inst = _instrument_of(label, profile, long)
        field = _field_of(item_label, inst, long) if inst else None
        fields.append(field)
        if inst is None:
            listed = ", ".join(profile.instruments)
            reasons.append(
                f"its measure label is empty or not one of the clinic's instruments ({listed}); "
                "name it under [export.long] measures"
            )
        elif field is None:
            reasons.append(f"its item label is empty or not an item of {inst.code}; name it under [export.long] items")
        else:
            reasons.append(None)
    return pairs.with_columns(
        pl.Series(FIELD, fields, dtype=pl.String), pl.Series(ASIDE_REASON, reasons, dtype=pl.String)
    )


def widen(raw: pl.DataFrame, profile: ExportProfile, file_name: str) -> Widened:
    """One row per session from a long raw frame (all strings, with source lines), and its column mapping.

    Example: rows ``C-1,t1,2026-01-05,1,SRS,Goals,9`` and ``…,SRS,Overall,8`` become one row with
    ``Score (srs_goals)`` 9 and ``Score (srs_overall)`` 8 on the first row's line.
    """
    long = profile.long
    assert long is not None
    keys = {_vendor(raw, vendor, file_name): field for vendor, field in profile.columns.items()}
    measure = _vendor(raw, long.measure, file_name) if long.measure else None
    item = _vendor(raw, long.item, file_name) if long.item else None
    score = _vendor(raw, long.score, file_name)
    footer = pl.col(FOOTER_ROW) if FOOTER_ROW in raw.columns else pl.lit(False)
    footers = raw.filter(footer).select(SOURCE_LINE, *keys, FOOTER_ROW) if FOOTER_ROW in raw.columns else None
    rows = raw.filter(~footer)
    labelled = rows.with_columns(
        (pl.col(measure).str.strip_chars() if measure else pl.lit(None, pl.String)).alias("measure"),
        (pl.col(item).str.strip_chars() if item else pl.lit(None, pl.String)).alias("item"),
        *(pl.col(vendor).str.strip_chars().alias(vendor) for vendor in keys),
    )
    pairs = labelled.select("measure", "item").unique()
    labelled = labelled.join(_labels(pairs, profile), on=["measure", "item"], how="left", nulls_equal=True)
    unknown = labelled.filter(pl.col(FIELD).is_null()).select(
        SOURCE_LINE, *keys, pl.lit("no_rating").alias(ASIDE_RULE), ASIDE_REASON
    )
    known = labelled.filter(pl.col(FIELD).is_not_null())
    fields = rating_fields(profile, set(known[FIELD].unique().to_list()))
    session = list(keys)
    twice = (
        known.group_by([*session, FIELD]).agg(pl.len() > 1).filter(pl.col("len")).select(session).unique()
        if not known.is_empty()
        else known.select(session).clear()
    )
    twice_rows = known.join(twice, on=session, how="semi", nulls_equal=True)
    doubled = twice_rows.select(
        SOURCE_LINE,
        *keys,
        pl.lit("duplicate_in_file:session_number").alias(ASIDE_RULE),
        pl.lit("an item or total of this session is given on more than one line: which to load is ambiguous").alias(
            ASIDE_REASON
        ),
    )
    single = known.join(twice, on=session, how="anti", nulls_equal=True)
    hidden = [pl.col(HIDDEN_ROW).any().alias(HIDDEN_ROW)] if HIDDEN_ROW in raw.columns else []
    wide = single.group_by(session, maintain_order=True).agg(
        pl.col(SOURCE_LINE).min(),
        *(pl.col(score).filter(pl.col(FIELD) == f).first().alias(wide_column(long, f)) for f in fields),
        *hidden,
    )
    parts = [wide, unknown, doubled, *([footers] if footers is not None else [])]
    frame = pl.concat(parts, how="diagonal_relaxed").sort(SOURCE_LINE)
    frame = frame.select(SOURCE_LINE, *[c for c in frame.columns if c != SOURCE_LINE])
    if FOOTER_ROW in frame.columns:
        frame = frame.with_columns(pl.col(FOOTER_ROW).fill_null(False))
    if HIDDEN_ROW in frame.columns:
        frame = frame.with_columns(pl.col(HIDDEN_ROW).fill_null(False))
    return Widened(frame, {**keys, **{wide_column(long, f): f for f in fields}})
