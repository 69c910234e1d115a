"""The conversations domain, declared for the registry: WhatsApp sessions, routing and replies."""

from __future__ import annotations

from agents.conversations import build_effects, conversation_folder
from agents.folds.conversations import decode_state, encode_state
from projections.migrations import CORE
from projections.writers.conversations import SESSIONS
from schemas.conversations import CATALOG
from streams.domains import Domain, StateCodec


def _routers() -> tuple:
    from projections.api.conversations import query_router
    from streams.whatsapp import webhook_router

    return (webhook_router(), query_router())


DOMAIN = Domain(
    name="conversations",
    catalog=CATALOG,
    folder=conversation_folder,
    state_table="sessions",
    state_codec=StateCodec(encode=encode_state, decode=decode_state),
    read_models=(SESSIONS,),
    migrations=CORE.parent / "conversations",
    routers=_routers,
    effects=build_effects,
    console_page=CORE.parent.parent / "console" / "pages" / "conversations.js",
)
