"""Steps read-model rows: each execution, each budget scope per local day (with roll-ups), each tenant's settings."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import msgspec

from agents.steps.budgets import BudgetState
from agents.steps.executions import ExecutionState
from projections.readmodel import ReadModel
from schemas.steps import execution_stream_id

_json = msgspec.json.Encoder(order="deterministic")


def execution_rows(state: object) -> Iterator[tuple]:
    """The steps_executions row of an execution state."""
    if not isinstance(state, ExecutionState):
        return
    steps = [msgspec.structs.asdict(s) for s in state.steps]
    yield (
        execution_stream_id(state.tenant_id, state.execution_id), state.tenant_id, state.execution_id,
        state.agent_id, state.user_id, state.status, state.started_at, state.completed_at, state.error,
        state.limit.tokens, state.limit.usd, None if state.flags is None else _json.encode(state.flags).decode(),
        _json.encode(steps).decode(), _json.encode(state.metrics).decode(),
    )


def budget_rows(state: object) -> Iterator[tuple]:
    """One steps_budget_days row per scope, subject and day of a budget state."""
    if not isinstance(state, BudgetState):
        return
    for day, uses in state.days.items():
        for key, use in uses.items():
            scope, _, subject = key.partition(":")
            yield (f"{state.tenant_id}:{day}:{key}", state.tenant_id, date.fromisoformat(day), scope, subject,
                   use.limit_tokens, use.limit_usd, use.used_tokens, use.used_usd, use.reserved_tokens,
                   use.reserved_usd, use.steps, use.rejected, use.tokens_saved, use.usd_saved)


def tenant_rows(state: object) -> Iterator[tuple]:
    """The steps_tenants row of a budget state: flags, timezone and limits as set."""
    if not isinstance(state, BudgetState):
        return
    limits = {key: msgspec.structs.asdict(limit) for key, limit in state.limits.items()}
    yield (state.tenant_id, None if state.flags is None else _json.encode(state.flags).decode(), state.timezone,
           _json.encode(limits).decode(), len(state.reservations), len(state.executions))


EXECUTIONS = ReadModel(
    table="steps_executions",
    columns=(("stream_id", "text"), ("tenant_id", "text"), ("execution_id", "text"), ("agent_id", "text"),
             ("user_id", "text"), ("status", "text"), ("started_at", "timestamptz"), ("completed_at", "timestamptz"),
             ("error", "text"), ("token_budget", "bigint"), ("usd_budget", "double precision"), ("flags", "jsonb"),
             ("steps", "jsonb"), ("metrics", "jsonb")),
    rows=execution_rows,
)

BUDGET_DAYS = ReadModel(
    table="steps_budget_days",
    columns=(("row_key", "text"), ("tenant_id", "text"), ("day", "date"), ("scope", "text"), ("subject", "text"),
             ("limit_tokens", "bigint"), ("limit_usd", "double precision"), ("used_tokens", "bigint"),
             ("used_usd", "double precision"), ("reserved_tokens", "bigint"), ("reserved_usd", "double precision"),
             ("steps", "integer"), ("rejected", "integer"), ("tokens_saved", "bigint"),
             ("usd_saved", "double precision")),
    rows=budget_rows,
)

TENANTS = ReadModel(
    table="steps_tenants",
    columns=(("tenant_id", "text"), ("flags", "jsonb"), ("timezone", "text"), ("limits", "jsonb"),
             ("reservations", "integer"), ("open_executions", "integer")),
    rows=tenant_rows,
)
