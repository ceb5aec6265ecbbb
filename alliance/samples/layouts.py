"""The four vendor layouts: their columns, clinic profiles and file writers, and shaped twins of the exports."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import date, datetime
from pathlib import Path

import xlsxwriter

from alliance.instruments import instrument
from alliance.samples.network import Block, ClinicPlan, Row
from alliance.samples.trajectories import Value


def _us_columns() -> tuple[list[str], dict[str, str]]:
    header = ["Client ID", "Client Name", "Clinician", "Session Date", "Session #"]
    header += ["SRS Relationship", "SRS Goals & Topics", "SRS Approach/Method", "SRS Overall", "SRS Total"]
    header += ["ORS Individually", "ORS Interpersonally", "ORS Socially", "ORS Overall", "ORS Total"]
    header += ["Session Notes"]
    canonical = [
        "client_ref", None, "therapist_id", "session_date", "session_number",
        "srs_relationship", "srs_goals", "srs_approach", "srs_overall", "srs_total",
        "ors_individually", "ors_interpersonally", "ors_socially", "ors_overall", "ors_total",
        None,
    ]  # fmt: skip
    return header, {h: c for h, c in zip(header, canonical, strict=True) if c}


# profile name -> header as the vendor's export actually spells it (odd case and spacing)
_EU_HEADER_QUIRKS = {"Klient-Nr.": "KLIENT-NR. ", "Ziele & Themen": "ziele  &  Themen"}


def _eu_columns() -> tuple[list[str], dict[str, str]]:
    names = ["Klient-Nr.", "Klient/in (Name)", "Therapeut/in", "Sitzungsdatum", "Sitzung"]
    names += ["Beziehung", "Ziele & Themen", "Vorgehen/Methode", "Gesamteinschätzung", "Summe", "Notiz (frei)"]
    canonical = [
        "client_ref", None, "therapist_id", "session_date", "session_number",
        "srs_relationship", "srs_goals", "srs_approach", "srs_overall", "srs_total", None,
    ]  # fmt: skip
    header = [_EU_HEADER_QUIRKS.get(n, n) for n in names]
    return header, {n: c for n, c in zip(names, canonical, strict=True) if c}


def _xlsx_columns() -> tuple[list[str], dict[str, str]]:
    items = [f"WAI {k}" for k in range(1, 13)]
    header = ["Client Code", "Client Name", "Therapist", "Date of Session", "Session No", *items, "WAI Total"]
    header.append("Comments")
    wai = instrument("WAI_SR")
    columns = {"Client Code": "client_ref", "Therapist": "therapist_id"}
    columns |= {"Date of Session": "session_date", "Session No": "session_number"}
    columns |= dict(zip(items, wai.item_fields, strict=True))
    columns["WAI Total"] = wai.total_field
    return header, columns


# the vendor's JSON keys per instrument, in registry item order
_JSON_KEYS = {
    "SRS": ("relationship", "goals", "approach", "overall"),
    "ORS": ("individually", "interpersonally", "socially", "overall"),
}


def _json_columns() -> dict[str, str]:
    columns = {"clients.client_ref": "client_ref", "clients.therapist": "therapist_id"}
    columns |= {"clients.sessions.date": "session_date", "clients.sessions.number": "session_number"}
    for code in ("SRS", "ORS"):
        inst = instrument(code)
        for key, target in zip(_JSON_KEYS[code], inst.item_fields, strict=True):
            columns[f"clients.sessions.{code.lower()}.{key}"] = target
        columns[f"clients.sessions.{code.lower()}.total"] = inst.total_field
    return columns


def profile(plan: ClinicPlan) -> dict:
    export: dict[str, object]
    if plan.layout == "us_csv":
        export = {"format": "csv", "encoding": "utf-8", "delimiter": ",", "date_format": "%m/%d/%Y"}
        export |= {"instruments": ["SRS", "ORS"], "columns": _us_columns()[1]}
    elif plan.layout == "eu_csv":
        export = {"format": "csv", "encoding": "cp1252", "delimiter": ";", "decimal_comma": True}
        export |= {"date_format": "%d.%m.%Y", "instruments": ["SRS"], "columns": _eu_columns()[1]}
    elif plan.layout == "xlsx":
        export = {"format": "xlsx", "sheet": "Sessions", "date_format": "%Y-%m-%d"}
        export |= {"instruments": ["WAI_SR"], "columns": _xlsx_columns()[1]}
    else:
        export = {"format": "json", "records": "clients.sessions", "date_format": "%Y-%m-%d"}
        export |= {"instruments": ["SRS", "ORS"], "columns": _json_columns()}
    return {"name": plan.name, "timezone": plan.timezone, "export": export}


def _number(value: Value, decimal_comma: bool = False) -> str:
    if isinstance(value, str):
        return value
    text = str(value) if isinstance(value, int) else f"{value:.1f}"
    return text.replace(".", ",") if decimal_comma else text


def _csv_date(when: date | str, fmt: str) -> str:
    return when if isinstance(when, str) else when.strftime(fmt)


def write_us_csv(path: Path, rows: list[Row]) -> None:
    blank = [""] * 5
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\r\n")
        writer.writerow(_us_columns()[0])
        for row in rows:
            outcome = [_number(v) for v in row.outcome] if row.outcome is not None else blank
            writer.writerow(
                [row.client_ref, row.client_name, row.therapist, _csv_date(row.when, "%m/%d/%Y"), row.number]
                + [_number(v) for v in row.alliance]
                + outcome
                + [row.note]
            )


def write_eu_csv(path: Path, rows: list[Row]) -> None:
    with path.open("w", encoding="cp1252", newline="") as handle:
        writer = csv.writer(handle, delimiter=";", lineterminator="\r\n")
        writer.writerow(_eu_columns()[0])
        for row in rows:
            writer.writerow(
                [row.client_ref, row.client_name, row.therapist, _csv_date(row.when, "%d.%m.%Y"), row.number]
                + [_number(v, decimal_comma=True) for v in row.alliance]
                + [row.note]
            )


def write_xlsx(path: Path, rows: list[Row], plan: ClinicPlan, today: date) -> None:
    book = xlsxwriter.Workbook(str(path), {"constant_memory": True})
    # a fixed creation stamp keeps the workbook reproducible
    book.set_properties({"created": datetime(today.year, today.month, today.day), "title": plan.name})
    date_cell = book.add_format({"num_format": "yyyy-mm-dd"})
    sheet = book.add_worksheet("Sessions")
    sheet.write_row(0, 0, _xlsx_columns()[0])
    for r, row in enumerate(rows, start=1):
        if row.client_ref:
            sheet.write_string(r, 0, row.client_ref)
        sheet.write_string(r, 1, row.client_name)
        sheet.write_string(r, 2, row.therapist)
        if isinstance(row.when, str):
            sheet.write_string(r, 3, row.when)
        else:
            sheet.write_datetime(r, 3, row.when, date_cell)
        sheet.write_number(r, 4, row.number)
        for c, value in enumerate(row.alliance, start=5):
            sheet.write(r, c, value)
        if row.note:
            sheet.write_string(r, 5 + len(row.alliance), row.note)
    about = book.add_worksheet("About")
    about.write_string(0, 0, f"Session feedback export, {plan.name}")
    about.write_string(1, 0, f"Generated {today.isoformat()}; instrument WAI-SR (12 items, 1-5).")
    about.write_string(2, 0, "One row per session; sheet 'Sessions'.")
    book.close()


def _json_rating(code: str, values: list[Value] | None) -> dict[str, Value] | None:
    if values is None:
        return None
    return dict(zip((*_JSON_KEYS[code], "total"), values, strict=True))


def _json_session(row: Row) -> dict[str, object]:
    return {
        "date": row.when if isinstance(row.when, str) else row.when.isoformat(),
        "number": row.number,
        "srs": _json_rating("SRS", row.alliance),
        "ors": _json_rating("ORS", row.outcome),
        "note": row.note,
    }


def write_json(path: Path, blocks: list[Block], plan: ClinicPlan, today: date) -> None:
    clients = [
        {
            "client_ref": block.rows[0].client_ref,
            "name": block.rows[0].client_name,
            "therapist": block.rows[0].therapist,
            "sessions": [_json_session(row) for row in block.rows],
        }
        for block in blocks
    ]
    document = {"export": {"clinic": plan.name, "generated": f"{today.isoformat()}T02:00:00"}, "clients": clients}
    path.write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- the same exports as report programs shape them

REPORT_TITLE = "Session feedback report"
# a cell written as a number in a shaped workbook only when it reads back as the same text
CANONICAL_NUMBER = re.compile(r"^-?(?:0|[1-9][0-9]*)(?:\.[0-9]*[1-9])?$")


def _title_rows(clinic_name: str, today: date) -> list[list[str]]:
    return [[f"{REPORT_TITLE}: {clinic_name}"], [f"Export date: {today.isoformat()}"], []]


def _footer_rows(layout: str, today: date) -> list[list[str]]:
    """Summary rows with numbers under the rating columns (they would load as ratings if not told apart)."""
    german = layout == "eu_csv"
    total, mean, by = ("Summe", "Mittelwert", "Exportiert von") if german else ("Total", "Average", "Exported by")
    score = {"eu_csv": "9,1", "xlsx": "4"}.get(layout, "9.1")
    items = 12 if layout == "xlsx" else 4
    return [
        [total, "", "", "", "", *[score] * items],
        [mean, "", "", "", "", *[score] * items],
        [f"{by} FeedbackSuite 4.2, {today.isoformat()}"],
    ]


def write_titled_csv(wide: Path, out: Path, layout: str, clinic_name: str, today: date) -> int:
    """The wide CSV with a report title, export date and blank line above the header and summary rows below.

    Returns how many lines lie above the header (the offset of every source line).
    """
    encoding, delimiter = ("cp1252", ";") if layout == "eu_csv" else ("utf-8", ",")
    with wide.open(encoding=encoding, newline="") as handle:
        body = handle.read()
    top, bottom = io.StringIO(), io.StringIO()
    csv.writer(top, delimiter=delimiter, lineterminator="\r\n").writerows(_title_rows(clinic_name, today))
    csv.writer(bottom, delimiter=delimiter, lineterminator="\r\n").writerows(_footer_rows(layout, today))
    with out.open("w", encoding=encoding, newline="") as handle:
        handle.write(top.getvalue() + body + bottom.getvalue())
    return len(_title_rows(clinic_name, today))


def write_covered_xlsx(wide: Path, out: Path, clinic_name: str, today: date, sheet: str = "Sessions") -> int:
    """The wide workbook's sheet behind a cover sheet, named with the export month, titled, with summary rows.

    Cells keep the text the readers see in the wide workbook. Returns how many rows lie above the header.
    """
    import fastexcel

    grid = fastexcel.read_excel(wide.read_bytes()).load_sheet(sheet, header_row=None, dtypes="string").to_polars()
    book = xlsxwriter.Workbook(str(out))
    book.set_properties({"created": datetime(today.year, today.month, today.day), "title": clinic_name})
    cover = book.add_worksheet("Cover")
    cover.write_string(0, 0, f"{REPORT_TITLE}: {clinic_name}")
    cover.write_string(2, 0, "The sessions are on the next sheet.")
    data = book.add_worksheet(f"Sessions {today:%Y-%m}")
    title = _title_rows(clinic_name, today)
    rows = [*title, *grid.rows(), *_footer_rows("xlsx", today)]
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            if value is None or value == "":
                continue
            if r > len(title) and CANONICAL_NUMBER.match(value):
                data.write_number(r, c, float(value))
            else:
                data.write_string(r, c, value)
    book.close()
    return len(title)


KEY_COLUMNS = ("client_ref", "therapist_id", "session_date", "session_number")
_LONG_MEASURES = {"SRS": "SRS", "ORS": "ORS", "WAI_SR": "WAI-SR"}  # instrument code -> the vendor's label


def _wide_grid(wide: Path, layout: str) -> list[list[str]]:
    if layout == "xlsx":
        import fastexcel

        sheet = fastexcel.read_excel(wide.read_bytes()).load_sheet("Sessions", header_row=None, dtypes="string")
        return [["" if c is None else str(c) for c in row] for row in sheet.to_polars().rows()]
    encoding, delimiter = ("cp1252", ";") if layout == "eu_csv" else ("utf-8", ",")
    with wide.open(encoding=encoding, newline="") as handle:
        return list(csv.reader(handle, delimiter=delimiter))


def write_long_csv(wide: Path, out: Path, layout: str, per: str = "item") -> None:
    """The wide export rewritten long: a row per item and total (``per="item"``) or per instrument total
    (``per="total"``) of each session, labelled as the vendor's header labels them ('SRS', 'Goals & Topics').

    Written in the wide file's encoding and delimiter (UTF-8 and ',' for a workbook); every other column
    (names, notes) repeats on each row, an empty score stays an empty row.
    """
    header, *rows = _wide_grid(wide, layout)
    columns = {"us_csv": _us_columns, "eu_csv": _eu_columns, "xlsx": _xlsx_columns}[layout]()[1]
    position = {" ".join(name.split()).casefold(): i for i, name in enumerate(header)}
    labels: dict[int, list[str]] = {}  # wide column -> [measure, item] (or [measure] per total)
    for vendor, field in columns.items():
        code = next((c for c in _LONG_MEASURES if field.startswith(c.lower() + "_")), None)
        if code is None or (per == "total" and field != instrument(code).total_field):
            continue
        item = re.sub(r"^(?:SRS|ORS|WAI)\s+", "", vendor)
        labels[position[" ".join(vendor.split()).casefold()]] = [_LONG_MEASURES[code], item][
            : 2 if per == "item" else 1
        ]
    rating_columns = {position[" ".join(v.split()).casefold()] for v, f in columns.items() if f not in KEY_COLUMNS}
    kept = [i for i in range(len(header)) if i not in rating_columns]
    encoding, delimiter = ("cp1252", ";") if layout == "eu_csv" else ("utf-8", ",")
    with out.open("w", encoding=encoding, newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter, lineterminator="\r\n")
        writer.writerow(
            [header[i] for i in kept] + (["Measure", "Item", "Score"] if per == "item" else ["Measure", "Score"])
        )
        for row in rows:
            cells = row + [""] * (len(header) - len(row))
            for i, label in labels.items():
                writer.writerow([cells[k] for k in kept] + label + [cells[i]])
