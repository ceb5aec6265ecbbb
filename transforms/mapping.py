"""From a vendor's raw frame to canonical rating candidates, one frame per instrument."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date

import polars as pl

from alliance.clinics import KEY_FIELDS, ExportProfile, normalise_column
from alliance.errors import ExportRejected
from alliance.instruments import Instrument
from transforms.quarantine import FOOTER_REASON

SOURCE_LINE = "source_line"
HIDDEN_ROW = "__hidden_row"  # set by the XLSX reader (alliance.readers.xlsx) on rows hidden in the workbook
FOOTER_ROW = "__footer_row"  # set by the CSV and XLSX readers on summary and footer rows ('Total', 'Exported by …')
ASIDE_RULE = "__aside_rule"  # rows a layout transform set aside (transforms.long_layout): the rule they break
ASIDE_REASON = "__aside_reason"  # … and why, in words that never quote the row's values
MARKS = (HIDDEN_ROW, FOOTER_ROW, ASIDE_RULE, ASIDE_REASON)  # reader and layout marks kept through mapping
RAW = "__raw"
# Spreadsheet date cells arrive in ISO form; a date-time is reduced to its date (its wall-clock date when naive).
ISO_FORMATS = ("%Y-%m-%d", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M")
# ISO date-times with an offset or Z: the date they fall on in the clinic's timezone.
ISO_OFFSET_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M%#z")
# A number as people write it: no exponent, no nan/inf (which Polars would otherwise parse).
PLAIN_NUMBER = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)$"
EXPONENT_NUMBER = r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][+-]?[0-9]+$"
COMMA_NUMBER = r"^[+-]?[0-9]+,[0-9]+$"
NOT_FINITE = r"(?i)^[+-]?(?:nan|inf|infinity)$"
TOTAL_TOLERANCE = 0.5  # a total rounded to a whole number may differ from its items by this much
# No session took place before electronic feedback measures existed; earlier dates are typos or 2-digit years.
EARLIEST_SESSION = date(1990, 1, 1)
# Above 2^53 a float no longer holds every whole number: such a session number is out of range, not rounded.
MAX_EXACT_WHOLE = 2.0**53
# Format characters (zero-width spaces and joiners, BOM, soft hyphen, direction marks) and control characters
# other than tab and line breaks: invisible, so two ids differing only by them are the same id.
INVISIBLE = r"[\p{Cf}\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"
ASCII_CONTROLS = [chr(c) for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F)]
FAILURE = pl.Struct({"rule": pl.String, "detail": pl.String})


def resolve_columns(raw_columns: list[str], mapping: dict[str, str], file_name: str) -> dict[str, str]:
    """File column -> canonical field, matched by name ignoring case and spacing; missing columns reject the file."""
    named = [(normalise_column(c), c) for c in raw_columns if c != SOURCE_LINE]
    present = dict(named)
    twins_of = Counter(name for name, _ in named)
    resolved: dict[str, str] = {}
    missing: list[str] = []
    for vendor, field in mapping.items():
        found = present.get(normalise_column(vendor))
        twins = twins_of[normalise_column(vendor)]
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


def clean_text(value: pl.Expr, odd: bool = True) -> pl.Expr:
    """A cell as a person reads it: no invisible characters, plain spaces, composed (NFC), trimmed, '' as null.

    Every kind of space (no-break, thin, …) becomes a plain one. Done before pseudonymising, so 'C-101',
    'C-101\u200b' and '\ufeffC-101' are one client, and so are 'C 101' and 'C\u00a0101'. ``odd`` False
    (the column is plain printable ASCII) skips the removal and composition, which cost 10× the trim.
    """
    if odd:
        value = value.str.replace_all(INVISIBLE, "").str.replace_all(r"\p{Zs}", " ").str.normalize("NFC")
    return value.str.strip_chars().replace("", None)


def _odd(value: pl.Expr) -> pl.Expr:
    """True when any cell holds a non-ASCII or an ASCII control character (tab and line breaks aside)."""
    return (value.str.len_bytes() != value.str.len_chars()).any() | value.str.contains_any(ASCII_CONTROLS).any()


def to_canonical(raw: pl.DataFrame, resolved: dict[str, str]) -> pl.DataFrame:
    """Only the mapped columns, renamed to canonical fields, cleaned (``clean_text``); hidden and footer marks kept."""
    # by position: a vendor name such as '*' or '^.*$' would be a wildcard or a pattern to pl.col
    columns = {field: pl.nth(raw.get_column_index(vendor)) for vendor, field in resolved.items()}
    odd = raw.select(_odd(column).alias(field) for field, column in columns.items()).row(0, named=True)
    return raw.select(
        pl.col(SOURCE_LINE),
        *(clean_text(column, bool(odd[field])).alias(field) for field, column in columns.items()),
        *(pl.col(mark) for mark in MARKS if mark in raw.columns),
    )


def _number(field: str, decimal_comma: bool) -> pl.Expr:
    text = pl.col(field)
    if decimal_comma:
        text = text.str.replace(",", ".", literal=True)
    value = text.cast(pl.Float64, strict=False)
    return pl.when(text.str.contains(PLAIN_NUMBER) & value.is_finite()).then(value)


def _at_precision(value: pl.Expr, inst: Instrument) -> pl.Expr:
    """A value at the instrument's declared precision: 38.6, never the float sum 38.599999999999994."""
    return value.round(inst.decimals, mode="half_away_from_zero")


