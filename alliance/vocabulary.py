"""Names vendors give our fields, English and German: key columns, instrument prefixes, item and total labels.

Fixed words only: echoing a header cell that matches one of them can never show client data.
"""

from __future__ import annotations

import re

from alliance.instruments import Instrument, registry

# normalised name (see _key) -> key field; a name holding "name" is a client's name, never an id
KEY_NAMES = {
    "client_ref": ("client id", "client code", "client", "client ref", "client no", "client number", "klient",
                   "klientin", "klient in", "klient nr", "klientin nr", "klient id", "patient", "patient id",
                   "patient in", "patientin", "fall nr", "case id"),
    "therapist_id": ("therapist", "therapist id", "therapeut", "therapeutin", "therapeut in", "behandler",
                     "behandlerin", "behandler in", "clinician", "counsellor", "counselor", "provider"),
    "session_date": ("date", "datum", "session date", "date of session", "sitzungsdatum", "termin datum",
                     "termindatum", "visit date"),
    "session_number": ("session", "session no", "session number", "session nr", "sitzung", "sitzung nr",
                       "sitzungs nr", "sitzungsnummer", "termin", "termin nr", "visit", "session #"),
}  # fmt: skip
# item labels per registry item key, English and German (as the vendors' forms word them)
ITEM_NAMES = {
    "relationship": ("relationship", "beziehung"),
    "goals": ("goals", "goals topics", "goals and topics", "ziele", "ziele themen", "ziele und themen"),
    "approach": ("approach", "approach method", "approach or method", "method", "vorgehen", "vorgehen methode",
                 "vorgehensweise", "methode"),
    "overall": ("overall", "insgesamt", "gesamt", "gesamteinschätzung", "allgemein"),
    "individually": ("individually", "individual", "individuell", "persönlich"),
    "interpersonally": ("interpersonally", "interpersonal", "zwischenmenschlich", "beziehungen"),
    "socially": ("socially", "social", "sozial", "gesellschaftlich"),
}  # fmt: skip
TOTAL_NAMES = ("total", "score", "sum", "summe", "gesamtwert", "punkte", "gesamtpunkte")
INSTRUMENT_ALIASES = {"WAI_SR": ("wai", "wai sr", "wai-sr"), "CSRS": ("csrs",), "SRS": ("srs",), "ORS": ("ors",),
                      "ARM5": ("arm", "arm5", "arm 5")}  # fmt: skip


def column_key(name: str) -> str:
    """'  Goals & Topics ' -> 'goals topics'; 'Klient-Nr.' -> 'klient nr'; 'Session #' keeps its '#'."""
    return " ".join(re.sub(r"[^\w#]+", " ", name.casefold()).replace("_", " ").split())


def split_instrument(key: str) -> tuple[str | None, str]:
    """'srs goals topics' -> ('SRS', 'goals topics'); 'wai 7' -> ('WAI_SR', '7')."""
    for code, aliases in INSTRUMENT_ALIASES.items():
        for alias in sorted(aliases, key=len, reverse=True):
            if key == alias or key.startswith(alias + " "):
                return code, key[len(alias) :].strip()
    return None, key


def item_of(rest: str, inst: Instrument) -> str | None:
    """The canonical item (or total) field a label names within one instrument."""
    if rest in TOTAL_NAMES:
        return inst.total_field
    digits = re.fullmatch(r"(?:q|item|frage)? ?([0-9]{1,2})", rest)
    if digits and f"q{int(digits.group(1))}" in inst.items:
        return inst.item_field(f"q{int(digits.group(1))}")
    for item in inst.items:
        if rest in ITEM_NAMES.get(item, ()):
            return inst.item_field(item)
    return None


def key_field_named(name: str) -> str | None:
    """The key field a header cell names ('Klient-Nr.' -> client_ref), None for any other cell."""
    key = column_key(name)
    return next((target for target, names in KEY_NAMES.items() if key in names), None)


def is_key(name: str) -> bool:
    return any(column_key(name) in names for names in KEY_NAMES.values())


def field_named(name: str) -> str | None:
    """The canonical field a header cell's words name, whatever its values ('Date of Session' -> session_date)."""
    field = key_field_named(name)
    if field is not None:
        return field
    code, rest = split_instrument(column_key(name))
    for inst in [registry()[code]] if code else [registry()["SRS"], registry()["ORS"]]:
        target = item_of(rest, inst)
        if target is not None:
            return target
    return None
