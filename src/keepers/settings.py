"""Settings: one tree, read from `KEEPERS_*` environment variables and `keepers.toml`.

Priority: arguments > environment > `.env` > `keepers.toml` (or the file named by
`KEEPERS_CONFIG`). Every field is documented in the README; a test fails when one is not.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from keepers.errors import InvalidInput


class Settings(BaseSettings):
    """Runtime configuration of a Keepers process."""

    model_config = SettingsConfigDict(
        env_prefix="KEEPERS_", env_file=".env", extra="ignore", toml_file="keepers.toml"
    )

    database_url: str = Field(
        "keepers.duckdb",
        description="A file path (embedded DuckDB) or a postgresql:// URL.",
    )
    host: str = Field("127.0.0.1", description="Interface `keepers serve` binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port `keepers serve` listens on.")
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token for the management API (/api/*). When unset, the server "
        "makes a random one per run and writes it, readable by the owner only, next to the "
        "DuckDB file so local CLI commands can use it.",
    )
    max_event_bytes: int = Field(32 * 1024, ge=1024, description="Largest single event.")
    max_batch_bytes: int = Field(500 * 1024, ge=1024, description="Largest /v1/batch body.")
    max_batch_events: int = Field(2500, ge=1, description="Most events in one batch.")
    ingest_queue_events: int = Field(
        100_000,
        ge=100,
        description="Events waiting for a commit before new requests get 429 + Retry-After.",
    )
    commit_max_events: int = Field(
        10_000, ge=1, description="Most events written in one group commit."
    )
    duckdb_checkpoint_mb: int = Field(
        256,
        ge=1,
        description="DuckDB write-ahead log size that triggers a checkpoint. Larger means "
        "steadier ingest (a checkpoint rewrites the event index) but a longer replay after "
        "a crash.",
    )
    cors_origins: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Origins allowed to call the tracking API from a browser.",
    )
    log_level: str = Field("info", description="uvicorn / Keepers log level.")
    spark_master: str = Field(
        "local[2]",
        description="Spark master for `keepers compute --engine spark` (e.g. spark://host:7077).",
    )
    spark_driver_memory: str = Field(
        "4g", description="Heap of the Spark driver (local mode runs the whole job in it)."
    )
    compute_interval_s: float = Field(
        60.0,
        ge=0,
        description="How often `keepers serve` brings stages and segments up to date "
        "(an incremental compute); 0 turns the schedule off.",
    )

    journey_interval_s: float = Field(
        30.0,
        ge=0,
        description="How often `keepers serve` advances journeys and drains the outbox; "
        "0 turns it off.",
    )
    public_url: str = Field(
        "http://127.0.0.1:8000",
        description="Address customers reach this server at: unsubscribe and preference "
        "links in emails point here (use https in production; RFC 8058 requires it).",
    )
    email_from: str = Field(
        "Keepers <noreply@keepers.invalid>",
        description="From address of journey emails; its domain also names Message-IDs.",
    )
    smtp_host: str | None = Field(
        None, description="SMTP relay for journey emails; unset, emails wait in the outbox."
    )
    smtp_port: int = Field(25, ge=1, le=65535, description="SMTP relay port (587, 465, 25).")
    smtp_security: str = Field(
        "none", description="none, starttls (port 587) or tls (implicit TLS, port 465)."
    )
    smtp_username: str | None = Field(None, description="SMTP login (needs TLS).")
    smtp_password: SecretStr | None = Field(None, description="SMTP password.")
    smtp_timeout_s: float = Field(30.0, gt=0, description="SMTP connect and reply timeout.")
    dkim_selector: str | None = Field(
        None, description="DKIM selector; with the two below, emails are signed."
    )
    dkim_domain: str | None = Field(None, description="DKIM signing domain (d=).")
    dkim_private_key_file: str | None = Field(None, description="PEM file of the DKIM private key.")
    consent_mode: str = Field(
        "opt_out",
        description="opt_out: marketing email goes to customers who have not withdrawn "
        "consent (soft opt-in); opt_in: only to customers with a granted consent record.",
    )
    frequency_cap: int = Field(
        3, ge=0, description="Most marketing emails per customer in 7 days; 0 = no cap."
    )
    quiet_hours: str = Field(
        "21-8",
        description="Local hours (customer's `timezone` trait) when marketing email waits, "
        "as START-END; empty for none.",
    )
    default_timezone: str = Field(
        "UTC", description="Time zone of customers without a `timezone` trait."
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="Standard Webhooks signing secret (whsec_…); unset, Keepers makes one "
        "and keeps it in the store (`keepers journeys webhook-secret` shows it).",
    )
    webhook_allow_private: bool = Field(
        False,
        description="Let webhooks reach private, loopback and link-local addresses (tests, "
        "intranet receivers); off by default against SSRF.",
    )
    email_tracking: bool = Field(
        True,
        description="Rewrite links and add an open pixel so opens and clicks come back as "
        "'Email Opened' / 'Email Link Clicked' events.",
    )
    meta_access_token: SecretStr | None = Field(
        None, description="Meta Marketing API token for Custom Audience steps."
    )
    meta_api_base: str = Field(
        "https://graph.facebook.com", description="Meta Graph API base URL (tests: a local one)."
    )
    google_ads_developer_token: SecretStr | None = Field(
        None, description="Google Ads developer token for Customer Match steps."
    )
    google_ads_access_token: SecretStr | None = Field(
        None, description="Google Ads OAuth access token."
    )
    google_ads_customer_id: str | None = Field(
        None, description="Google Ads customer id (digits) that owns the user lists."
    )
    google_ads_login_customer_id: str | None = Field(
        None, description="Manager account id, when the lists are reached through one."
    )
    google_ads_api_base: str = Field(
        "https://googleads.googleapis.com", description="Google Ads API base URL."
    )
    delivery_concurrency: int = Field(
        8,
        ge=1,
        le=64,
        description="Emails and webhooks sent at once, each group recorded before the next; "
        "a worker killed mid-send resends at most this many (same Message-ID / webhook-id).",
    )
    delivery_give_up_hours: float = Field(
        96.0,
        gt=0,
        description="How long transient delivery failures are retried (RFC 5321: 4-5 days).",
    )

    @field_validator("quiet_hours")
    @classmethod
    def _hours(cls, value: str) -> str:
        value = value.strip()
        if value and not re.fullmatch(r"([01]?\d|2[0-3])-([01]?\d|2[0-3])", value):
            raise ValueError("quiet_hours must be START-END in whole hours (e.g. 21-8), or empty")
        return value

    @field_validator("smtp_security")
    @classmethod
    def _security(cls, value: str) -> str:
        if value not in ("none", "starttls", "tls"):
            raise ValueError("smtp_security must be none, starttls or tls")
        return value

    @field_validator("consent_mode")
    @classmethod
    def _consent(cls, value: str) -> str:
        if value not in ("opt_in", "opt_out"):
            raise ValueError("consent_mode must be opt_in or opt_out")
        return value

    @field_validator("database_url")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("database_url must be a file path or a postgresql:// URL")
        return value.strip()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("KEEPERS_CONFIG", "keepers.toml"))
        toml = TomlConfigSettingsSource(settings_cls, toml_file=toml_path)
        return init_settings, env_settings, dotenv_settings, toml, file_secret_settings

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith(("postgresql://", "postgres://"))


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and files, with explicit overrides (None = not given).

    An invalid value raises InvalidInput naming the setting and its environment variable."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first.get("loc") else "?"
        raise InvalidInput(
            f"setting '{name}' (KEEPERS_{name.upper()}): {first['msg']}", code="invalid_setting"
        ) from None