def _number_kind(raw: pl.Expr, decimal_comma: bool, whole: bool = False) -> pl.Expr:
    """What kind of text failed to parse as a number, for the reason (never the text itself); null if unknown."""
    noun = "a plain whole number" if whole else "a plain number"
    comma = (
        "is not a whole number: it has a comma"
        if whole
        else "is not a number (looks like a decimal comma: set decimal_comma = true in the clinic's export profile)"
    )
    plain = raw.str.contains(PLAIN_NUMBER)
    return (
        pl.when(raw.str.contains(COMMA_NUMBER) & (whole or not decimal_comma))
        .then(pl.lit(comma))
        .when(raw.str.contains(EXPONENT_NUMBER))
        .then(pl.lit(f"is a number in exponent notation, not {noun}"))
        .when(raw.str.contains(NOT_FINITE))
        .then(pl.lit("is not a number (nan or infinity)"))
        .when(plain & whole)
        .then(pl.lit("has a fractional part, not a whole number"))
        .when(plain)
        .then(pl.lit("is a number too large to store"))
        .when(raw.str.contains(r"\p{L}"))
        .then(pl.lit("is text, not a number" if not whole else "is text, not a whole number"))
        .otherwise(pl.lit(None, pl.String))
    )


def _shape(raw: pl.Expr) -> pl.Expr:
    """The form of a value without its content: '01/13/26' -> '99/99/99', 'Jan 5' -> 'AAA 9'."""
    return raw.str.replace_all(r"[0-9]", "9").str.replace_all(r"\p{L}", "A").str.slice(0, 24)


# Date formats vendors write, tried on a date that failed the profile's: the first that reads it is the hint.
LOOKALIKE_FORMATS = ("%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y", "%d-%m-%Y", "%Y/%m/%d", "%d.%m.%y", "%m/%d/%y", "%d/%m/%y")


def _bad_date(raw: pl.Expr, formats: list[str]) -> pl.Expr:
    """Why a date fits none of the formats, with its shape, and the format it looks like when one reads it."""
    lookalikes = [f for f in LOOKALIKE_FORMATS if f not in formats]
    looks = pl.coalesce(
        [pl.when(raw.str.to_date(f, strict=False) >= pl.lit(EARLIEST_SESSION)).then(pl.lit(f)) for f in lookalikes]
    )
    return pl.format(
        "is not a date in the clinic's date format {} nor ISO ({}written {})",
        pl.lit(" or ".join(formats)),
        pl.when(looks.is_not_null()).then(pl.format("looks like {}; ", looks)).otherwise(pl.lit("")),
        _shape(raw),
    )


def _date_formats(formats: list[str]) -> list[str]:
    """Every format a session date is read with, in order: the profile's, ISO, then ISO with an offset."""
    return [*dict.fromkeys([*formats, *ISO_FORMATS]), *ISO_OFFSET_FORMATS]


