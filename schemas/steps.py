"""Step-execution events: executions of agent steps, budget reservations across every scope, savings, flags.

Two kinds of stream carry them. `execution:{tenant}:{execution_id}` is the single writer of one execution (its
steps, their dependencies and outputs, its metrics). `budget:{tenant}` is the single writer of every budget scope
of a tenant (each execution's, each user's and agent's per local day, the tenant's per day) and of its flags, so
one fold step checks and reserves an estimate in all of them at once: no lock, no overshoot.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import msgspec

from schemas.catalog import EventCatalog
from schemas.codec import register_catalog
from schemas.envelope import Payload

Intent = Literal["extract", "summarize", "generate", "validate", "send", "transform", "conditional",
                 "aggregate", "filter", "enrich"]
INTENTS: tuple[Intent, ...] = get_args(Intent)
MODEL_INTENTS: frozenset[str] = frozenset({"extract", "summarize", "generate", "enrich"})
Scope = Literal["step", "execution", "user", "agent", "tenant"]
DAILY_SCOPES: tuple[str, ...] = ("user", "agent", "tenant")

Id = msgspec.Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:@-]+$")


def execution_stream_id(tenant_id: str, execution_id: str) -> str:
    """Stream id of one execution: its steps, outputs and metrics."""
    return f"execution:{tenant_id}:{execution_id}"


def budget_stream_id(tenant_id: str) -> str:
    """Stream id of a tenant's budgets and flags: the one writer of every scope a step's check needs."""
    return f"budget:{tenant_id}"


class Flags(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's orchestration switches."""

    orchestration: bool = True
    compression: bool = True
    routing: bool = True
    caching: bool = True
    # When the budget check cannot be made (no token count, unknown scope): proceed (open) or reject (closed).
    fail_open: bool = False
    # Over a USD limit, run on the cheapest model that fits instead of rejecting.
    degrade_over_budget: bool = False


class Limit(msgspec.Struct, frozen=True, kw_only=True):
    """A budget limit in tokens and in USD; None is unlimited."""

    tokens: int | None = None
    usd: float | None = None


class StepSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One step as an agent declares it: its intent, literal input, handler spec, budget and dependencies."""

    step_id: str
    intent: Intent
    input: Any = None
    spec: dict[str, Any] = {}
    token_budget: int | None = None
    depends_on: list[str] = []


class ExecutionStarted(Payload, frozen=True, kw_only=True):
    """An agent started an execution of steps; steps run when their dependencies have executed."""

    execution_id: str
    agent_id: str
    user_id: str
    steps: list[StepSpec]
    token_budget: int | None = None
    usd_budget: float | None = None
    # Shared context every model step sees first: the stable, cacheable prefix.
    context: str = ""
    # The workflow task a failed step's bug is filed under (default: steps-{agent_id}).
    task_code: str | None = None


class ExecutionCancelled(Payload, frozen=True, kw_only=True):
    """The agent cancelled an execution: no further step is requested."""

    execution_id: str
    reason: str = "cancelled"


class ExecutionOpened(Payload, frozen=True, kw_only=True):
    """The execution asks its tenant's budget stream to open its scope (limits) and give it the flags."""

    execution_id: str
    agent_id: str
    user_id: str
    token_budget: int | None = None
    usd_budget: float | None = None


class ExecutionInitialised(Payload, frozen=True, kw_only=True):
    """The budget stream opened the execution's scope; the flags in force for the whole execution."""

    execution_id: str
    flags: Flags
    limit: Limit


class StepRequested(Payload, frozen=True, kw_only=True):
    """A step whose dependencies have executed, with its resolved data; the runner estimates it."""

    execution_id: str
    step_id: str
    intent: Intent
    data: Any = None
    spec: dict[str, Any] = {}
    token_budget: int | None = None
    agent_id: str
    user_id: str
    context: str = ""
    flags: Flags = Flags()


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """How a model step will call: prompt, model, token counts (the model's own) and the cost bound."""

    model: str
    counterfactual_model: str
    system: str
    prompt: str
    max_tokens: int
    cache_prefix: bool = False
    # Input tokens counted by the model's token-counting endpoint.
    raw_tokens_counterfactual: int = 0
    raw_tokens_routed: int = 0
    compressed_tokens: int = 0
    compression: list[str] = []


class Alternative(msgspec.Struct, frozen=True, kw_only=True):
    """A cheaper model the step may run on when its plan's cost does not fit."""

    model: str
    usd: float


