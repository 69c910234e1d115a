"""Steps queries: executions with their steps and metrics, budgets per scope and day, roll-ups, the audit trail."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from projections.connections import Source, connection

BudgetScope = Literal["user", "agent", "tenant"]
Dimension = Literal["user", "agent", "model"]

# Audit actions and the event types that record them.
AUDIT_ACTIONS: dict[str, str] = {
    "started": "steps.execution.started",
    "initialised": "steps.execution.initialised",
    "step_executed": "steps.step.executed",
    "step_failed": "steps.step.failed",
    "step_rejected": "steps.step.rejected",
    "step_degraded": "steps.step.degraded",
    "budget_exceeded": "steps.budget.exceeded",
    "completed": "steps.execution.completed",
    "cancelled": "steps.execution.cancelled",
    "flags_changed": "steps.flags.updated",
    "budget_changed": "steps.budget.updated",
}
_ACTION_OF = {event_type: action for action, event_type in AUDIT_ACTIONS.items()}


class Execution(BaseModel):
    execution_id: str
    agent_id: str
    user_id: str
    status: str
    started_at: datetime | None
    completed_at: datetime | None
    error: str | None
    token_budget: int | None
    usd_budget: float | None
    flags: dict[str, Any] | None
    steps: list[dict[str, Any]]
    metrics: dict[str, Any]


class Budget(BaseModel):
    scope: BudgetScope
    id: str
    date: date
    limit_tokens: int | None
    limit_usd: float | None
    used_tokens: int
    used_usd: float
    reserved_tokens: int
    reserved_usd: float
    remaining_tokens: int | None
    remaining_usd: float | None
    steps: int
    rejected: int
    tokens_saved: int
    usd_saved: float


class Rollup(BaseModel):
    subject: str
    steps: int
    used_tokens: int
    used_usd: float
    tokens_saved: int
    usd_saved: float
    rejected: int


class AuditEntry(BaseModel):
    event_id: str
    at: datetime
    action: str
    entity: str
    actor: str = Field(description="Who made the change: the subject of the token whose request led to it "
                                   "(`service:<subject>` for a service token), or the producer that sent it.")
    recorded_by: str = Field(description="The part of Baton (or the producer) that wrote this record.")
    details: dict[str, Any]


class TenantSettings(BaseModel):
    flags: dict[str, Any] | None
    timezone: str | None
    limits: dict[str, dict[str, Any]]


_EXECUTION_COLUMNS = ("execution_id", "agent_id", "user_id", "status", "started_at", "completed_at", "error",
                      "token_budget", "usd_budget", "flags", "steps", "metrics")


async def get_execution(source: Source, tenant_id: str, execution_id: str) -> Execution | None:
    """One execution of the tenant with its steps (decisions, outputs) and metrics."""
    async with connection(source) as conn:
        cur = await conn.execute(f"SELECT {', '.join(_EXECUTION_COLUMNS)} FROM steps_executions"
                                 " WHERE tenant_id = %s AND execution_id = %s", (tenant_id, execution_id))
        row = await cur.fetchone()
    return None if row is None else Execution(**dict(zip(_EXECUTION_COLUMNS, row, strict=True)))


async def list_executions(source: Source, tenant_id: str, limit: int = 100) -> list[Execution]:
    """The tenant's executions, most recently started first."""
    async with connection(source) as conn:
        cur = await conn.execute(f"SELECT {', '.join(_EXECUTION_COLUMNS)} FROM steps_executions WHERE tenant_id = %s"
                                 " ORDER BY started_at DESC NULLS LAST, execution_id LIMIT %s", (tenant_id, limit))
        rows = await cur.fetchall()
    return [Execution(**dict(zip(_EXECUTION_COLUMNS, row, strict=True))) for row in rows]


async def tenant_settings(source: Source, tenant_id: str) -> TenantSettings | None:
    """Flags, timezone and limits as the tenant set them (None before any budget event)."""
    async with connection(source) as conn:
        cur = await conn.execute("SELECT flags, timezone, limits FROM steps_tenants WHERE tenant_id = %s", (tenant_id,))
        row = await cur.fetchone()
    return None if row is None else TenantSettings(flags=row[0], timezone=row[1], limits=row[2])


