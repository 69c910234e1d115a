"""The conversations query routes: conversations and their statistics, scoped to the caller's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from projections.connections import InvalidCursor
from projections.conversations.views import (
    Conversation,
    ConversationPage,
    ConversationStats,
    DailyLaneCount,
    Lane,
    conversation_stats,
    daily_lanes,
    get_conversation,
    list_conversations,
)
from projections.routes import Pool
from streams.auth import Tenant


def query_router() -> APIRouter:
    """Routes over the read models; the tenant always comes from the bearer token."""
    router = APIRouter(tags=["conversations"], responses={401: {"description": "Missing or invalid bearer token"}})

    @router.get("/v1/conversations", response_model=ConversationPage, summary="List conversations")
    async def conversations(
        tenant: Tenant,
        pool: Pool,
        lane: Annotated[Lane | None, Query(description="Only conversations whose latest session is in this lane.")] = None,
        active: Annotated[bool | None, Query(description="Only conversations whose latest session has (not) expired.")] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
    ) -> ConversationPage:
        """Each contact's latest session, most recently active first."""
        try:
            return await list_conversations(pool, tenant, lane=lane, active=active, limit=limit, cursor=cursor)
        except InvalidCursor as exc:
            raise HTTPException(422, str(exc)) from None

    @router.get(
        "/v1/conversations/{contact}", response_model=Conversation, summary="Get a conversation",
        responses={404: {"description": "The tenant has no conversation with this contact"}},
    )
    async def conversation(contact: str, tenant: Tenant, pool: Pool) -> Conversation:
        """The contact's latest session with dialogue and lane history, plus its earlier session ids."""
        found = await get_conversation(pool, tenant, contact)
        if found is None:
            raise HTTPException(404, f"no conversation with {contact}")
        return found

    @router.get("/v1/stats/conversations", response_model=ConversationStats, summary="Conversation statistics")
    async def stats(tenant: Tenant, pool: Pool) -> ConversationStats:
        """Lane distribution, orchestrated replies, reply success rate and duplicates dropped."""
        return await conversation_stats(pool, tenant)

    @router.get("/v1/stats/conversations/daily", response_model=list[DailyLaneCount],
                summary="Messages per day by lane")
    async def daily(tenant: Tenant, pool: Pool, days: Annotated[int, Query(ge=1, le=366)] = 30) -> list[DailyLaneCount]:
        """Routed messages per UTC day and lane, over the last `days` days up to the newest routing."""
        return await daily_lanes(pool, tenant, days)

    return router
