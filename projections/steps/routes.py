"""The steps query routes: executions, budgets per scope and day, roll-ups and the audit trail (read-only;
the command routes are in streams.domains.steps.commands)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from agents.steps.budgets import local_day
from agents.steps.config import StepsSettings
from projections.routes import Pool
from projections.steps.views import (
    AUDIT_ACTIONS,
    AuditEntry,
    Budget,
    BudgetScope,
    Dimension,
    Execution,
    Rollup,
    audit,
    get_budget,
    get_execution,
    list_executions,
    rollups,
    tenant_settings,
)
from streams.auth import Tenant
from streams.settings import loaded


def query_router() -> APIRouter:
    """GET /v1/executions, /v1/executions/{execution_id}, /v1/budgets, /v1/rollups, /v1/audit."""
    router = APIRouter(tags=["steps"], responses={401: {"description": "Missing or invalid bearer token"}})

    @router.get("/v1/executions", response_model=list[Execution], summary="List executions")
    async def executions(tenant: Tenant, pool: Pool,
                         limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[Execution]:
        """The tenant's executions with their steps and metrics, most recently started first."""
        return await list_executions(pool, tenant, limit)

    @router.get("/v1/executions/{execution_id}", response_model=Execution, summary="Get an execution",
                responses={404: {"description": "No such execution for this tenant"}})
    async def execution(execution_id: str, tenant: Tenant, pool: Pool) -> Execution:
        """Steps with their decisions, outputs and savings, and the execution's metrics."""
        found = await get_execution(pool, tenant, execution_id)
        if found is None:
            raise HTTPException(404, f"no execution {execution_id}")
        return found

    @router.get("/v1/budgets", response_model=Budget, summary="A budget's use on one day")
    async def budget(
        tenant: Tenant, pool: Pool,
        scope: Annotated[BudgetScope, Query(description="user, agent or tenant.")],
        id: Annotated[str | None, Query(description="The user or agent id (the tenant's own for tenant).")] = None,  # noqa: A002
        day: Annotated[date | None, Query(alias="date", description="Tenant-local day; default today.")] = None,
    ) -> Budget:
        """Limit, used, reserved and remaining tokens and USD of a scope on a tenant-local day."""
        if scope != "tenant" and not id:
            raise HTTPException(422, "id: needed for scope user or agent")
        subject = tenant if scope == "tenant" else str(id)
        current = await tenant_settings(pool, tenant)
        config = loaded(StepsSettings)
        timezone = (current.timezone if current else None) or config.default_timezone
        limits = {**{k: v.model_dump() for k, v in config.limits.items()}, **(current.limits if current else {})}
        limit = limits.get(f"{scope}:{subject}") or limits.get(f"{scope}:*") or {}
        day = day or date.fromisoformat(local_day(datetime.now(UTC), timezone))
        return await get_budget(pool, tenant, scope, subject, day, (limit.get("tokens"), limit.get("usd")))

    @router.get("/v1/rollups", response_model=list[Rollup], summary="Daily roll-up per user, agent or model")
    async def daily(tenant: Tenant, pool: Pool,
                    by: Annotated[Dimension, Query(description="user, agent or model.")],
                    day: Annotated[date, Query(alias="date", description="Tenant-local day.")]) -> list[Rollup]:
        """Steps, tokens and USD used and saved on a day."""
        return await rollups(pool, tenant, by, day)

    @router.get("/v1/audit", response_model=list[AuditEntry], summary="Audit trail")
    async def audit_trail(
        tenant: Tenant, pool: Pool,
        entity: Annotated[str | None, Query(description="Execution id, `flags`, or `scope:id` (e.g. user:u1).")] = None,
        action: Annotated[str | None, Query(description=f"One of {', '.join(AUDIT_ACTIONS)}.")] = None,
        since: Annotated[datetime | None, Query(description="Only records at or after this instant.")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[AuditEntry]:
        """Initialised, step executed, step failed, budget exceeded, completed, flag and budget changes."""
        if action is not None and action not in AUDIT_ACTIONS:
            raise HTTPException(422, f"action: must be one of {sorted(AUDIT_ACTIONS)}")
        if since is not None and since.tzinfo is None:
            raise HTTPException(422, "since: needs a timezone offset")
        return await audit(pool, tenant, entity=entity, action=action, since=since, limit=limit)

    return router
