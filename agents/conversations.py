"""The conversations domain's worker side: its fold as configured by settings, and its effect worker."""

from __future__ import annotations

from datetime import timedelta

from agents.batching import Folder
from agents.effects import Effects
from agents.folds.conversations import FoldConfig, fold
from streams.settings import Settings
from streams.tenants import load_tenants


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
    )


def build_effects(settings: Settings) -> Effects:
    """Effect worker dependencies chosen by settings: LLM classifier and WhatsApp sender when configured."""
    from agents.classifier import AnthropicClassifier
    from agents.senders import LogSender, whatsapp_sender

    classifier = None
    if settings.anthropic_api_key:
        classifier = AnthropicClassifier(
            api_key=settings.anthropic_api_key.get_secret_value(),
            model=settings.classifier_model,
            timeout_s=settings.classifier_timeout_s,
            base_url=settings.anthropic_base_url,
            input_usd_per_mtok=settings.classifier_input_usd_per_mtok,
            output_usd_per_mtok=settings.classifier_output_usd_per_mtok,
        )
    sender = whatsapp_sender(settings) if settings.whatsapp_access_token else LogSender()
    return Effects(tenants=load_tenants(settings.tenants_file), sender=sender, classifier=classifier)
