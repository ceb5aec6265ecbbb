"""The one settings object: environment (ALLIANCE_*) over defaults; paths derive from the home folder."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where Alliance Watch keeps its files and how it ingests."""

    model_config = SettingsConfigDict(env_prefix="ALLIANCE_", extra="ignore")

    home: Path = Field(
        default=Path(".alliance"),
        description="Folder holding clinics.toml, inbox/, archive/ and warehouse.duckdb.",
    )
    hmac_key: SecretStr | None = Field(
        default=None,
        description="Secret key for client pseudonyms; when unset, the key file in the home folder is used.",
    )
    quarantine_file_share: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="A file whose share of failing rows exceeds this is quarantined whole.",
    )
    lock_timeout_s: float = Field(
        default=600.0, gt=0, description="How long a writer waits for the warehouse lock before giving up."
    )
    queue_min_risk: float = Field(
        default=30.0, ge=0, le=100, description="Dyads at or above this risk score enter the review queue."
    )
    queue_target_share: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="At most this share of each clinic's open dyads in the review queue, highest risk first.",
    )
    recalibrate_growth: float = Field(
        default=0.25, gt=0, description="Re-estimate reliable change when an instrument's ratings grew by this share."
    )
    trend_min_sessions: int = Field(
        default=5, ge=1, description="A week's trend point alerts only with at least this many sessions behind it."
    )
    nightly_cron: str = Field(default="0 2 * * *", description="When the nightly run starts (cron).")
    nightly_timezone: str = Field(default="UTC", description="Timezone of the nightly cron (IANA name).")
    dashboard_url: str | None = Field(
        default=None, description="Base URL of the dashboard, for links in alerts; the CLI command is used without it."
    )
    dashboard_address: str = Field(
        default="127.0.0.1",
        description="Address the dashboard binds to; beyond loopback only with sign-in (ALLIANCE_OIDC_*) configured.",
    )
    oidc_metadata_url: str | None = Field(
        default=None,
        description="The identity provider's OpenID Connect discovery URL (.well-known/openid-configuration).",
    )
    oidc_client_id: str | None = Field(default=None, description="The dashboard's client id at the identity provider.")
    oidc_client_secret: SecretStr | None = Field(
        default=None, description="The dashboard's client secret at the identity provider."
    )
    min_free_mb: float = Field(default=500.0, ge=0, description="Warn before a run when less disk space is free.")
    duckdb_memory: str = Field(
        default="2GB",
        pattern=r"^[1-9]\d*(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$",
        description="Memory the writer's DuckDB may hold (cache, joins, snapshot comparisons) before spilling to disk.",
    )
    max_file_mb: float = Field(default=512.0, gt=0, description="Exports larger than this are rejected.")
    max_rows: int = Field(default=2_000_000, gt=0, description="Exports with more rows (records) are rejected.")
    max_xlsx_uncompressed_mb: float = Field(
        default=1024.0, gt=0, description="XLSX workbooks expanding to more than this are rejected (zip bomb)."
    )
    max_xlsx_ratio: float = Field(
        default=100.0, gt=1, description="XLSX files expanding to more than this many times their size are rejected."
    )
    max_xlsx_cells: int = Field(
        default=25_000_000, gt=0, description="XLSX sheets whose cells span a larger rows × columns range are rejected."
    )
    settle_s: float = Field(
        default=2.0,
        ge=0,
        description="A file is read only once its size and mtime have not changed for this long (still being written).",
    )
    runner_poll_s: float = Field(
        default=1.0,
        gt=0,
        description="How often `alliance serve` asks Prefect for runs to start (Prefect's default, 10 s, adds 0–10 s "
        "to every file's landing-to-alert time).",
    )
    serve_runs: int = Field(
        default=2,
        ge=1,
        description="Flow runs `alliance serve` runs at once. The warehouse takes one writer at a time: a second run "
        "starts while the first publishes and takes the lock when it is free (a file landing then does not wait "
        "on Prefect to start it); more only add processes waiting on the lock.",
    )
    alert_senders: int = Field(
        default=8,
        ge=1,
        description="Alert messages sent at once. Each waits on its channel (a mail server, a webhook); one at a "
        "time, a night's 2,000 messages at 100 ms each would take over 3 minutes, and one slow channel would hold "
        "up every clinic's.",
    )
    require_final_newline: bool = Field(
        default=True, description="CSV files not ending in a newline are rejected: truncated or still being written."
    )

    @property
    def clinics_file(self) -> Path:
        return self.home / "clinics.toml"

    @property
    def inbox(self) -> Path:
        return self.home / "inbox"

    @property
    def archive(self) -> Path:
        return self.home / "archive"

    @property
    def warehouse(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def key_file(self) -> Path:
        return self.home / "pseudonym.key"


def load_settings(home: Path | None = None) -> Settings:
    """Settings from the environment, with an explicit home folder taking precedence."""
    settings = Settings()
    if home is not None:
        settings = settings.model_copy(update={"home": home})
    return settings
