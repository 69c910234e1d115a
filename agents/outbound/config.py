"""The outbound domain's worker configuration: its settings (BATON_OUTBOUND_*), its fold as configured by them,
and the factory of its effect worker (agents.outbound.effects)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import msgspec
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.batching import Folder
from agents.outbound.effects import OutboundEffects
from agents.outbound.fold import OutboundConfig, fold, parse_hhmm
from schemas.outbound import QuietHours
from streams.settings import Settings, loaded

if TYPE_CHECKING:
    from agents.senders import Sender


class OutboundSettings(BaseSettings):
    """The outbound policy defaults and effect settings (BATON_OUTBOUND_*); docs/outbound.md lists them."""

    model_config = SettingsConfigDict(env_prefix="BATON_OUTBOUND_", extra="ignore")

    default_timezone: str = "UTC"
    quiet_hours_start: str = "22:00"
    quiet_hours_end: str = "08:00"
    daily_limit: int = Field(10, ge=0)
    active_window_minutes: float = Field(10.0, ge=0)
    max_deferral_hours: float = Field(72.0, gt=0)
    max_send_attempts: int = Field(4, ge=1)
    retry_backoff_s: float = Field(30.0, gt=0)
    tick_interval_s: float = Field(1.0, gt=0)
    tick_republish_s: float = Field(30.0, gt=0)
    relevance_model: str = "claude-haiku-4-5"
    render_model: str = "claude-haiku-4-5"
    render_max_tokens: int = Field(400, ge=16)

    def fold_config(self, **overrides: Any) -> OutboundConfig:
        """The fold's policy from these settings; overrides replace fields (what-if replay)."""
        parse_hhmm(self.quiet_hours_start), parse_hhmm(self.quiet_hours_end)
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


def outbound_folder(_settings: Settings) -> Folder:
    """The outbound fold with the policy of BATON_OUTBOUND_*."""
    return Folder(fold=fold, config=loaded(OutboundSettings).fold_config())


def build_effects(settings: Settings) -> OutboundEffects:
    """The effect worker with the shared sender (WhatsApp when configured) and the LLM client when configured."""
    from agents.llm import llm_client
    from agents.senders import LogSender, whatsapp_sender
    from agents.tenants import load_tenants

    sender: Sender = whatsapp_sender(settings) if settings.whatsapp_access_token else LogSender()
    return OutboundEffects(load_tenants(settings.tenants_file), sender, llm_client(settings),
                           loaded(OutboundSettings))
