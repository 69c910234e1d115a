"""Each domain's fold as the worker and replay both run it (no faust here)."""

from __future__ import annotations

from datetime import timedelta

from agents.batching import Folder
from agents.folds.conversations import FoldConfig, fold
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
    )
