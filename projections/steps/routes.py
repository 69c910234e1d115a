"""The steps routes: start and read executions, budgets and flags per tenant, roll-ups and the audit trail."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from agents.steps.config import StepsSettings
from agents.steps.fold import local_day
from agents.zones import zone
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
from schemas import new_event, source_event_id
from schemas.steps import (
    BudgetSet,
    ExecutionStarted,
    FlagsSet,
    Intent,
    Limit,
    StepSpec,
    graph_error,
)
from streams.auth import Caller, CallerDep, Tenant
from streams.ingest import publish

IdText = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:@-]+$")]


class StepIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step_id: IdText
    intent: Intent
    input: Any = None
    spec: dict[str, Any] = {}
    token_budget: int | None = Field(None, ge=1)
    depends_on: list[str] = []


class ExecutionIn(BaseModel):
    """An execution to start; a repeated execution_id is the same execution (the request is idempotent)."""

    model_config = ConfigDict(extra="forbid")

    execution_id: IdText | None = None
    agent_id: IdText
    user_id: IdText
    steps: list[StepIn] = Field(min_length=1, max_length=500)
    token_budget: int | None = Field(None, ge=0)
    usd_budget: float | None = Field(None, ge=0)
    context: str = Field("", max_length=200_000)
    task_code: str | None = Field(None, max_length=100)


class Accepted(BaseModel):
    execution_id: str
    event_id: str
    status: str = "accepted"


class BudgetIn(BaseModel):
    """A limit for a scope (`id` "*" sets the default for every user, agent or execution), and/or the timezone."""

    # A misspelt field would otherwise be dropped and the limit set to unlimited.
    model_config = ConfigDict(extra="forbid")

    scope: Literal["execution", "user", "agent", "tenant"] | None = None
    id: IdText = "*"
    tokens: int | None = Field(None, ge=0)
    usd: float | None = Field(None, ge=0)
    timezone: str | None = None


class FlagsIn(BaseModel):
    """Flags to change; a field that is no flag is refused (422), one left out or null keeps its value."""

    model_config = ConfigDict(extra="forbid")

    orchestration: bool | None = None
    compression: bool | None = None
    routing: bool | None = None
    caching: bool | None = None
    fail_open: bool | None = None
    degrade_over_budget: bool | None = None


class Queued(BaseModel):
    event_id: str
    status: str = "accepted"


TERMINAL = {"succeeded", "failed", "cancelled", "invalid"}


def steps_router() -> APIRouter:
    """POST/GET /v1/executions, GET/PUT /v1/budgets, PUT /v1/flags, GET /v1/audit, GET /v1/rollups."""
    router = APIRouter(tags=["steps"], responses={401: {"description": "Missing or invalid bearer token"}})

    @router.post("/v1/executions", status_code=202, summary="Start an execution of steps",
                 responses={200: {"model": Execution, "description": "With wait=true: the finished execution"}})
    async def start(body: ExecutionIn, request: Request, response: Response, caller: CallerDep, pool: Pool,
                    wait: Annotated[bool, Query(description="Answer with the result once it is projected.")] = False,
                    ) -> Accepted | Execution:
        """202 with the execution id; with `wait=true`, 200 with steps, outputs and metrics once finished."""
        steps = [StepSpec(step_id=s.step_id, intent=s.intent, input=s.input, spec=s.spec,
                          token_budget=s.token_budget, depends_on=s.depends_on) for s in body.steps]
        if (error := graph_error(steps)) is not None:
            raise HTTPException(422, error)
        tenant = caller.tenant_id
        execution_id = body.execution_id or uuid.uuid4().hex
        payload = ExecutionStarted(execution_id=execution_id, agent_id=body.agent_id, user_id=body.user_id,
                                   steps=steps, token_budget=body.token_budget, usd_budget=body.usd_budget,
                                   context=body.context, task_code=body.task_code)
        now = datetime.now(UTC)
        event = new_event(tenant, payload, event_id=source_event_id(tenant, "execution", execution_id),
                          occurred_at=now, recorded_at=now, actor=actor_of(caller))
        await publish(request.app.state.publisher, [event])
        accepted = Accepted(execution_id=execution_id, event_id=str(event.event_id))
        if not wait:
            return accepted
        deadline = time.monotonic() + StepsSettings().wait_timeout_s
        while time.monotonic() < deadline:
            found = await get_execution(pool, tenant, execution_id)
            if found is not None and found.status in TERMINAL:
                response.status_code = 200
                return found
            await asyncio.sleep(0.05)
        return Accepted(execution_id=execution_id, event_id=str(event.event_id), status="running")

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
        config = StepsSettings()
        timezone = (current.timezone if current else None) or config.default_timezone
        limits = {**{k: v.model_dump() for k, v in config.limits.items()}, **(current.limits if current else {})}
        limit = limits.get(f"{scope}:{subject}") or limits.get(f"{scope}:*") or {}
        day = day or date.fromisoformat(local_day(datetime.now(UTC), timezone))
        return await get_budget(pool, tenant, scope, subject, day, (limit.get("tokens"), limit.get("usd")))

    @router.put("/v1/budgets", status_code=202, response_model=Queued, summary="Set a budget limit or timezone")
    async def set_budget(body: BudgetIn, request: Request, caller: CallerDep) -> Queued:
        """Applied by the tenant's budget stream in order; the audit trail shows old and new values."""
        if body.scope is None and body.timezone is None:
            raise HTTPException(422, "scope: give a scope with its limit, or a timezone")
        if body.timezone is not None:
            try:
                zone(body.timezone)
            except ValueError as exc:
                raise HTTPException(422, f"timezone: {exc}") from None
        payload = BudgetSet(scope=body.scope, subject=body.id, limit=Limit(tokens=body.tokens, usd=body.usd),
                            timezone=body.timezone)
        return await _publish(request, caller, payload)

    @router.put("/v1/flags", status_code=202, response_model=Queued, summary="Set orchestration flags")
    async def set_flags(body: FlagsIn, request: Request, caller: CallerDep) -> Queued:
        """Orchestration, compression, routing, caching, fail-open and degrade-over-budget; unset fields stay.

        An unknown field is refused (422, naming it). A change that leaves every flag as it was records nothing;
        a running execution keeps the flags it started with, the change applies to executions started after it.
        """
        if all(value is None for value in body.model_dump().values()):
            raise HTTPException(422, f"give at least one flag: {', '.join(FlagsIn.model_fields)}")
        return await _publish(request, caller, FlagsSet(**body.model_dump()))

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


def actor_of(caller: Caller) -> str:
    """Who asks, as the log and the audit trail name them: the token's subject (`service:<subject>` for a service)."""
    return f"service:{caller.subject}" if caller.service else caller.subject


async def _publish(request: Request, caller: Caller, payload: Any) -> Queued:
    now = datetime.now(UTC)
    event = new_event(caller.tenant_id, payload, event_id=uuid.uuid4(), occurred_at=now, recorded_at=now,
                      actor=actor_of(caller))
    await publish(request.app.state.publisher, [event])
    return Queued(event_id=str(event.event_id))
