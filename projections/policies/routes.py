"""The policy route: the policy in force for the caller's tenant and how it came to be."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from projections.routes import Pool
from schemas.policies import DEFAULT_SCOPE
from streams.auth import Tenant


class Adoption(BaseModel):
    scope: str
    policy: str
    previous: str | None
    sections: dict[str, Any]
    reason: str
    actor: str
    adopted_at: datetime
    in_force: bool


class Policies(BaseModel):
    """The policy in force for the tenant (its own, else the default "*"; none before any adoption: the built-in
    defaults), and every adoption of either scope, oldest first."""

    in_force: Adoption | None
    adoptions: list[Adoption]


def query_router() -> APIRouter:
    """GET /v1/policies."""
    router = APIRouter(tags=["policies"], responses={401: {"description": "Missing or invalid bearer token"}})

    @router.get("/v1/policies", response_model=Policies, summary="The tenant's policy and its history")
    async def policies(tenant: Tenant, pool: Pool) -> Policies:
        async with pool.connection() as conn, conn.cursor() as cur:
            await cur.execute(
                "SELECT scope, policy, previous, sections, reason, actor, adopted_at, in_force FROM policy_adoptions"
                " WHERE scope IN (%s, %s) ORDER BY adopted_at, scope, seq", (tenant, DEFAULT_SCOPE))
            names = [c.name for c in cur.description]
            rows = [Adoption(**dict(zip(names, row, strict=True))) for row in await cur.fetchall()]
        current = {a.scope: a for a in rows if a.in_force}
        return Policies(in_force=current.get(tenant) or current.get(DEFAULT_SCOPE), adoptions=rows)

    return router
