"""GET /v1/trace/{id}: the causal chain of events around any id, for the caller's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from projections.routes import Pool
from projections.trace.views import Trace, trace
from streams.auth import Tenant


def trace_router() -> APIRouter:
    """The trace route (every domain's events, from the archive)."""
    router = APIRouter(tags=["ops"], responses={401: {"description": "Missing or invalid bearer token"}})

    @router.get("/v1/trace/{ident}", response_model=Trace, summary="Trace an id across the log",
                responses={404: {"description": "No event of the tenant names this id"}})
    async def trace_route(ident: str, tenant: Tenant, pool: Pool,
                          limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> Trace:
        """Event id, correlation id, WhatsApp message id, task code, execution id, ...: its causal chain, oldest first."""
        found = await trace(pool, tenant, ident, limit)
        if not found.hops:
            raise HTTPException(404, f"no event names {ident!r}")
        return found

    return router