def _dates(field: str, formats: list[str], timezone: str | None = None) -> list[pl.Expr]:
    """The value parsed by each accepted format in turn (the profile's, then ISO), null where one does not fit."""
    tried = list(dict.fromkeys([*formats, *ISO_FORMATS]))
    wall = [pl.col(field).str.to_date(fmt, strict=False) for fmt in tried]
    offset = [
        pl.col(field)
        .str.to_datetime(fmt, strict=False, time_unit="us", time_zone="UTC")
        .dt.convert_time_zone(timezone or "UTC")
        .dt.date()
        for fmt in ISO_OFFSET_FORMATS
    ]
    return [*wall, *offset]


def _session_date(parses: list[pl.Expr]) -> pl.Expr:
    """The first parse on or after EARLIEST_SESSION: '%Y' reads '26' as year 26, a later '%y' as 2026."""
    return pl.coalesce([pl.when(parsed >= pl.lit(EARLIEST_SESSION)).then(parsed) for parsed in parses])


def _implausible_date(raw: pl.Expr, parses: list[pl.Expr], formats: list[str]) -> pl.Expr:
    """Why a date that parsed is not a session date, with its shape: 'written 99/99/99: a 2-digit year?'."""
    parsed = pl.coalesce(parses)
    year = parsed.dt.year()
    # the format that read the year as 26, with %y in place of %Y: what the profile could add
    two_digit = pl.coalesce(
        [pl.when(p.is_not_null()).then(pl.lit(f.replace("%Y", "%y"))) for p, f in zip(parses, formats, strict=True)]
    )
    hint = (
        pl.when(year <= 0)
        .then(pl.lit("year 0 or earlier"))
        .when(year < 100)
        .then(pl.format("a 2-digit year? add '{}' to the clinic's date_format", two_digit))
        .otherwise(pl.lit("a typo in the year?"))
    )
    return pl.format(
        "is before {}, not a plausible session date (written {}: {})",
        pl.lit(str(EARLIEST_SESSION.year)),
        _shape(raw),
        hint,
    )


@dataclass(frozen=True)
class _Failure:
    """A parse check: the rule broken where ``condition`` holds, and what to say (None: the rule's own text)."""

    condition: pl.Expr
    rule: str
    detail: pl.Expr | None = None

    def rule_where(self) -> pl.Expr:
        return pl.when(self.condition).then(pl.lit(self.rule))

    def failure_where(self) -> pl.Expr:
        detail = self.detail if self.detail is not None else pl.lit(None, pl.String)
        return pl.when(self.condition).then(pl.struct(pl.lit(self.rule).alias("rule"), detail.alias("detail")))


def _item_total(inst: Instrument, items: list[pl.Expr]) -> pl.Expr:
    scored = [
        (inst.item_max + inst.item_min - expr) if item in inst.reverse else expr
        for item, expr in zip(inst.items, items, strict=True)
    ]
    summed = scored[0]
    for expr in scored[1:]:
        summed = summed + expr  # plain addition keeps a missing item missing
    return _at_precision(summed if inst.score == "sum" else summed / len(scored), inst)


