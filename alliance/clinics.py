"""Clinic profiles from clinics.toml: who the clinic is and how its vendor's export is laid out."""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alliance.errors import ProfileError
from alliance.instruments import Instrument, instrument, registry

# Fields every export must provide, whatever the vendor calls them.
KEY_FIELDS = ("client_ref", "therapist_id", "session_date", "session_number")


def canonical_fields() -> set[str]:
    """Every canonical field a vendor column may map to."""
    fields = set(KEY_FIELDS)
    for inst in registry().values():
        fields.update(inst.item_fields)
        fields.add(inst.total_field)
    return fields


def normalise_column(name: str) -> str:
    """Case- and whitespace-insensitive column identity: ' Client  ID ' -> 'client id'."""
    return " ".join(name.split()).casefold()


class LongLayout(BaseModel):
    """A long (tidy) export: one row per item, or per instrument total, of a session.

    Labels are matched ignoring case, spacing and punctuation. Without ``measures`` or ``items``, the
    instruments' and items' usual English and German names are recognised ('SRS', 'Goals & Topics',
    'Ziele und Themen', 'Total', 'Q7').
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    measure: str | None = Field(
        default=None, description="the column naming the instrument; unset: every row is the one instrument listed"
    )
    item: str | None = Field(default=None, description="the column naming the item; unset: each row is a total")
    score: str = Field(min_length=1, description="the column holding the item's score or the total")
    measures: dict[str, str] = Field(default_factory=dict, description="vendor measure label -> instrument code")
    items: dict[str, str] = Field(
        default_factory=dict, description="vendor item label -> item key of the registry ('goals', 'q7') or 'total'"
    )

    @property
    def columns(self) -> dict[str, str]:
        """The layout's own columns, vendor name -> role ('measure', 'item', 'score')."""
        roles = {self.measure: "measure", self.item: "item", self.score: "score"}
        return {vendor: role for vendor, role in roles.items() if vendor is not None}


