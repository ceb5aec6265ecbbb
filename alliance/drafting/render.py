"""A draft as a commented [clinics.<id>] table for clinics.toml: every choice says how sure it is."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from alliance.drafting.columns import Mapping
from alliance.drafting.dates import DateGuess
from alliance.drafting.long import LongRoles
from alliance.drafting.sniff import Sniffed

# date-times as spreadsheets store them are read by their ISO date (transforms.mapping.ISO_FORMATS)
ISO_READS = {"%Y-%m-%d %H:%M:%S": "%Y-%m-%d"}


@dataclass(frozen=True)
class Draft:
    """What was found in one file, ready to render."""

    clinic_id: str
    sniffed: Sniffed
    mapping: Mapping
    dates: DateGuess
    long: LongRoles | None = None


def _s(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text, ensure_ascii=False)


def _date_lines(guess: DateGuess) -> list[str]:
    if guess.format:
        fmt = ISO_READS.get(guess.format, guess.format)
        return [f"# sure: {guess.share:.0%} of the dates read as {fmt}", f"date_format = {_s(fmt)}"]
    if guess.ambiguous:
        first, second = guess.ambiguous
        return [
            "# NOT SURE: every date fits both day/month orders (no day above 12 in the file); refusing to guess.",
            "# Check one date you know (e.g. a session on the 3rd of a month) in the vendor's export, then keep one:",
            f"# date_format = {_s(first)}",
            f"# date_format = {_s(second)}",
        ]
    return ["# NOT SURE: no date format read the session dates; set date_format (strftime) by hand"]


# A sheet name ending in a date or a number ('Sessions 2026-03'): likely a new name in every export.
DATED_NAME = re.compile(r"^(?P<stem>.*?[^\W\d_][^\d]*?)[\s_-]*(?:\d{4}|\d{1,2}[._/-]\d)[\d\s._/-]*$")


def _sheet_lines(sniffed: Sniffed) -> list[str]:
    sheet = sniffed.sheet or ""
    others = [name for name in sniffed.sheets if name != sheet]
    why = "the sheet whose header names the key columns" + (
        f" (the workbook also has {', '.join(map(_s, others))})" if others else ""
    )
    dated = DATED_NAME.match(sheet)
    if dated is None:
        return [f"# sure: {why}", f"sheet = {_s(sheet)}"]
    pattern = f"{dated.group('stem').rstrip()}*"
    return [
        f"# likely: {why}; its name ends in a date or number, so each export may name it anew:",
        f"# the first sheet whose name matches is read (or keep sheet = {_s(sheet)})",
        f"sheet_pattern = {_s(pattern)}",
    ]


def _layout_lines(sniffed: Sniffed) -> list[str]:
    unit = "line" if sniffed.format == "csv" else "sheet row"
    if sniffed.header_row == 1:
        lines = [f"# sure: the header is on {unit} 1"]
    else:
        lines = [
            f"# sure: the header is on {unit} {sniffed.header_row}; the {unit}s above it (a title, an export date) "
            "are not read",
            f"header_row = {sniffed.header_row}",
        ]
    if sniffed.footer_rows:
        lines += [
            f"# sure: {sniffed.footer_rows} summary or footer row(s) (Total, Average, Exported by …) are quarantined "
            'as no_rating with their line; footer_rows = "skip" skips them instead',
            'footer_rows = "quarantine"',
        ]
    return lines


def _long_lines(clinic_id: str, long: LongRoles) -> list[str]:
    each = "item or total" if long.item else "instrument total"
    lines = [
        f"# sure: a long layout, one row per {each} of a session; rows of one session are read as one",
        'layout = "long"',
        "",
        f"[clinics.{clinic_id}.export.long]",
    ]
    if long.measure:
        lines += ["# the column naming each row's instrument", f"measure = {_s(long.measure)}"]
    if long.item:
        lines += ["# the column naming each row's item ('Goals & Topics', 'Ziele und Themen', 'Total', 'Q7')",
                  f"item = {_s(long.item)}"]  # fmt: skip
    lines += ["# the column holding the score", f"score = {_s(long.score)}"]
    if long.unknown_labels:
        lines += [
            f"# NOT SURE: {long.unknown_labels} measure or item label(s) in the file are not names we know; map each",
            '# here, e.g. measures = { "Session Rating Scale" = "SRS" } and items = { "Bond" = "relationship" },',
            "# or their rows are quarantined as no_rating",
        ]
    return lines


def render(draft: Draft) -> str:
    """The commented profile; names and value ranges only, never a cell of a client column."""
    sniffed, mapping = draft.sniffed, draft.mapping
    lines = [
        f"[clinics.{draft.clinic_id}]",
        f"name = {_s(draft.clinic_id)}",
        'timezone = "UTC"  # set the clinic\'s IANA timezone, e.g. "Europe/Berlin"',
        "",
        f"[clinics.{draft.clinic_id}.export]",
        f"format = {_s(sniffed.format)}",
    ]
    if sniffed.format == "csv":
        lines += [f"encoding = {_s(sniffed.encoding)}", f"delimiter = {_s(sniffed.delimiter or ',')}"]
    if sniffed.sheet:
        lines += _sheet_lines(sniffed)
    if sniffed.format in ("json", "ndjson"):
        lines += [
            "# likely: the list of objects holding the most records; parents' fields are carried down to each",
            f"records = {_s(sniffed.records)}" if sniffed.records else "# each line is one record",
        ]
    else:
        lines += _layout_lines(sniffed)
    if sniffed.decimal_comma:
        lines += ["# sure: numbers are written with a decimal comma", "decimal_comma = true"]
    lines += _date_lines(draft.dates)
    instruments = mapping.instruments or ["SRS"]
    if not mapping.instruments:
        lines.append("# NOT SURE: no instrument column recognised; SRS assumed")
    lines.append(f"instruments = [{', '.join(_s(c) for c in instruments)}]")
    if draft.long:
        lines += _long_lines(draft.clinic_id, draft.long)
    lines.append("")
    lines.append(f"[clinics.{draft.clinic_id}.export.columns]")
    for vendor, match in mapping.mapped.items():
        lines.append(f"# {'sure' if match.sure else 'likely'}: {match.why}")
        lines.append(f"{_s(vendor)} = {_s(match.field)}")
    if mapping.left_out:
        lines.append("# left out (never loaded): " + ", ".join(_s(n) for n in mapping.left_out))
    return "\n".join(lines) + "\n"