def rating_candidates(
    canonical: pl.DataFrame,
    profile: ExportProfile,
    inst: Instrument,
    today: date,
    timezone: str | None = None,
    carry: str | None = None,
) -> pl.DataFrame:
    """Rows of one instrument with any value present, typed, with raw copies and parse errors listed.

    ``timezone`` (the clinic's) gives the date of a session date-time written with an offset. ``carry`` names a
    column of ``canonical`` kept as it is (which file of several mapped together a row came from): every
    column is worked out row by row, so rows mapped together equal rows mapped alone.

    Columns: source_line, instrument, client_ref, therapist_id, session_date, session_number, each
    item field and total as numbers on the instrument's scale at its precision, ``<field>__raw`` for every
    value that can fail to parse, days_ahead, total_gap, parse_errors (list of rule ids) and parse_failures
    (list of {rule, detail}: detail says what kind of value failed, or is null for the rule's generic text).
    """
    fields = [f for f in (*inst.item_fields, inst.total_field) if f in canonical.columns]
    if not fields:
        return pl.DataFrame()
    scale = inst.item_max / profile.file_item_max(inst)
    present = canonical.filter(pl.any_horizontal(pl.col(fields).is_not_null()))
    item_exprs = [
        (
            _at_precision(_number(f, profile.decimal_comma) * scale, inst)
            if f in canonical.columns
            else pl.lit(None, pl.Float64)
        ).alias(f)
        for f in inst.item_fields
    ]
    file_total = (
        _at_precision(_number(inst.total_field, profile.decimal_comma) * scale, inst)
        if inst.total_field in canonical.columns
        else pl.lit(None, pl.Float64)
    )
    # each format's reading once, as columns: the plausible choice and the any-format fallback both read them
    readings = [f"__date_{i}" for i in range(len(_dates("session_date", profile.date_formats, timezone)))]
    present = present.with_columns(
        reading.alias(name)
        for reading, name in zip(_dates("session_date", profile.date_formats, timezone), readings, strict=True)
    )
    parses = [pl.col(name) for name in readings]
    hidden = HIDDEN_ROW in canonical.columns and profile.hidden_rows == "quarantine"
    typed = present.select(
        pl.col(SOURCE_LINE),
        pl.lit(inst.code).alias("instrument"),
        pl.col("client_ref"),
        pl.col("therapist_id"),
        pl.col("session_date").alias(f"session_date{RAW}"),
        pl.col("session_number").alias(f"session_number{RAW}"),
        _session_date(parses).alias("session_date"),
        pl.coalesce(parses).alias("session_date_any"),
        *parses,  # kept until the failing rows' reasons are worked out
        _number("session_number", False).alias("session_number_value"),
        *item_exprs,
        *(pl.col(f).alias(f"{f}{RAW}") for f in inst.item_fields if f in canonical.columns),
        file_total.alias("file_total"),
        (pl.col(inst.total_field) if inst.total_field in canonical.columns else pl.lit(None, pl.String)).alias(
            f"total{RAW}"
        ),
        (pl.col(HIDDEN_ROW) if hidden else pl.lit(False)).alias(HIDDEN_ROW),
        *([pl.col(carry)] if carry else []),
    )
    from_items = _item_total(inst, [pl.col(f) for f in inst.item_fields])
    number = pl.col("session_number_value")
    whole = number % 1 == 0
    storable = whole & (number.abs() <= MAX_EXACT_WHOLE)
    # digits only, but more than a float can hold (e.g. 400 of them): too large, not 'not a whole number'
    huge = pl.col(f"session_number{RAW}").str.contains(r"^[+-]?[0-9]+(?:\.0*)?$") & number.is_null()
    too_large = (whole & ~storable) | huge
    failures = [
        _Failure(
            pl.col(f"{f}{RAW}").is_not_null() & pl.col(f).is_null(),
            f"not_a_number:{f}",
            _number_kind(pl.col(f"{f}{RAW}"), profile.decimal_comma),
        )
        for f in inst.item_fields
        if f in canonical.columns
    ]
    failures += [
        _Failure(
            pl.col(f"total{RAW}").is_not_null() & pl.col("file_total").is_null(),
            "not_a_number:total",
            _number_kind(pl.col(f"total{RAW}"), profile.decimal_comma),
        ),
        _Failure(
            pl.col(f"session_date{RAW}").is_not_null() & pl.col("session_date_any").is_null(),
            "bad_date:session_date",
            _bad_date(pl.col(f"session_date{RAW}"), profile.date_formats),
        ),
        _Failure(
            pl.col("session_date_any").is_not_null() & pl.col("session_date").is_null(),
            "implausible_date:session_date",
            _implausible_date(pl.col(f"session_date{RAW}"), parses, _date_formats(profile.date_formats)),
        ),
        _Failure(
            pl.col(f"session_number{RAW}").is_not_null() & (number.is_null() | ~whole) & ~too_large.fill_null(False),
            "not_an_integer:session_number",
            _number_kind(pl.col(f"session_number{RAW}"), False, whole=True),
        ),
        _Failure(
            too_large,
            "out_of_range:session_number",
            pl.format(
                "is a whole number too large to store ({} digits)",
                pl.col(f"session_number{RAW}").str.count_matches(r"[0-9]"),
            ),
        ),
        _Failure(pl.col(HIDDEN_ROW), "hidden_row"),
    ]
    typed = typed.with_columns(
        pl.coalesce(from_items, pl.col("file_total")).alias("total"),
        (pl.col("file_total") - from_items).abs().alias("total_gap"),
        pl.when(storable).then(number).cast(pl.Int64).alias("session_number"),
        (pl.col("session_date") - pl.lit(today)).dt.total_days().alias("days_ahead"),
    )
    return _with_failures(typed, failures).drop(
        "session_number_value", "file_total", "session_date_any", HIDDEN_ROW, *readings
    )


