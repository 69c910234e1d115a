"""The outbound domain's worker configuration: its settings (BATON_OUTBOUND_*), its fold as configured by them,
and the factory of its effect worker (agents.outbound.effects)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import msgspec
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.batching import Folder
from agents.outbound.effects import OutboundEffects
from agents.outbound.fold import OutboundConfig, fold, parse_hhmm
from agents.zones import zone
from schemas.outbound import QuietHours
from streams.registry import DomainPolicy
from streams.settings import Settings, loaded

if TYPE_CHECKING:
    from agents.senders import Sender


class OutboundPolicy(BaseModel):
    """The outbound section of a policy (schemas.policies): what the fold decides with. Its defaults are the
    built-in policy."""

    model_config = ConfigDict(extra="forbid")

    default_timezone: str = "UTC"
    quiet_hours_start: str = "22:00"
    quiet_hours_end: str = "08:00"
    daily_limit: int = Field(10, ge=0)
    active_window_minutes: float = Field(10.0, ge=0)
    max_deferral_hours: float = Field(72.0, gt=0)
    max_send_attempts: int = Field(4, ge=1)
    retry_backoff_s: float = Field(30.0, gt=0)

    @field_validator("quiet_hours_start", "quiet_hours_end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        parse_hhmm(value)
        return value

    @field_validator("default_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone(value)
        return value

    def fold_config(self, **overrides: Any) -> OutboundConfig:
        """The fold's configuration under this policy; overrides replace fields (what-if replay)."""
        config = OutboundConfig(
            default_timezone=self.default_timezone,
            default_quiet_hours=QuietHours(start=self.quiet_hours_start, end=self.quiet_hours_end),
            default_daily_limit=self.daily_limit,
            active_window=timedelta(minutes=self.active_window_minutes),
            max_deferral=timedelta(hours=self.max_deferral_hours),
            max_send_attempts=self.max_send_attempts,
            retry_backoff=timedelta(seconds=self.retry_backoff_s),
        )
        return msgspec.structs.replace(config, **overrides)


class OutboundSettings(OutboundPolicy, BaseSettings):
    """The outbound policy as configured, and the effect settings (BATON_OUTBOUND_*); docs/outbound.md lists them."""

    model_config = SettingsConfigDict(env_prefix="BATON_OUTBOUND_", extra="ignore")

    tick_interval_s: float = Field(1.0, gt=0)
    tick_republish_s: float = Field(30.0, gt=0)
    relevance_model: str = "claude-haiku-4-5"
    render_model: str = "claude-haiku-4-5"
    render_max_tokens: int = Field(400, ge=16)


POLICY = DomainPolicy.of(OutboundPolicy, OutboundSettings)


def outbound_folder(_settings: Settings) -> Folder:
    """The outbound fold under the built-in policy (the spine decides each event under its stamped one)."""
    return Folder(fold=fold, config=OutboundPolicy().fold_config())


def build_effects(settings: Settings) -> OutboundEffects:
    """The effect worker with the shared sender (WhatsApp when configured) and the LLM client when configured."""
    from agents.llm import llm_client
    from agents.senders import LogSender, whatsapp_sender
    from agents.tenants import load_tenants

    sender: Sender = whatsapp_sender(settings) if settings.whatsapp_access_token else LogSender()
    return OutboundEffects(load_tenants(settings.tenants_file), sender, llm_client(settings),
                           loaded(OutboundSettings))
