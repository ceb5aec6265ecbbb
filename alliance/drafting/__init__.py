"""Drafting a clinic profile from one export: layout, dates and a column mapping, each with how sure it is."""

from __future__ import annotations

from pathlib import Path

from alliance.clinics import KEY_FIELDS
from alliance.drafting.columns import Mapping, map_columns
from alliance.drafting.dates import infer_date_format
from alliance.drafting.long import long_roles
from alliance.drafting.render import Draft, render
from alliance.drafting.sniff import sniff_export

__all__ = ["Draft", "draft_profile", "render"]


def draft_profile(path: Path, clinic_id: str) -> Draft:
    """A draft profile for the clinic that sends this file.

    Example: ``print(render(draft_profile(Path("export.csv"), "northside")))``.
    """
    sniffed = sniff_export(path)
    if sniffed.labels:  # json: fields matched by their names within their own objects ('srs.goals')
        labelled = map_columns(
            [sniffed.labels[n] for n in sniffed.header],
            {sniffed.labels[n]: v for n, v in sniffed.values.items()},
            sniffed.decimal_comma,
        )
        name_of = {label: name for name, label in sniffed.labels.items()}
        mapping = Mapping(
            {name_of[label]: match for label, match in labelled.mapped.items()},
            labelled.instruments,
            [name_of[label] for label in labelled.left_out],
        )
    else:
        mapping = map_columns(sniffed.header, sniffed.values, sniffed.decimal_comma)
    ratings = [m for m in mapping.mapped.values() if m.field not in KEY_FIELDS]
    # a wide file names its items in its header; a long one has at most a score column that reads as a total
    roles = long_roles(sniffed.header, sniffed.values) if len(ratings) < 2 and not sniffed.records else None
    if roles is not None:  # a long file: only the key columns map; the layout's own columns are in [export.long]
        layout = {roles.measure, roles.item, roles.score}
        keys = {v: m for v, m in mapping.mapped.items() if m.field in KEY_FIELDS and v not in layout}
        left_out = [n for n in sniffed.header if n.strip() and n not in keys and n not in layout]
        mapping = Mapping(keys, roles.instruments, left_out)
    date_column = next((v for v, m in mapping.mapped.items() if m.field == "session_date"), None)
    dates = infer_date_format(sniffed.values.get(date_column, []) if date_column else [])
    return Draft(clinic_id, sniffed, mapping, dates, roles)