def _with_failures(typed: pl.DataFrame, failures: list[_Failure]) -> pl.DataFrame:
    """parse_errors (the rules broken, in order) and parse_failures ({rule, detail} per broken rule), worked out
    only on rows that broke one: most rows break none, and building lists for every row costs."""
    failing = typed.select(pl.any_horizontal(failure.condition.fill_null(False) for failure in failures)).to_series()
    none = [pl.lit([], pl.List(pl.String)).alias("parse_errors"), pl.lit([], pl.List(FAILURE)).alias("parse_failures")]
    if not failing.any():
        return typed.with_columns(none)
    indexed = typed.with_row_index("__row")
    found = indexed.filter(failing).select(
        "__row",
        pl.concat_list(failure.rule_where() for failure in failures).list.drop_nulls().alias("parse_errors"),
        pl.concat_list(failure.failure_where() for failure in failures)
        .list.drop_nulls()
        .cast(pl.List(FAILURE))
        .alias("parse_failures"),
    )
    return (
        indexed.join(found, on="__row", how="left", maintain_order="left")
        .with_columns(pl.col(column.meta.output_name()).fill_null(column) for column in none)
        .drop("__row")
    )


def footer_split(canonical: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(session rows, rows set aside) of a canonical frame: footer rows and rows a layout set aside never become
    ratings; the second frame has their line, key fields, ``rule`` and ``reason``."""
    keys = [SOURCE_LINE, *[f for f in KEY_FIELDS if f in canonical.columns]]
    if FOOTER_ROW not in canonical.columns and ASIDE_RULE not in canonical.columns:
        none = {"rule": pl.String, "reason": pl.String}
        return canonical, canonical.clear().select(keys).with_columns(pl.lit(None, t).alias(c) for c, t in none.items())
    marked = canonical.with_columns(
        *([] if FOOTER_ROW in canonical.columns else [pl.lit(False).alias(FOOTER_ROW)]),
        *(
            []
            if ASIDE_RULE in canonical.columns
            else [pl.lit(None, pl.String).alias(c) for c in (ASIDE_RULE, ASIDE_REASON)]
        ),
    )
    aside = pl.col(FOOTER_ROW) | pl.col(ASIDE_RULE).is_not_null()
    rows = marked.filter(~aside).drop(FOOTER_ROW, ASIDE_RULE, ASIDE_REASON)
    set_aside = marked.filter(aside).select(
        *keys,
        pl.when(pl.col(FOOTER_ROW)).then(pl.lit("no_rating")).otherwise(pl.col(ASIDE_RULE)).alias("rule"),
        pl.when(pl.col(FOOTER_ROW)).then(pl.lit(FOOTER_REASON)).otherwise(pl.col(ASIDE_REASON)).alias("reason"),
    )
    return rows, set_aside


def unrated_rows(canonical: pl.DataFrame, profile: ExportProfile) -> pl.DataFrame:
    """Source lines carrying no value of any of the profile's instruments."""
    fields = [
        f for inst in profile.instrument_specs for f in (*inst.item_fields, inst.total_field) if f in canonical.columns
    ]
    return canonical.filter(~pl.any_horizontal(pl.col(fields).is_not_null())).select(
        SOURCE_LINE, *[f for f in KEY_FIELDS if f in canonical.columns]
    )
