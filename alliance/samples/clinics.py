"""Who is in a sample network: clinic plans, client names and notes with canaries, and export rows."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date

from alliance.instruments import Instrument, instrument
from alliance.samples.trajectories import Value

LAYOUTS = ("us_csv", "eu_csv", "xlsx", "json")
# id, display name, client-ref prefix, therapist-id prefix
_NAMED_CLINICS = (
    ("northside", "Northside Counseling Center", "N", "north"),
    ("rheinpark", "Praxis am Rheinpark", "R", "rhein"),
    ("harbor", "Harbor Wellbeing Service", "H", "harbor"),
    ("lakeview", "Lakeview Family Therapy", "L", "lake"),
)
_TIMEZONES = {
    "us_csv": "America/Chicago",
    "eu_csv": "Europe/Berlin",
    "xlsx": "Europe/London",
    "json": "America/Los_Angeles",
}
_NOTE_CANARY_CHANCE = 0.06
_NOTE_CHANCE = 0.35


@dataclass(frozen=True)
class PlantedDyad:
    """A client–therapist pair whose alliance trajectory was planted on purpose."""

    clinic_id: str
    client_ref: str
    therapist_id: str
    instrument: str
    pattern: str
    event_session: int | None
    level: float | None = None  # realistic profile: the client's own usual level, in SRS points
    within_sd: float | None = None  # realistic profile: the dyad's session-to-session spread


@dataclass(frozen=True)
class ClinicPlan:
    id: str
    name: str
    layout: str
    ref_prefix: str
    therapist_prefix: str

    @property
    def timezone(self) -> str:
        return _TIMEZONES[self.layout]

    @property
    def alliance(self) -> Instrument:
        return instrument("WAI_SR" if self.layout == "xlsx" else "SRS")

    @property
    def has_outcome(self) -> bool:
        return self.layout in ("us_csv", "json")


def clinic_plan(index: int) -> ClinicPlan:
    layout = LAYOUTS[index % len(LAYOUTS)]
    if index < len(_NAMED_CLINICS):
        clinic_id, name, ref_prefix, therapist_prefix = _NAMED_CLINICS[index]
        return ClinicPlan(clinic_id, name, layout, ref_prefix, therapist_prefix)
    number = f"{index + 1:02d}"
    return ClinicPlan(f"clinic{number}", f"Community Clinic {number}", layout, f"C{number}", f"clinic{number}")


class CanaryMint:
    """Hands out numbered canary strings for one clinic and remembers them."""

    def __init__(self, clinic_id: str, issued: list[str]) -> None:
        self._clinic_id = clinic_id
        self._issued = issued
        self._count = 0

    def __call__(self) -> str:
        self._count += 1
        canary = f"CANARY-{self._clinic_id}-{self._count}"
        self._issued.append(canary)
        return canary


@dataclass(slots=True)
class Row:
    """One session line of an export, before layout-specific formatting."""

    client_ref: str
    client_name: str
    therapist: str
    when: date | str
    number: int
    alliance: list[Value]
    outcome: list[Value] | None
    note: str
    correctable: bool = False

    @property
    def ratings(self) -> int:
        return 1 + (self.outcome is not None)


@dataclass
class Block:
    """The rows of one client entry (a dyad, or one invalid case) as the JSON layout nests them."""

    rows: list[Row]
    invalid: int = 0


@dataclass
class ClinicData:
    plan: ClinicPlan
    blocks: list[Block] = field(default_factory=list)
    dyads: list[PlantedDyad] = field(default_factory=list)


_FIRST = {
    "en": ("Maria", "James", "Aisha", "Daniel", "Priya", "Tom", "Grace", "Luis", "Emma", "Noah", "Chloe", "Omar"),
    "de": ("Jürgen", "Özlem", "Lena", "Björn", "Käthe", "Mehmet", "Anna", "Jörg", "Sophie", "Lukas", "Hülya"),
    "es": ("José", "Ana", "Chloé", "Itzel", "Zoë", "Renée", "Andrés", "Ingrid", "Kai", "Mei", "Sean"),
}
_LAST = {
    "en": ("Lopez", "O'Brien", "Smith", "Nguyen", "Patel", "Johnson", "Walker", "Kim", "Brown", "Davies"),
    "de": ("Müller", "Schäfer", "Weiß", "Yildiz", "Köhler", "Groß", "Becker", "Hoffmann", "Krüger"),
    "es": ("Núñez", "García", "Okafor", "Müller-Lee", "Sánchez", "Chen", "Dubois", "Martín", "Reyes"),
}
_NOTES = {
    "en": (
        "Discussed work stress, sleep and family.",
        'Client said "rough week", wants to focus on boundaries.',
        "Homework: breathing exercise.\nFollow up next week.",
        "Reviewed goals; client prefers more structure.",
        "Arrived late, seemed tired, engaged later in session.",
        "Talked about the move, finances, and the kids.",
    ),
    "de": (
        "Klientin berichtet über Prüfungsangst; Schlaf etwas besser.",
        "Thema Trennung, Gefühle von Schuld – weiter beobachten.",
        "Hausaufgabe: Tagebuch führen.\nNächster Termin in 2 Wochen.",
        "Zuzahlung 10 € noch offen, Überweisung angekündigt.",
        'Klient sagt: "Es läuft gut", wirkt aber angespannt.',
    ),
}
_CANARY_NOTES = {
    "en": ("Call back re {c}, left voicemail.", "Supervisor check-in ({c}), no concerns.", "Ref {c}: see intake."),
    "de": ("Rückruf wegen {c}, Nachricht hinterlassen.", "Supervision ({c}): keine Bedenken."),
}
_LANGUAGE = {"us_csv": "en", "eu_csv": "de", "xlsx": "en", "json": "es"}


def _language(plan: ClinicPlan) -> str:
    return _LANGUAGE[plan.layout]


def fake_name(plan: ClinicPlan, rng: random.Random) -> str:
    names = _language(plan)
    return f"{rng.choice(_FIRST[names])} {rng.choice(_LAST[names])}"


def _note_language(plan: ClinicPlan) -> str:
    return "de" if _language(plan) == "de" else "en"


def plain_note(plan: ClinicPlan, rng: random.Random) -> str:
    return rng.choice(_NOTES[_note_language(plan)]) if rng.random() < _NOTE_CHANCE else ""


def note(plan: ClinicPlan, rng: random.Random, mint: CanaryMint, force_canary: bool) -> str:
    if force_canary or rng.random() < _NOTE_CANARY_CHANCE:
        return rng.choice(_CANARY_NOTES[_note_language(plan)]).format(c=mint())
    return plain_note(plan, rng)
