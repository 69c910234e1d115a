"""Every setting, read once from the environment (BATON_ prefix plus the standard names)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from streams.errors import StreamsError

# Public development secrets: `baton dev` runs with them; every process outside development refuses them.
DEV_JWT_SECRET = "baton-dev-secret-change-me-0123456789"
DEV_WHATSAPP_APP_SECRET = "baton-dev-app-secret"
DEV_WHATSAPP_VERIFY_TOKEN = "baton-dev-verify-token"
MIN_SECRET_BYTES = 32
GENERATE_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"


class InsecureSettings(StreamsError, RuntimeError):
    """A production process was configured with a missing, public or short secret."""


def require_secure(settings: Settings) -> None:
    """Refuse to run outside development with public, missing or short secrets (InsecureSettings)."""
    if settings.production and (problems := settings.insecure_secrets()):
        raise InsecureSettings(
            "refusing to start outside development (broker profile "
            f"{settings.broker_profile!r}, BATON_ENV={settings.env or 'unset'}): " + "; ".join(problems)
            + f". Generate each secret with: {GENERATE_SECRET}"
        )


class ModelPrice(BaseModel):
    """USD per million tokens of one model; cache reads and writes priced apart from plain input."""

    input_usd_per_mtok: float = Field(0.0, ge=0)
    output_usd_per_mtok: float = Field(0.0, ge=0)
    cache_read_usd_per_mtok: float = Field(0.0, ge=0)
    cache_write_usd_per_mtok: float = Field(0.0, ge=0)


def _prices(input_usd: float, output_usd: float) -> ModelPrice:
    # Anthropic's list prices: a cache read costs 0.1x input, a 5-minute cache write 1.25x.
    return ModelPrice(input_usd_per_mtok=input_usd, output_usd_per_mtok=output_usd,
                      cache_read_usd_per_mtok=input_usd * 0.1, cache_write_usd_per_mtok=input_usd * 1.25)


DEFAULT_LLM_PRICES = {
    "claude-haiku-4-5": _prices(1.0, 5.0),
    "claude-sonnet-4-5": _prices(3.0, 15.0),
    "claude-opus-4-5": _prices(5.0, 25.0),
}


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, f"BATON_{name}")


class Settings(BaseSettings):
    """Baton's configuration; each field is documented in the README's settings table."""

    model_config = SettingsConfigDict(env_prefix="BATON_", extra="ignore", populate_by_name=True)

    kafka_bootstrap_servers: str | None = Field(None, validation_alias=_env("KAFKA_BOOTSTRAP_SERVERS"))
    database_url: str | None = Field(None, validation_alias=_env("DATABASE_URL"))
    anthropic_api_key: SecretStr | None = Field(None, validation_alias=_env("ANTHROPIC_API_KEY"))
    anthropic_base_url: str | None = Field(None, validation_alias=_env("ANTHROPIC_BASE_URL"))

    extra_domains: str = ""
    domains: str = ""  # the built-in domains to register, comma-separated; empty: all (policies always)
    broker_profile: Literal["embedded", "kafka"] = "embedded"
    app_id: str = "baton"
    topic_prefix: str = "baton."
    topic_partitions: int = Field(4, ge=1)
    topic_replication: int = Field(1, ge=1)

    # Unset: production on any broker but the embedded one. `baton dev --broker kafka` says development.
    env: Literal["development", "production"] | None = None
    jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    # Rotation: comma-separated; the first signs, any verifies (replaces jwt_secret when set).
    jwt_secrets: SecretStr | None = None
    whatsapp_app_secret: SecretStr = SecretStr(DEV_WHATSAPP_APP_SECRET)
    whatsapp_verify_token: SecretStr = SecretStr(DEV_WHATSAPP_VERIFY_TOKEN)
    whatsapp_access_token: SecretStr | None = None
    whatsapp_api_base: str = "https://graph.facebook.com/v21.0"
    whatsapp_timeout_s: float = Field(10.0, gt=0)
    # The reply sender: requests in flight per business number (phone_number_id), attempts per reply for failures
    # that cannot have sent it (no connection, 429, throttling codes), first backoff and the longest single wait.
    whatsapp_max_concurrent_per_number: int = Field(10, ge=1)
    whatsapp_max_attempts: int = Field(4, ge=1)
    whatsapp_retry_base_s: float = Field(0.5, gt=0)
    whatsapp_retry_max_s: float = Field(30.0, gt=0)
    tenants_file: Path = Path(__file__).resolve().parent.parent / "examples" / "tenants.toml"

    # Model name (or prefix, for dated ids) -> prices; JSON in BATON_LLM_PRICES replaces the whole table.
    llm_prices: dict[str, ModelPrice] = Field(default_factory=lambda: dict(DEFAULT_LLM_PRICES))
    llm_timeout_s: float = Field(30.0, gt=0)

    publish_timeout_s: float = Field(10.0, gt=0)
    # How stale an edge's view of the adopted policies may be when it stamps an event (streams.policies).
    policy_refresh_s: float = Field(1.0, gt=0)
    max_request_bytes: int = Field(1_048_576, ge=1024)
    max_batch_events: int = Field(500, ge=1)
    worker_batch_max: int = Field(1000, ge=1)
    worker_batch_within_s: float = Field(0.01, gt=0)
    fetch_wait_ms: int = Field(200, ge=1, le=10_000)
    state_flush_interval_s: float = Field(0.2, gt=0)
    projector_batch_max: int = Field(2000, ge=1)
    projector_batch_within_s: float = Field(0.1, gt=0)
    # The projector's fetch waits for this much data, or projector_batch_within_s: at a few records per fetch it
    # spent a transaction and a full fetch of every partition on each (bench: 6x its CPU per message at 100/s).
    projector_fetch_min_bytes: int = Field(65_536, ge=1)

    # Edge token buckets: per tenant on ingest (writes) and on queries (reads), per phone_number_id on the webhook.
    ingest_rate_per_s: float = Field(1000.0, gt=0)
    ingest_burst: int = Field(2000, ge=1)
    query_rate_per_s: float = Field(1000.0, gt=0)
    query_burst: int = Field(2000, ge=1)
    webhook_rate_per_s: float = Field(1000.0, gt=0)
    webhook_burst: int = Field(2000, ge=1)

    # The worker's or projector's own /metrics port (the API serves /metrics on its port); 0 serves none.
    metrics_port: int = Field(9100, ge=0, le=65535)

    api_host: str = "127.0.0.1"
    api_port: int = Field(8080, ge=0, le=65535)
    data_dir: Path = Path(".baton")
    worker_data_dir: Path | None = None
    log_level: str = "info"

    @property
    def production(self) -> bool:
        """True outside development: BATON_ENV=production, or any broker but the embedded one unless
        BATON_ENV=development."""
        return self.env == "production" or (self.env is None and not self.embedded)

    @property
    def jwt_keys(self) -> list[str]:
        """The JWT secrets, signing one first."""
        if self.jwt_secrets is not None:
            return [k.strip() for k in self.jwt_secrets.get_secret_value().split(",") if k.strip()]
        return [self.jwt_secret.get_secret_value()]

    def insecure_secrets(self) -> list[str]:
        """What is wrong with the secrets for a production process, one line per variable."""
        problems = []
        named = [("BATON_JWT_SECRETS" if self.jwt_secrets is not None else "BATON_JWT_SECRET", key, DEV_JWT_SECRET)
                 for key in self.jwt_keys or [""]]
        named += [("BATON_WHATSAPP_APP_SECRET", self.whatsapp_app_secret.get_secret_value(), DEV_WHATSAPP_APP_SECRET),
                  ("BATON_WHATSAPP_VERIFY_TOKEN", self.whatsapp_verify_token.get_secret_value(),
                   DEV_WHATSAPP_VERIFY_TOKEN)]
        for variable, value, default in named:
            if not value:
                problems.append(f"{variable} is not set")
            elif value == default:
                problems.append(f"{variable} is the public development default")
            elif len(value.encode()) < MIN_SECRET_BYTES:
                problems.append(f"{variable} is shorter than {MIN_SECRET_BYTES} bytes")
        return list(dict.fromkeys(problems))

    @property
    def embedded(self) -> bool:
        """True when the broker is the embedded Tansu build with its known limits."""
        return self.broker_profile == "embedded"

    def topic(self, domain: str) -> str:
        """Kafka topic holding one domain's events."""
        return f"{self.topic_prefix}{domain}"

    @property
    def deadletter_topic(self) -> str:
        """Kafka topic for records that failed to decode or fold."""
        return f"{self.topic_prefix}deadletter"


T = TypeVar("T")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings()


_loaded: dict[type, tuple[Settings, Any]] = {}


def loaded(kind: type[T]) -> T:
    """A domain's settings, read from the environment once per process (again after get_settings.cache_clear())."""
    core = get_settings()
    hit = _loaded.get(kind)
    if hit is None or hit[0] is not core:
        hit = _loaded[kind] = (core, kind())
    return hit[1]


_STANDARD_NAMES = {"kafka_bootstrap_servers", "database_url", "anthropic_api_key", "anthropic_base_url"}


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce these settings in a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, dict | list):
            value = json.dumps(value)
        key = name.upper() if name in _STANDARD_NAMES else f"BATON_{name.upper()}"
        env[key] = str(value)
    return env