class ExportProfile(BaseModel):
    """How one clinic's vendor writes its session-feedback export."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["csv", "xlsx", "json", "ndjson"] = "csv"
    encoding: Literal["auto", "utf-8", "utf-16", "cp1252"] = "auto"
    delimiter: str = "auto"
    decimal_comma: bool = False
    date_format: str | list[str] = "%Y-%m-%d"
    sheet: str | None = None
    sheet_pattern: str | None = Field(
        default=None,
        description="xlsx: the first sheet whose name matches this glob (case-insensitive), e.g. 'Sessions*'",
    )
    header_row: int | None = Field(
        default=None, ge=1, description="csv/xlsx: the line or sheet row of the header; unset: detected"
    )
    footer_rows: Literal["quarantine", "skip"] = Field(
        default="quarantine",
        description="csv/xlsx: summary and footer rows (Total, Average, Exported by …) quarantined as no_rating, "
        "or skipped",
    )
    hidden_rows: Literal["quarantine", "load"] = Field(
        default="quarantine",
        description="xlsx: rows hidden in the workbook are quarantined as hidden_row, or loaded like any other",
    )
    records: str | None = Field(
        default=None, description="json: dotted path to the session records, e.g. 'clients.sessions'"
    )
    instruments: list[str] = Field(min_length=1)
    layout: Literal["wide", "long"] = Field(
        default="wide", description="wide: a row per session; long: a row per item or total, see [export.long]"
    )
    long: LongLayout | None = None
    item_max: dict[str, float] = Field(
        default_factory=dict, description="the file's item maximum per instrument when it differs"
    )
    columns: dict[str, str] = Field(min_length=1, description="vendor column name -> canonical field")

    @field_validator("delimiter")
    @classmethod
    def _delimiter(cls, value: str) -> str:
        if value != "auto" and len(value) != 1:
            raise ValueError("must be 'auto' or one character such as ',' or ';'")
        return value

    @field_validator("date_format")
    @classmethod
    def _date_format(cls, value: str | list[str]) -> str | list[str]:
        formats = [value] if isinstance(value, str) else value
        if not formats or any("%" not in f for f in formats):
            raise ValueError("must be a strftime format such as '%d.%m.%Y' (or a list of them)")
        return value

    @field_validator("instruments")
    @classmethod
    def _instruments(cls, value: list[str]) -> list[str]:
        known = registry()
        unknown = [code for code in value if code.upper() not in known]
        if unknown:
            raise ValueError(f"unknown instrument(s) {unknown}; known: {', '.join(known)}")
        return [code.upper() for code in value]

    @model_validator(mode="after")
    def _columns(self) -> ExportProfile:
        known = canonical_fields()
        targets = list(self.columns.values())
        listed = {f for code in self.instruments for f in (*instrument(code).item_fields, instrument(code).total_field)}
        for vendor, target in self.columns.items():
            if target not in known:
                raise ValueError(f"columns.{vendor!r}: unknown canonical field {target!r}")
            if target not in KEY_FIELDS and target not in listed:
                raise ValueError(f"columns.{vendor!r}: {target} belongs to an instrument not listed in instruments")
        dupes = {t for t in targets if targets.count(t) > 1}
        if dupes:
            raise ValueError(f"columns: several vendor columns map to {sorted(dupes)}")
        names = [normalise_column(v) for v in self.columns]
        if len(set(names)) != len(names):
            raise ValueError("columns: two vendor names differ only in case or spacing")
        missing = [f for f in KEY_FIELDS if f not in targets]
        if missing:
            raise ValueError(f"columns: no vendor column maps to {missing}")
        if self.layout == "long":
            self._check_long(targets)
        elif self.long is not None:
            raise ValueError("long: only with layout = 'long'")
        for code in self.instruments if self.layout == "wide" else ():
            inst = instrument(code)
            if not ({*inst.item_fields, inst.total_field} & set(targets)):
                raise ValueError(f"columns: no vendor column maps to an item or the total of {code}")
        for code in self.item_max:
            if code.upper() not in self.instruments:
                raise ValueError(f"item_max.{code}: instrument not listed in instruments")
        if self.format in ("csv",) and self.sheet:
            raise ValueError("sheet: only for xlsx exports")
        if self.format != "xlsx" and self.sheet_pattern:
            raise ValueError("sheet_pattern: only for xlsx exports")
        if self.sheet and self.sheet_pattern:
            raise ValueError("sheet, sheet_pattern: give one of them")
        if self.format in ("json", "ndjson") and self.header_row is not None:
            raise ValueError("header_row: only for csv and xlsx exports")
        if self.format != "xlsx" and "hidden_rows" in self.model_fields_set:
            raise ValueError("hidden_rows: only for xlsx exports")
        return self

    def _check_long(self, targets: list[str]) -> None:
        if self.long is None:
            raise ValueError("layout = 'long' needs an [export.long] table naming the score column (and measure, item)")
        if self.format in ("json", "ndjson"):
            raise ValueError("layout = 'long': only for csv and xlsx exports")
        ratings = [t for t in targets if t not in KEY_FIELDS]
        if ratings:
            raise ValueError(f"columns: {ratings} come from [export.long] in a long layout; map only the key fields")
        if self.long.measure is None and len(self.instruments) > 1:
            raise ValueError("long.measure: several instruments are listed, so a column must name each row's")
        for label, code in self.long.measures.items():
            if code.upper() not in self.instruments:
                raise ValueError(f"long.measures.{label!r}: {code} is not listed in instruments")
        keys = {"total", *(item for code in self.instruments for item in instrument(code).items)}
        for label, item in self.long.items.items():
            if item.lower() not in keys:
                raise ValueError(f"long.items.{label!r}: {item!r} is no item of {self.instruments} nor 'total'")
        names = [normalise_column(v) for v in [*self.columns, *self.long.columns]]
        if len(set(names)) != len(names):
            raise ValueError("long: a layout column is also mapped in columns")

    @property
    def header_columns(self) -> dict[str, str]:
        """Every column the header must hold, vendor name -> canonical field or long-layout role."""
        return {**self.columns, **(self.long.columns if self.layout == "long" and self.long else {})}

    @property
    def date_formats(self) -> list[str]:
        return [self.date_format] if isinstance(self.date_format, str) else list(self.date_format)

    @property
    def instrument_specs(self) -> list[Instrument]:
        return [instrument(code) for code in self.instruments]

    def file_item_max(self, inst: Instrument) -> float:
        return next((v for k, v in self.item_max.items() if k.upper() == inst.code), inst.item_max)


class RuleConfig(BaseModel):
    """Detection thresholds (domain.md rules 1–9); point values are SRS points, rescaled for other instruments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low_cutoff: float | None = Field(default=None, description="rule 1: total below this is low (default: registry)")
    drop_points: float = Field(
        default=1.0, ge=0.01, description="rule 2: a fall of this much from the last session (scores move in 0.1 steps)"
    )
    low_item: float | None = Field(default=None, description="rule 3: an item below this (default: registry)")
    rupture_k: float = Field(default=2.0, gt=0, description="rule 6: k SDs below own mean (2 strict, 1 lenient)")
    unrepaired_sessions: int = Field(default=3, ge=1, description="rule 6: an unrepaired rupture this old is high")
    trend_window: int = Field(default=3, ge=3, description="rule 7: sessions in the Theil-Sen slope")
    trend_slope: float = Field(default=-0.6, lt=0, description="rule 7: slope (points per session) at or below this")
    trend_decline: float = Field(default=3.5, ge=0, description="rule 7: and this fall from the level before")
    ors_cutoff: float | None = Field(default=None, description="rule 8: ORS clinical cutoff (default: registry, 25)")
    gap_sessions: int = Field(default=3, ge=1, description="rule 9: this many session numbers without a rating")
    gap_days: int = Field(default=28, ge=1, description="rule 9: longest silence after a decline before it is flagged")
    inactive_days: int = Field(default=56, ge=1, description="rule 9: after this long a silent dyad counts as closed")
    silence_intervals: float = Field(
        default=1.5, gt=0, description="rule 9: silent for this many usual intervals after a decline (at most gap_days)"
    )
    course_end_days: int = Field(
        default=28, ge=1, description="a course has ended after this many days beyond its usual interval: unqueued"
    )


