"""The outbound query routes: the queue, a message with its decisions, budgets of a day, a user's activity."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from agents.outbound.config import OutboundSettings
from projections.outbound.views import (
    Activity,
    Budget,
    DailyDecisions,
    MessageDetail,
    Priority,
    Queue,
    Status,
    activity,
    budgets,
    daily_decisions,
    get_message,
    queue,
)
from projections.routes import Pool
from streams.auth import Tenant
from streams.settings import loaded


def query_router() -> APIRouter:
    """Routes over the outbound read models; the tenant always comes from the bearer token."""
    window = timedelta(minutes=loaded(OutboundSettings).active_window_minutes)
    router = APIRouter(tags=["outbound"], responses={401: {"description": "Missing or invalid bearer token"}})

    @router.get("/v1/outbound/queue", response_model=Queue, summary="The outbound queue")
    async def outbound_queue(
        tenant: Tenant, pool: Pool,
        user_id: Annotated[str | None, Query(description="Only this user's messages.")] = None,
        status: Annotated[Status | None, Query()] = None,
        priority: Annotated[Priority | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> Queue:
        """Counts by status and priority, and the messages in priority order, then oldest first."""
        return await queue(pool, tenant, user_id=user_id, status=status, priority=priority, limit=limit)

    @router.get("/v1/outbound/messages/{message_id}", response_model=MessageDetail, summary="A message and its decisions",
                responses={404: {"description": "No such message for this tenant"}})
    async def message(message_id: str, tenant: Tenant, pool: Pool) -> MessageDetail:
        """The message with every decision, its reason and inputs."""
        found = await get_message(pool, tenant, message_id)
        if found is None:
            raise HTTPException(404, f"no outbound message {message_id}")
        return found

    @router.get("/v1/outbound/budgets", response_model=list[Budget], summary="Budgets of a day")
    async def day_budgets(
        tenant: Tenant, pool: Pool,
        day: Annotated[date | None, Query(alias="date", description="A local date (default: today in UTC).")] = None,
    ) -> list[Budget]:
        """Per user: messages counted on that local date, the limit in force, and the last message time."""
        return await budgets(pool, tenant, day or datetime.now(UTC).date())

    @router.get("/v1/users/{user_id}/activity", response_model=Activity, summary="A user's activity",
                responses={404: {"description": "No such user for this tenant"}})
    async def user_activity(user_id: str, tenant: Tenant, pool: Pool) -> Activity:
        """Active when the user wrote within the active window (BATON_OUTBOUND_ACTIVE_WINDOW_MINUTES)."""
        found = await activity(pool, tenant, user_id, window)
        if found is None:
            raise HTTPException(404, f"no outbound user {user_id}")
        return found

    @router.get("/v1/outbound/decisions/daily", response_model=list[DailyDecisions],
                summary="Decisions and sends per day")
    async def decisions_per_day(tenant: Tenant, pool: Pool,
                                days: Annotated[int, Query(ge=1, le=366)] = 30) -> list[DailyDecisions]:
        """Approved, deferred, released, dropped (by reason) and sent messages per UTC day of event time."""
        return await daily_decisions(pool, tenant, days)

    return router