class StepEstimated(Payload, frozen=True, kw_only=True):
    """The runner's upper bound of what a step can use (tokens, USD), for the budget check."""

    execution_id: str
    step_id: str
    intent: Intent
    agent_id: str
    user_id: str
    tokens: int = 0
    usd: float = 0.0
    token_budget: int | None = None
    plan: Plan | None = None
    data: Any = None
    spec: dict[str, Any] = {}
    alternatives: list[Alternative] = []
    # Set when no token count could be made: the bound is the prompt's UTF-8 bytes (fail-open only).
    estimate_unavailable: str | None = None


class ScopeUse(msgspec.Struct, frozen=True, kw_only=True):
    """One scope's numbers at a decision."""

    scope: Scope
    subject: str
    limit_tokens: int | None = None
    limit_usd: float | None = None
    used_tokens: int = 0
    used_usd: float = 0.0
    reserved_tokens: int = 0
    reserved_usd: float = 0.0


class StepApproved(Payload, frozen=True, kw_only=True):
    """The estimate fit every scope and is reserved in all of them; the runner executes the step."""

    execution_id: str
    step_id: str
    intent: Intent
    agent_id: str
    user_id: str
    day: str
    reserved_tokens: int
    reserved_usd: float
    plan: Plan | None = None
    data: Any = None
    spec: dict[str, Any] = {}
    scopes: list[ScopeUse] = []
    enforced: bool = True
    flags: Flags = Flags()
    tz_version: str = ""


class StepRejected(Payload, frozen=True, kw_only=True):
    """The estimate did not fit a scope (or no check could be made, fail-closed); nothing was reserved."""

    execution_id: str
    step_id: str
    scope: Scope
    reason: str
    estimate_tokens: int = 0
    estimate_usd: float = 0.0
    scopes: list[ScopeUse] = []


class BudgetExceeded(Payload, frozen=True, kw_only=True):
    """A step was refused by one scope: the audit record of the refusal with the numbers."""

    execution_id: str
    step_id: str
    scope: Scope
    subject: str
    day: str
    estimate_tokens: int
    estimate_usd: float
    limit_tokens: int | None = None
    limit_usd: float | None = None
    used_tokens: int = 0
    used_usd: float = 0.0
    reserved_tokens: int = 0
    reserved_usd: float = 0.0


class Savings(msgspec.Struct, frozen=True, kw_only=True):
    """What one lever saved against the counterfactual (the unrouted, uncompressed, uncached call)."""

    tokens: int = 0
    usd: float = 0.0


class StepExecuted(Payload, frozen=True, kw_only=True):
    """A step ran: its output, model, tokens from the usage fields, savings per lever, cost and latency."""

    execution_id: str
    step_id: str
    intent: Intent
    output: Any = None
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    counterfactual_tokens: int = 0
    counterfactual_usd: float = 0.0
    compression: Savings = Savings()
    routing: Savings = Savings()
    caching: Savings = Savings()
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    degraded: bool = False
    # When degraded: the fallback it ran on and why (the step.degraded event records the same).
    fallback: str | None = None
    degraded_reason: str | None = None


class StepFailed(Payload, frozen=True, kw_only=True):
    """A step failed (its handler raised, timed out, or its outcome is unknown); its reservation ends."""

    execution_id: str
    step_id: str
    intent: Intent
    error: str
    stack: str = ""
    timed_out: bool = False
    # The worker stopped mid-step: it may have used its whole reservation, which is then charged, not released.
    outcome_unknown: bool = False
    file: str | None = None
    line: int | None = None


class StepDegraded(Payload, frozen=True, kw_only=True):
    """A step ran on a fallback (deterministic path, cheaper model, unchecked budget) and why."""

    execution_id: str
    step_id: str
    fallback: str
    reason: str


class StepSkipped(Payload, frozen=True, kw_only=True):
    """A step will not run: a dependency did not execute, a condition took the other branch, or cancellation."""

    execution_id: str
    step_id: str
    reason: str


class ReservationSettled(Payload, frozen=True, kw_only=True):
    """A reservation ended: actual use charged (reconciled) or nothing charged (released)."""

    execution_id: str
    step_id: str
    day: str
    outcome: Literal["executed", "failed", "timed_out", "unknown", "expired"]
    user_id: str = ""
    agent_id: str = ""
    used_tokens: int = 0
    used_usd: float = 0.0
    model: str | None = None
    tokens_saved: int = 0
    usd_saved: float = 0.0


class ExecutionCompleted(Payload, frozen=True, kw_only=True):
    """Every step of an execution is done; its metrics."""

    execution_id: str
    status: Literal["succeeded", "failed", "cancelled"]
    metrics: dict[str, Any] = {}


class ExecutionClosed(Payload, frozen=True, kw_only=True):
    """The execution is over: its budget scope is dropped from the tenant's budget state."""

    execution_id: str