async def get_budget(source: Source, tenant_id: str, scope: BudgetScope, subject: str, day: date,
                     limit: tuple[int | None, float | None]) -> Budget:
    """A scope's use on one local day; `limit` is what applies when the day has no use yet."""
    async with connection(source) as conn:
        cur = await conn.execute(
            "SELECT limit_tokens, limit_usd, used_tokens, used_usd, reserved_tokens, reserved_usd, steps, rejected,"
            " tokens_saved, usd_saved FROM steps_budget_days"
            " WHERE tenant_id = %s AND scope = %s AND subject = %s AND day = %s", (tenant_id, scope, subject, day))
        row = await cur.fetchone()
    values = row or (*limit, 0, 0.0, 0, 0.0, 0, 0, 0, 0.0)
    limit_tokens, limit_usd, used_tokens, used_usd, reserved_tokens, reserved_usd = values[:6]
    return Budget(
        scope=scope, id=subject, date=day, limit_tokens=limit_tokens, limit_usd=limit_usd, used_tokens=used_tokens,
        used_usd=used_usd, reserved_tokens=reserved_tokens, reserved_usd=reserved_usd,
        remaining_tokens=None if limit_tokens is None else limit_tokens - used_tokens - reserved_tokens,
        remaining_usd=None if limit_usd is None else round(limit_usd - used_usd - reserved_usd, 9),
        steps=values[6], rejected=values[7], tokens_saved=values[8], usd_saved=values[9],
    )


async def rollups(source: Source, tenant_id: str, dimension: Dimension, day: date) -> list[Rollup]:
    """The day's totals per user, agent or model, most used first."""
    async with connection(source) as conn:
        cur = await conn.execute(
            "SELECT subject, steps, used_tokens, used_usd, tokens_saved, usd_saved, rejected FROM steps_budget_days"
            " WHERE tenant_id = %s AND scope = %s AND day = %s ORDER BY used_tokens DESC, subject",
            (tenant_id, dimension, day))
        rows = await cur.fetchall()
    return [Rollup(subject=r[0], steps=r[1], used_tokens=r[2], used_usd=r[3], tokens_saved=r[4], usd_saved=r[5],
                   rejected=r[6]) for r in rows]


async def audit(source: Source, tenant_id: str, *, entity: str | None, action: str | None,
                since: datetime | None, limit: int) -> list[AuditEntry]:
    """Audit records oldest first: executions, steps, refusals, flag and budget changes (old and new values).

    `entity` is an execution id, `flags`, or `scope:subject` of a budget (e.g. `user:u1`, `timezone:acme`).
    """
    types = [AUDIT_ACTIONS[action]] if action else list(AUDIT_ACTIONS.values())
    async with connection(source) as conn:
        cur = await conn.execute(
            # Who made a change: a flag or budget change names the actor of the request it applied; any other
            # record the actor of the request that began its chain (the event its correlation id names).
            "SELECT e.event_id, e.occurred_at, e.type, e.payload, e.actor,"
            "       coalesce(nullif(e.payload->>'actor', ''), root.actor, e.actor)"
            " FROM events e LEFT JOIN events root ON root.event_id = e.correlation_id AND root.tenant_id = e.tenant_id"
            " WHERE e.tenant_id = %s AND e.type = ANY(%s)"
            " AND (%s::text IS NULL OR e.payload->>'execution_id' = %s"
            "      OR (e.payload->>'scope') || ':' || (e.payload->>'subject') = %s"
            "      OR (%s = 'flags' AND e.type = 'steps.flags.updated'))"
            " AND (%s::timestamptz IS NULL OR e.occurred_at >= %s)"
            # Emissions of a fold carry their cause's time: ties are ordered as the lifecycle goes.
            " ORDER BY e.occurred_at, array_position(%s::text[], e.type), e.event_id LIMIT %s",
            (tenant_id, types, entity, entity, entity, entity, since, since, list(AUDIT_ACTIONS.values()), limit))
        rows = await cur.fetchall()
    return [AuditEntry(event_id=str(r[0]), at=r[1], action=_ACTION_OF[r[2]], entity=_entity(r[2], r[3]),
                       actor=r[5], recorded_by=r[4], details=r[3]) for r in rows]


def _entity(event_type: str, payload: dict[str, Any]) -> str:
    if "execution_id" in payload and event_type != "steps.budget.exceeded":
        step = payload.get("step_id")
        return f"execution:{payload['execution_id']}" + (f"/step:{step}" if step else "")
    if event_type == "steps.flags.updated":
        return "flags"
    if event_type == "steps.budget.exceeded":
        return f"{payload['scope']}:{payload['subject']}"
    return f"{payload.get('scope')}:{payload.get('subject')}"
