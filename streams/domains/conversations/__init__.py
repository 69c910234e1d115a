"""The conversations domain, declared for the registry: WhatsApp sessions, routing and replies."""

from __future__ import annotations

from agents.conversations.config import (
    ConversationsSettings,
    build_effects,
    conversation_folder,
)
from agents.conversations.fold import CODEC
from projections import conversations as read_side
from projections.conversations.readmodels import SESSIONS
from schemas.conversations import CATALOG
from streams.registry import Domain


def _routers() -> tuple:
    from projections.conversations.routes import query_router
    from streams.domains.conversations.webhook import webhook_router

    return (webhook_router(), query_router())


DOMAIN = Domain(
    name="conversations",
    catalog=CATALOG,
    folder=conversation_folder,
    state_table="sessions",
    state_codec=CODEC,
    read_models=(SESSIONS,),
    migrations=read_side.MIGRATIONS,
    routers=_routers,
    effects=build_effects,
    console_page=read_side.CONSOLE_PAGE,
    settings=ConversationsSettings,
)
