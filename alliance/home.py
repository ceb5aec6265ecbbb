"""The home folder: clinics.toml, inbox/<clinic_id>/, archive/, the pseudonym key and the warehouse."""

from __future__ import annotations

from pathlib import Path

from alliance.permissions import OWNER_DIR, private_umask
from alliance.pseudonyms import create_key_file
from alliance.settings import Settings

EXAMPLE_CLINICS = """\
# Alliance Watch clinic profiles. One [clinics.<id>] table per clinic; its exports go to inbox/<id>/.
# A profile says how that clinic's vendor writes its session-feedback export. Columns are matched by
# name (case and spacing ignored), never by position; columns not listed here are never loaded.
#
# [clinics.northside]
# name = "Northside Counseling"
# timezone = "America/Chicago"        # IANA name: "today" for future-date checks is the clinic's today
#
# [clinics.northside.export]
# format = "csv"                      # csv | xlsx | json | ndjson
# encoding = "auto"                   # auto (UTF-8, UTF-16 with BOM, else cp1252) | utf-8 | utf-16 | cp1252
# delimiter = "auto"                  # auto | "," | ";" | "\\t" | "|"
# decimal_comma = false               # true when scores are written like 8,5
# date_format = "%m/%d/%Y"            # strftime; a list tries each in turn; ISO dates always accepted
# sheet = "Sessions"                  # xlsx only: the sheet to read (default: the first)
# records = "clients.sessions"        # json only: dotted path to the session records
# instruments = ["SRS", "ORS"]        # from the instrument registry: SRS, CSRS, ORS, WAI_SR, ARM5
# item_max = { SRS = 100 }            # only when the file's item scale differs (e.g. millimetres)
#
# [clinics.northside.export.columns]  # vendor column -> canonical field
# "Client ID" = "client_ref"          # pseudonymised at ingest; the reference stays in client_refs
# "Clinician" = "therapist_id"
# "Session Date" = "session_date"
# "Session #" = "session_number"
# "SRS Relationship" = "srs_relationship"
# "SRS Goals & Topics" = "srs_goals"
# "SRS Approach/Method" = "srs_approach"
# "SRS Overall" = "srs_overall"
# "SRS Total" = "srs_total"
"""


def init_home(settings: Settings) -> list[Path]:
    """Create the home's folders, an example clinics.toml and a pseudonym key; returns what was created.

    Everything is created owner-only (folders 0700, files 0600) whatever the umask.
    """
    private_umask()
    created: list[Path] = []
    for folder in (settings.home, settings.inbox, settings.archive):
        if not folder.exists():
            folder.mkdir(parents=True)
            created.append(folder)
    if settings.home in created:
        settings.home.chmod(OWNER_DIR)  # mkdir(parents=True) leaves the umask's mode on the home itself
    if not settings.clinics_file.exists():
        settings.clinics_file.write_text(EXAMPLE_CLINICS, encoding="utf-8")
        created.append(settings.clinics_file)
    if settings.hmac_key is None and create_key_file(settings.key_file):
        created.append(settings.key_file)
    return created


def ensure_inboxes(settings: Settings, clinic_ids: list[str]) -> None:
    """One inbox folder per clinic, so the data team knows where each clinic's files go."""
    for clinic_id in clinic_ids:
        (settings.inbox / clinic_id).mkdir(parents=True, exist_ok=True)