SECRET_PLACEHOLDER = r"\$\{[A-Z][A-Z0-9_]*\}"


def _no_literal_secret(url: str) -> str:
    """Alert URLs name their secrets as ${VARS}; a literal password would end up in a config file."""
    import re

    without = re.sub(SECRET_PLACEHOLDER, "", url)
    if re.search(r"://[^/?#@\s]*:[^/?#@\s]+@", without):
        raise ValueError("a password is written into an alert URL; use ${ENV_VAR} placeholders for secrets")
    return url


class Supervisor(BaseModel):
    """Who receives rupture alerts, for which therapists (all when empty), through which channels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    urls: list[str] = Field(min_length=1, description="apprise URLs; secrets as ${ENV_VAR} placeholders")
    therapists: list[str] = Field(default_factory=list)

    @field_validator("urls")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        return [_no_literal_secret(u) for u in value]


class AlertConfig(BaseModel):
    """A clinic's alert channels: rupture alerts to supervisors, trend alerts to clinic leads."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_severity: Literal["advisory", "low", "medium", "high", "critical"] = "medium"
    supervisors: list[Supervisor] = Field(default_factory=list)
    leads: list[str] = Field(default_factory=list, description="apprise URLs for trend alerts")

    @field_validator("leads")
    @classmethod
    def _leads(cls, value: list[str]) -> list[str]:
        return [_no_literal_secret(u) for u in value]


class Clinic(BaseModel):
    """A clinic of the network and its export profile."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    name: str
    timezone: str = "UTC"
    # OS group whose members may read snapshots/clinic-<id>.duckdb (and nothing else in the home)
    snapshot_group: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
    export: ExportProfile
    rules: RuleConfig = RuleConfig()
    alerts: AlertConfig = AlertConfig()

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r} (use an IANA name like 'Europe/Berlin')") from None
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def _explain(clinic_id: str, err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(profile)"
    message = first["msg"].removeprefix("Value error, ")
    return f"clinics.toml: clinic {clinic_id!r}: {key}: {message}"


def parse_clinics(text: str) -> dict[str, Clinic]:
    """Clinics from the text of clinics.toml; a bad profile raises ProfileError naming clinic and key.

    The same text is parsed once per process: a network's file takes a fifth of a second to validate, and
    every ingest and every clinic's sweep reads it (profiles are frozen, so sharing them is safe).
    """
    return dict(_parsed_clinics(text))


@functools.lru_cache(maxsize=4)
def clinics_toml(text: str) -> dict[str, Any]:
    """The TOML of clinics.toml's text, parsed once per process for the profiles and the snapshot groups alike
    (a network's file takes ~0.2 s to parse); callers only read it."""
    return tomllib.loads(text)


@functools.lru_cache(maxsize=4)
def _parsed_clinics(text: str) -> dict[str, Clinic]:
    try:
        raw = clinics_toml(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"clinics.toml: not valid TOML: {exc}") from None
    unknown = set(raw) - {"clinics", "access"}  # [access]: dashboard sign-in grants (dashboards/access.py)
    if unknown:
        raise ProfileError(f"clinics.toml: unknown top-level key(s) {sorted(unknown)}; clinics go under [clinics.<id>]")
    clinics: dict[str, Clinic] = {}
    for clinic_id, spec in raw.get("clinics", {}).items():
        if not isinstance(spec, dict):
            raise ProfileError(f"clinics.toml: clinic {clinic_id!r}: expected a table")
        try:
            clinics[clinic_id] = Clinic(id=clinic_id, **spec)
        except ValidationError as err:
            raise ProfileError(_explain(clinic_id, err)) from None
        except TypeError as err:
            raise ProfileError(f"clinics.toml: clinic {clinic_id!r}: {err}") from None
    return clinics


def load_clinics(path: Path) -> dict[str, Clinic]:
    """Clinics from a clinics.toml file."""
    if not path.exists():
        raise ProfileError(f"{path}: no clinics.toml; run `alliance init` first")
    return parse_clinics(path.read_text(encoding="utf-8"))


def clinic_batches(clinic_ids: list[str], sizes: dict[str, int], clinics: int, total: int) -> list[list[str]]:
    """``clinic_ids`` in order, in batches of at most ``clinics`` clinics whose ``sizes`` (none: 0) add up to at
    most ``total``, a larger clinic alone: what one step of a run holds in memory at once."""
    batches: list[list[str]] = []
    held = 0
    for clinic_id in clinic_ids:
        size = sizes.get(clinic_id, 0)
        if not batches or len(batches[-1]) >= clinics or held + size > total:
            batches.append([])
            held = 0
        batches[-1].append(clinic_id)
        held += size
    return batches
