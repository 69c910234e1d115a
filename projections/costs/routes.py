"""The cost ledger route: what LLM calls cost, for the caller's tenant."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from projections.costs.views import CostReport, GroupBy, cost_report
from projections.routes import Pool
from streams.auth import Tenant


def query_router() -> APIRouter:
    """GET /v1/costs."""
    router = APIRouter(tags=["costs"], responses={401: {"description": "Missing or invalid bearer token"}})

    @router.get("/v1/costs", response_model=CostReport, summary="LLM cost ledger")
    async def costs(
        tenant: Tenant,
        pool: Pool,
        group_by: Annotated[GroupBy, Query(description="Sum per day, domain, model, agent or user.")] = "day",
        since: Annotated[date | None, Query(description="First UTC day included.")] = None,
        until: Annotated[date | None, Query(description="Last UTC day included.")] = None,
        split_by: Annotated[GroupBy | None, Query(description="Split each group again (e.g. day by model).")] = None,
    ) -> CostReport:
        """Calls, tokens (cache reads and writes apart) and USD of every LLM call Baton made."""
        if since and until and since > until:
            raise HTTPException(422, "since: must not be after until")
        if split_by == group_by:
            raise HTTPException(422, "split_by: must differ from group_by")
        return await cost_report(pool, tenant, group_by, since, until, split_by)

    return router
