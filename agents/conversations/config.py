"""The conversations domain's worker side: its fold as configured by settings, and its effect worker."""

from __future__ import annotations

from datetime import timedelta

from agents.batching import Folder
from agents.conversations.effects import Effects
from agents.conversations.fold import FoldConfig, count_duplicate, fold
from agents.tenants import load_tenants
from streams.settings import Settings


def conversation_folder(settings: Settings) -> Folder:
    """The conversation fold, configured from settings, with its session-boundary rule."""
    return Folder(
        fold=fold,
        config=FoldConfig(
            session_timeout=timedelta(hours=settings.session_timeout_hours),
            max_dialogue_turns=settings.max_dialogue_turns,
            max_seen_message_ids=settings.seen_message_ids,
        ),
        ends_state=lambda envelope: envelope.type == "conversation.session.expired",
        on_duplicate=count_duplicate,
    )


def build_effects(settings: Settings) -> Effects:
    """Effect worker dependencies chosen by settings: the routing model (shared LLM client) and WhatsApp sender
    when configured."""
    from agents.conversations.routing import LaneModel
    from agents.conversations.senders import LogSender, whatsapp_sender
    from agents.llm import llm_client

    llm = llm_client(settings)
    lane_model = None if llm is None else LaneModel(llm, settings.classifier_model, settings.classifier_timeout_s)
    sender = whatsapp_sender(settings) if settings.whatsapp_access_token else LogSender()
    return Effects(tenants=load_tenants(settings.tenants_file), sender=sender, lane_model=lane_model)