class BudgetTick(Payload, frozen=True, kw_only=True):
    """Event time for the tenant's budget stream: reservations past their deadline expire (released)."""

    at_note: str = ""


class BudgetSet(Payload, frozen=True, kw_only=True):
    """A limit per scope (`subject` "*" is the default for every user, agent or execution); or the timezone."""

    scope: Literal["execution", "user", "agent", "tenant"] | None = None
    subject: str = "*"
    limit: Limit = Limit()
    timezone: str | None = None


class BudgetUpdated(Payload, frozen=True, kw_only=True):
    """A budget change as applied: old and new values, and who asked for it (the actor of the change's event)."""

    scope: str
    subject: str
    old: Limit | None = None
    new: Limit | None = None
    old_timezone: str | None = None
    new_timezone: str | None = None
    actor: str = ""


class FlagsSet(Payload, frozen=True, kw_only=True):
    """New flag values for a tenant (unset fields keep their value)."""

    orchestration: bool | None = None
    compression: bool | None = None
    routing: bool | None = None
    caching: bool | None = None
    fail_open: bool | None = None
    degrade_over_budget: bool | None = None


class FlagsUpdated(Payload, frozen=True, kw_only=True):
    """A flag change as applied: old and new values, and who asked for it (the actor of the change's event)."""

    old: Flags
    new: Flags
    actor: str = ""


_BUDGET_STREAM = (ExecutionOpened, StepEstimated, ReservationSettled, ExecutionClosed, BudgetTick, BudgetSet,
                  BudgetUpdated, FlagsSet, FlagsUpdated, BudgetExceeded)

STEPS_EVENTS: dict[str, type[Payload]] = {
    "steps.execution.started": ExecutionStarted,
    "steps.execution.cancelled": ExecutionCancelled,
    "steps.execution.opened": ExecutionOpened,
    "steps.execution.initialised": ExecutionInitialised,
    "steps.step.requested": StepRequested,
    "steps.step.estimated": StepEstimated,
    "steps.step.approved": StepApproved,
    "steps.step.rejected": StepRejected,
    "steps.budget.exceeded": BudgetExceeded,
    "steps.step.executed": StepExecuted,
    "steps.step.failed": StepFailed,
    "steps.step.degraded": StepDegraded,
    "steps.step.skipped": StepSkipped,
    "steps.reservation.settled": ReservationSettled,
    "steps.execution.completed": ExecutionCompleted,
    "steps.execution.closed": ExecutionClosed,
    "steps.budget.ticked": BudgetTick,
    "steps.budget.set": BudgetSet,
    "steps.budget.updated": BudgetUpdated,
    "steps.flags.set": FlagsSet,
    "steps.flags.updated": FlagsUpdated,
}

STEPS_INGESTIBLE: frozenset[str] = frozenset({
    "steps.execution.started", "steps.execution.cancelled", "steps.budget.ticked", "steps.budget.set",
    "steps.flags.set",
})


def _stream_id(tenant_id: str, payload: Payload) -> str:
    if isinstance(payload, _BUDGET_STREAM):
        return budget_stream_id(tenant_id)
    return execution_stream_id(tenant_id, payload.execution_id)  # type: ignore[attr-defined]


CATALOG = register_catalog(EventCatalog(
    domain="steps",
    events=STEPS_EVENTS,
    ingestible=STEPS_INGESTIBLE,
    stream_id=_stream_id,
))


def graph_error(steps: list[StepSpec]) -> str | None:
    """Why a list of steps is not a valid execution (naming the field), or None."""
    if not steps:
        return "steps: at least one step is needed"
    seen: dict[str, int] = {}
    for i, step in enumerate(steps):
        if not step.step_id or len(step.step_id) > 100 or not all(c.isalnum() or c in "_-." for c in step.step_id):
            return f"steps[{i}].step_id: use 1-100 letters, digits, '_', '-' or '.'"
        if step.step_id in seen:
            return f"steps[{i}].step_id: {step.step_id!r} is used twice"
        seen[step.step_id] = i
        if step.token_budget is not None and step.token_budget < 1:
            return f"steps[{i}].token_budget: must be at least 1"
    for i, step in enumerate(steps):
        for dep in step.depends_on:
            if dep not in seen:
                return f"steps[{i}].depends_on: unknown step {dep!r}"
    done: set[str] = set()
    pending = {s.step_id: set(s.depends_on) for s in steps}
    while pending:
        ready = [sid for sid, deps in pending.items() if deps <= done]
        if not ready:
            return f"steps: dependency cycle among {sorted(pending)}"
        done.update(ready)
        for sid in ready:
            del pending[sid]
    return None
