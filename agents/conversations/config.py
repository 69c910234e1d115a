"""The conversations domain's worker configuration: its settings, its fold as configured by them, and the factory
of its effect worker (agents.conversations.effects)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.batching import Folder
from agents.conversations.effects import ROUTING_REQUESTED, Effects
from agents.conversations.fold import FoldConfig, count_duplicate, fold
from agents.tenants import load_tenants
from streams.registry import DomainPolicy
from streams.settings import Settings, loaded


class ConversationsPolicy(BaseModel):
    """The conversations section of a policy (schemas.policies): when a session ends and what a state keeps. Its
    defaults are the built-in policy."""

    model_config = ConfigDict(extra="forbid")

    session_timeout_hours: float = Field(24.0, gt=0)
    max_dialogue_turns: int = Field(50, ge=1)
    seen_message_ids: int = Field(256, ge=1)

    def fold_config(self) -> FoldConfig:
        return FoldConfig(session_timeout=timedelta(hours=self.session_timeout_hours),
                          max_dialogue_turns=self.max_dialogue_turns, max_seen_message_ids=self.seen_message_ids)


class ConversationsSettings(ConversationsPolicy, BaseSettings):
    """The conversation fold's bounds and the routing model (BATON_*, names unchanged); the README's settings
    table lists them. The WhatsApp and tenants settings stay in streams.settings.Settings: the edge, the
    outbound domain and `baton dev` read them too."""

    model_config = SettingsConfigDict(env_prefix="BATON_", extra="ignore")

    # The conversation routing model and its timeout; its calls are priced by llm_prices like every other.
    classifier_model: str = "claude-haiku-4-5"
    classifier_timeout_s: float = Field(5.0, gt=0)


POLICY = DomainPolicy.of(ConversationsPolicy, ConversationsSettings)


def conversation_folder(_settings: Settings) -> Folder:
    """The conversation fold under the built-in policy, with its session-boundary rule."""
    return Folder(
        fold=fold,
        config=ConversationsPolicy().fold_config(),
        ends_state=lambda envelope: envelope.type == "conversation.session.expired",
        on_duplicate=count_duplicate,
        # Answered in one effect run, whose message.answered (lane, rule, reply, WhatsApp id) is the audit record.
        unlogged=frozenset({ROUTING_REQUESTED}),
    )


def build_effects(settings: Settings) -> Effects:
    """Effect worker dependencies chosen by settings: the routing model (shared LLM client) and WhatsApp sender
    when configured."""
    from agents.conversations.routing import LaneModel
    from agents.llm import llm_client
    from agents.senders import LogSender, whatsapp_sender

    options = loaded(ConversationsSettings)
    llm = llm_client(settings)
    lane_model = None if llm is None else LaneModel(llm, options.classifier_model, options.classifier_timeout_s)
    sender = whatsapp_sender(settings) if settings.whatsapp_access_token else LogSender()
    return Effects(tenants=load_tenants(settings.tenants_file), sender=sender, lane_model=lane_model)
