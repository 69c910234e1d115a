"""The steps command routes: start an execution (optionally waiting for its projected result), set a budget
limit or the tenant's timezone, set orchestration flags; each validates, then publishes its event."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from agents.steps.config import StepsSettings
from agents.zones import zone
from projections.routes import Pool
from projections.steps.views import Execution, get_execution
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
from streams.auth import Caller, CallerDep
from streams.ingest import publish
from streams.settings import loaded

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


def command_router() -> APIRouter:
    """POST /v1/executions, PUT /v1/budgets, PUT /v1/flags."""
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
        deadline = time.monotonic() + loaded(StepsSettings).wait_timeout_s
        while time.monotonic() < deadline:
            found = await get_execution(pool, tenant, execution_id)
            if found is not None and found.status in TERMINAL:
                response.status_code = 200
                return found
            await asyncio.sleep(0.05)
        return Accepted(execution_id=execution_id, event_id=str(event.event_id), status="running")

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
