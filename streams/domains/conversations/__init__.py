"""The conversations domain, declared for the registry: WhatsApp sessions, routing and replies."""

from __future__ import annotations

from agents.conversations.config import (
    POLICY,
    ConversationsSettings,
    build_effects,
    conversation_folder,
)
from agents.conversations.fold import CODEC
from projections import conversations as read_side
from projections.conversations.readmodels import SESSIONS
from projections.conversations.routes import query_router
from schemas.conversations import CATALOG
from streams.domains.conversations.webhook import webhook_router
from streams.registry import Domain

DOMAIN = Domain(
    name="conversations", catalog=CATALOG, settings=ConversationsSettings, policy=POLICY,
    folder=conversation_folder, state_table="sessions", state_codec=CODEC,
    effects=build_effects,
    read_models=(SESSIONS,), migrations=read_side.MIGRATIONS, console_page=read_side.CONSOLE_PAGE,
    routers=lambda: (webhook_router(), query_router()),
)
