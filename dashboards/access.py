"""Who may see which clinic in the dashboard: grants by e-mail or group claim, read from clinics.toml.

```toml
[access]
groups_claim = "groups"               # the ID-token claim listing a person's groups

[[access.grants]]
email = "lee@northside.example"       # one person ...
clinics = ["northside"]

[[access.grants]]
group = "network-leads"               # ... or everyone in a group of the identity provider
role = "network"                      # every clinic, and the network view
```
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alliance.errors import ConfigError
from alliance.redaction import plain_text


class Grant(BaseModel):
    """One line of access: a person (e-mail) or a group, and what they may see."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: str | None = Field(default=None, description="The e-mail claim of one person (case ignored).")
    group: str | None = Field(default=None, description="A value of the groups claim.")
    clinics: list[str] = Field(default_factory=list, description="Clinics this grant opens.")
    role: Literal["supervisor", "network"] = Field(default="supervisor", description="network: every clinic.")

    @model_validator(mode="after")
    def _who_and_what(self) -> Grant:
        if (self.email is None) == (self.group is None):
            raise ValueError("give exactly one of email or group")
        if self.role == "supervisor" and not self.clinics:
            raise ValueError("a supervisor grant needs clinics = [...] (or role = 'network')")
        return self


class AccessConfig(BaseModel):
    """The [access] table of clinics.toml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    groups_claim: str = "groups"
    grants: list[Grant] = Field(default_factory=list)


@dataclass(frozen=True)
class Viewer:
    """A signed-in person as the dashboard treats them: who (for the audit) and which clinics."""

    identity: str
    clinics: frozenset[str]
    network: bool

    def may_see(self, clinic_id: str) -> bool:
        return self.network or clinic_id in self.clinics


def parse_access(raw: Mapping[str, Any], known_clinics: set[str]) -> AccessConfig:
    """The [access] table of a parsed clinics.toml; unknown clinics and malformed grants are refused."""
    try:
        config = AccessConfig(**raw.get("access", {}))
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"clinics.toml: access.{key}: {first['msg'].removeprefix('Value error, ')}") from None
    for index, grant in enumerate(config.grants):
        unknown = sorted(set(grant.clinics) - known_clinics)
        if unknown:
            raise ConfigError(f"clinics.toml: access.grants.{index}: unknown clinic(s) {unknown}")
    return config


def load_access(clinics_file: Path) -> AccessConfig:
    """The access grants of a home's clinics.toml (none when the file or the table is absent)."""
    if not clinics_file.exists():
        return AccessConfig()
    try:
        raw = tomllib.loads(clinics_file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"clinics.toml: not valid TOML: {exc}") from None
    return parse_access(raw, set(raw.get("clinics", {})))


def viewer_of(claims: Mapping[str, Any], config: AccessConfig) -> Viewer:
    """What the person behind these ID-token claims may see; no matching grant means no clinic.

    Example: ``viewer_of({"email": "lee@northside.example"}, config).clinics == {"northside"}``.
    """
    # an address the provider says it has not verified could be anyone's: it matches no grant
    email = "" if claims.get("email_verified") is False else str(claims.get("email") or "").strip().lower()
    groups = claims.get(config.groups_claim) or []
    groups = {str(g) for g in (groups if isinstance(groups, list) else [groups])}
    clinics: set[str] = set()
    network = False
    for grant in config.grants:
        if (grant.email and grant.email.strip().lower() == email and email) or (grant.group and grant.group in groups):
            clinics.update(grant.clinics)
            network = network or grant.role == "network"
    # the audit names the person by e-mail, else by the provider's stable subject id
    identity = plain_text(email or str(claims.get("sub") or ""), 200)
    return Viewer(identity=identity, clinics=frozenset(clinics), network=network)
