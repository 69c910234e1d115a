"""The tally query route: a counter's totals, for the caller's tenant (GET only)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from projections.connections import connection
from projections.routes import Pool
from streams.auth import Tenant


def query_router() -> APIRouter:
    """GET /v1/tallies/{counter}."""
    routes = APIRouter(tags=["tally"])

    @routes.get("/v1/tallies/{counter}")
    async def tally(counter: str, tenant: Tenant, pool: Pool) -> dict[str, int]:
        async with connection(pool) as conn:
            cur = await conn.execute("SELECT total, counts, milestones, announced FROM tally_counters"
                                     " WHERE tenant_id = %s AND counter = %s", (tenant, counter))
            row = await cur.fetchone()
        if row is None:
            raise HTTPException(404, f"no tally {counter}")
        return dict(zip(("total", "counts", "milestones", "announced"), row, strict=True))

    return routes
