"""From a vendor's raw frame to canonical rating candidates, one frame per instrument."""

from __future__ import annotations

from datetime import date

import polars as pl

from alliance.clinics import KEY_FIELDS, ExportProfile, normalise_column
from alliance.errors import ExportRejected
from alliance.instruments import Instrument

SOURCE_LINE = "source_line"
RAW = "__raw"
# Spreadsheet date cells arrive in ISO form; a date-time is reduced to its date (its wall-clock date when naive).
ISO_FORMATS = ("%Y-%m-%d", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M")
# ISO date-times with an offset or Z: the date they fall on in the clinic's timezone.
ISO_OFFSET_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M%#z")
# A number as people write it: no exponent, no nan/inf (which Polars would otherwise parse).
PLAIN_NUMBER = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$"
TOTAL_TOLERANCE = 0.5  # a total rounded to a whole number may differ from its items by this much


def resolve_columns(raw_columns: list[str], mapping: dict[str, str], file_name: str) -> dict[str, str]:
    """File column -> canonical field, matched by name ignoring case and spacing; missing columns reject the file."""
    present = {normalise_column(c): c for c in raw_columns if c != SOURCE_LINE}
    resolved: dict[str, str] = {}
    missing: list[str] = []
    for vendor, field in mapping.items():
        found = present.get(normalise_column(vendor))
        twins = sum(normalise_column(c) == normalise_column(vendor) for c in raw_columns if c != SOURCE_LINE)
        if twins > 1:
            raise ExportRejected(
                file_name,
                f"the header has {twins} columns named {vendor!r} (ignoring case and spacing), mapped to {field}: "
                "the mapping is ambiguous; remove or rename the duplicate",
            )
        if found is None:
            missing.append(f"{vendor!r} (-> {field})")
        else:
            resolved[found] = field
    if missing:
        # Found headers are not echoed: in a file without a header row they would be client data.
        raise ExportRejected(
            file_name,
            f"missing required column(s) {', '.join(missing)} among the file's {len(present)} columns; "
            "check the header row and the clinic's [export.columns]",
        )
    return resolved


def to_canonical(raw: pl.DataFrame, resolved: dict[str, str]) -> pl.DataFrame:
    """Only the mapped columns, renamed to canonical fields, trimmed, empty strings as null."""
    return raw.select(
        pl.col(SOURCE_LINE),
        *(  # by position: a vendor name such as '*' or '^.*$' would be a wildcard or a pattern to pl.col
            pl.nth(raw.get_column_index(vendor)).str.strip_chars().replace("", None).alias(field)
            for vendor, field in resolved.items()
        ),
    )


def _number(field: str, decimal_comma: bool) -> pl.Expr:
    text = pl.col(field)
    if decimal_comma:
        text = text.str.replace(",", ".", literal=True)
    value = text.cast(pl.Float64, strict=False)
    return pl.when(text.str.contains(PLAIN_NUMBER) & value.is_finite()).then(value)


def _date(field: str, formats: list[str], timezone: str | None = None) -> pl.Expr:
    tried = list(dict.fromkeys([*formats, *ISO_FORMATS]))
    wall = [pl.col(field).str.to_date(fmt, strict=False) for fmt in tried]
    offset = [
        pl.col(field)
        .str.to_datetime(fmt, strict=False, time_unit="us", time_zone="UTC")
        .dt.convert_time_zone(timezone or "UTC")
        .dt.date()
        for fmt in ISO_OFFSET_FORMATS
    ]
    return pl.coalesce([*wall, *offset])


def _item_total(inst: Instrument, items: list[pl.Expr]) -> pl.Expr:
    scored = [
        (inst.item_max + inst.item_min - expr) if item in inst.reverse else expr
        for item, expr in zip(inst.items, items, strict=True)
    ]
    summed = scored[0]
    for expr in scored[1:]:
        summed = summed + expr  # plain addition keeps a missing item missing
    return summed if inst.score == "sum" else summed / len(scored)


def rating_candidates(
    canonical: pl.DataFrame, profile: ExportProfile, inst: Instrument, today: date, timezone: str | None = None
) -> pl.DataFrame:
    """Rows of one instrument with any value present, typed, with raw copies and parse errors listed.

    ``timezone`` (the clinic's) gives the date of a session date-time written with an offset.

    Columns: source_line, instrument, client_ref, therapist_id, session_date, session_number, each
    item field and total as numbers on the instrument's scale, ``<field>__raw`` for every value that
    can fail to parse, days_ahead, total_gap and parse_errors (list of rule ids).
    """
    fields = [f for f in (*inst.item_fields, inst.total_field) if f in canonical.columns]
    if not fields:
        return pl.DataFrame()
    scale = inst.item_max / profile.file_item_max(inst)
    present = canonical.filter(pl.any_horizontal(pl.col(fields).is_not_null()))
    item_exprs = [
        (_number(f, profile.decimal_comma) * scale if f in canonical.columns else pl.lit(None, pl.Float64)).alias(f)
        for f in inst.item_fields
    ]
    file_total = (
        _number(inst.total_field, profile.decimal_comma) * scale
        if inst.total_field in canonical.columns
        else pl.lit(None, pl.Float64)
    )
    typed = present.select(
        pl.col(SOURCE_LINE),
        pl.lit(inst.code).alias("instrument"),
        pl.col("client_ref"),
        pl.col("therapist_id"),
        pl.col("session_date").alias(f"session_date{RAW}"),
        pl.col("session_number").alias(f"session_number{RAW}"),
        _date("session_date", profile.date_formats, timezone).alias("session_date"),
        _number("session_number", False).alias("session_number_value"),
        *item_exprs,
        *(pl.col(f).alias(f"{f}{RAW}") for f in inst.item_fields if f in canonical.columns),
        file_total.alias("file_total"),
        (pl.col(inst.total_field) if inst.total_field in canonical.columns else pl.lit(None, pl.String)).alias(
            f"total{RAW}"
        ),
    )
    from_items = _item_total(inst, [pl.col(f) for f in inst.item_fields])
    errors = [
        pl.when(pl.col(f"{f}{RAW}").is_not_null() & pl.col(f).is_null()).then(pl.lit(f"not_a_number:{f}"))
        for f in inst.item_fields
        if f in canonical.columns
    ]
    errors += [
        pl.when(pl.col(f"total{RAW}").is_not_null() & pl.col("file_total").is_null()).then(
            pl.lit("not_a_number:total")
        ),
        pl.when(pl.col(f"session_date{RAW}").is_not_null() & pl.col("session_date").is_null()).then(
            pl.lit("bad_date:session_date")
        ),
        pl.when(
            pl.col(f"session_number{RAW}").is_not_null()
            & (pl.col("session_number_value").is_null() | (pl.col("session_number_value") % 1 != 0))
        ).then(pl.lit("not_an_integer:session_number")),
    ]
    return typed.with_columns(
        pl.coalesce(from_items, pl.col("file_total")).alias("total"),
        (pl.col("file_total") - from_items).abs().alias("total_gap"),
        pl.when(pl.col("session_number_value") % 1 == 0)
        .then(pl.col("session_number_value"))
        .cast(pl.Int64)
        .alias("session_number"),
        (pl.col("session_date") - pl.lit(today)).dt.total_days().alias("days_ahead"),
        pl.concat_list(errors).list.drop_nulls().alias("parse_errors"),
    ).drop("session_number_value", "file_total")


def unrated_rows(canonical: pl.DataFrame, profile: ExportProfile) -> pl.DataFrame:
    """Source lines carrying no value of any of the profile's instruments."""
    fields = [
        f for inst in profile.instrument_specs for f in (*inst.item_fields, inst.total_field) if f in canonical.columns
    ]
    return canonical.filter(~pl.any_horizontal(pl.col(fields).is_not_null())).select(
        SOURCE_LINE, *[f for f in KEY_FIELDS if f in canonical.columns]
    )
