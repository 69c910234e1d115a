"""The steps fold's executions: each a DAG of steps, requested as their dependencies execute, with its metrics.

A step's outcome (approved, rejected, executed, failed, degraded, skipped) comes back as an event; the execution
requests the steps it unblocks, skips those that cannot run, completes when every step is done, and logs a failed
step as a bug when the workflow domain's events are registered.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from msgspec.structs import replace

from agents.batching import FoldState
from schemas import Envelope, UnknownEventType, registration
from schemas.steps import (
    ExecutionCancelled,
    ExecutionClosed,
    ExecutionCompleted,
    ExecutionInitialised,
    ExecutionOpened,
    ExecutionStarted,
    Flags,
    Limit,
    Savings,
    ScopeUse,
    StepApproved,
    StepDegraded,
    StepExecuted,
    StepFailed,
    StepRejected,
    StepRequested,
    StepSkipped,
    graph_error,
)

if TYPE_CHECKING:
    from agents.steps.fold import Emitter

TERMINAL = frozenset({"executed", "failed", "rejected", "skipped"})


class StepState(msgspec.Struct, kw_only=True):
    """One step of an execution, its decisions and outcome."""

    step_id: str
    intent: str
    input: Any = None
    spec: dict[str, Any] = {}
    token_budget: int | None = None
    depends_on: list[str] = []
    status: Literal["waiting", "requested", "approved", "executed", "failed", "rejected", "skipped"] = "waiting"
    output: Any = None
    model: str | None = None
    reserved_tokens: int = 0
    reserved_usd: float = 0.0
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
    error: str | None = None
    stack: str | None = None
    degraded: list[str] = []
    decision: str | None = None
    requested_at: datetime | None = None
    finished_at: datetime | None = None


class ExecutionState(FoldState, kw_only=True, tag="execution"):
    """One execution: its steps, flags, latest scope numbers and outcome."""

    tenant_id: str
    execution_id: str
    agent_id: str = ""
    user_id: str = ""
    context: str = ""
    task_code: str | None = None
    status: Literal["invalid", "opening", "running", "succeeded", "failed", "cancelled"] = "opening"
    started_at: datetime | None = None
    completed_at: datetime | None = None
    cancelled: bool = False
    error: str | None = None
    limit: Limit = Limit()
    flags: Flags | None = None
    steps: list[StepState] = []
    scopes: dict[str, ScopeUse] = {}
    metrics: dict[str, Any] = {}


def fold_execution(state: ExecutionState, envelope: Envelope, emit: Emitter) -> tuple[ExecutionState, list[Envelope]]:
    """Apply one event to its execution: start, initialise, cancel, or a step's outcome; then advance the DAG."""
    payload = envelope.payload
    at = envelope.occurred_at
    if isinstance(payload, ExecutionStarted):
        if state.started_at is not None:
            return state, []
        steps = [StepState(step_id=s.step_id, intent=s.intent, input=s.input, spec=s.spec,
                           token_budget=s.token_budget, depends_on=list(s.depends_on)) for s in payload.steps]
        state = replace(state, agent_id=payload.agent_id, user_id=payload.user_id, context=payload.context,
                        task_code=payload.task_code,
                        started_at=at, steps=steps, limit=Limit(tokens=payload.token_budget, usd=payload.usd_budget))
        if (error := graph_error(payload.steps)) is not None:
            state = replace(state, status="invalid", error=error, completed_at=at)
            emit(ExecutionCompleted(execution_id=state.execution_id, status="failed", metrics={"error": error}))
            return state, emit.out
        emit(ExecutionOpened(execution_id=state.execution_id, agent_id=payload.agent_id, user_id=payload.user_id,
                             token_budget=payload.token_budget, usd_budget=payload.usd_budget))
        return state, emit.out
    if state.started_at is None or state.status in ("invalid", "succeeded", "failed", "cancelled"):
        return state, []
    steps = {s.step_id: s for s in state.steps}
    if isinstance(payload, ExecutionInitialised):
        if state.flags is not None:
            return state, []
        state = replace(state, flags=payload.flags, limit=payload.limit, status="running")
    elif isinstance(payload, ExecutionCancelled):
        state = replace(state, cancelled=True)
        for step in state.steps:
            if step.status == "waiting":
                steps[step.step_id] = _finish(step, at, "skipped", decision=f"cancelled: {payload.reason}")
                emit(StepSkipped(execution_id=state.execution_id, step_id=step.step_id,
                                 reason=f"cancelled: {payload.reason}"))
    else:
        step = steps.get(payload.step_id)  # type: ignore[attr-defined]
        # A degradation recorded after its step executed (logs written before the runner emitted it first).
        late = isinstance(payload, StepDegraded) and step is not None and step.status == "executed"
        if step is None or (step.status in TERMINAL and not late):
            return state, []
        steps[step.step_id] = _step_outcome(state, step, payload, at, emit)
        if isinstance(payload, StepExecuted) and step.intent == "conditional":
            _skip_branch(steps, payload.output, step.spec, at, state.execution_id, emit)
    state = replace(state, steps=[steps[s.step_id] for s in state.steps])
    if isinstance(payload, StepApproved):
        state = replace(state, scopes={**state.scopes, **{f"{u.scope}": u for u in payload.scopes}})
    return _advance(state, at, emit), emit.out


def _step_outcome(state: ExecutionState, step: StepState, payload: Any, at: datetime, emit: Emitter) -> StepState:
    if isinstance(payload, StepApproved):
        return replace(step, status="approved", reserved_tokens=payload.reserved_tokens,
                       reserved_usd=payload.reserved_usd, model=payload.plan.model if payload.plan else None,
                       decision=f"approved: reserved {payload.reserved_tokens} tokens, ${payload.reserved_usd:.6f}"
                       + ("" if payload.enforced else " (orchestration off: not enforced)"))
    if isinstance(payload, StepRejected):
        return _finish(step, at, "rejected", decision=f"rejected by {payload.scope}: {payload.reason}")
    if isinstance(payload, StepDegraded):
        return replace(step, degraded=_degraded(step.degraded, payload.fallback, payload.reason))
    if isinstance(payload, StepExecuted):
        marks = step.degraded
        if payload.degraded:
            marks = _degraded(marks, payload.fallback or "deterministic", payload.degraded_reason)
        return replace(step, status="executed", output=payload.output, model=payload.model, degraded=marks,
                       input_tokens=payload.input_tokens, output_tokens=payload.output_tokens,
                       cache_read_tokens=payload.cache_read_tokens, cache_write_tokens=payload.cache_write_tokens,
                       counterfactual_tokens=payload.counterfactual_tokens,
                       counterfactual_usd=payload.counterfactual_usd, compression=payload.compression,
                       routing=payload.routing, caching=payload.caching, cost_usd=payload.cost_usd,
                       latency_ms=payload.latency_ms, finished_at=at)
    if isinstance(payload, StepFailed):
        _log_bug(state, payload, emit)
        return _finish(step, at, "failed", error=payload.error, stack=payload.stack or None)
    return step


def _degraded(marks: list[str], fallback: str, reason: str | None) -> list[str]:
    """A step's degradations with `fallback: reason` added once; a bare `fallback` (no reason known) is its stand-in."""
    entry = f"{fallback}: {reason}" if reason else fallback
    if entry in marks or (reason is None and any(m.startswith(f"{fallback}: ") for m in marks)):
        return marks
    return [*(m for m in marks if m != fallback), entry]


def _finish(step: StepState, at: datetime, status: Any, **changes: Any) -> StepState:
    return replace(step, status=status, finished_at=at, **changes)


def _skip_branch(steps: dict[str, StepState], output: Any, spec: dict[str, Any], at: datetime,
                 execution_id: str, emit: Emitter) -> None:
    taken = output.get("branch") if isinstance(output, dict) else None
    other = spec.get("else" if taken == "then" else "then") or []
    for step_id in other:
        step = steps.get(step_id)
        if step is not None and step.status == "waiting":
            reason = f"condition took the {taken!r} branch"
            steps[step_id] = _finish(step, at, "skipped", decision=reason)
            emit(StepSkipped(execution_id=execution_id, step_id=step_id, reason=reason))


def _advance(state: ExecutionState, at: datetime, emit: Emitter) -> ExecutionState:
    """Request every step whose dependencies executed; skip those whose dependencies will not; complete."""
    if state.flags is None:
        return state
    steps = {s.step_id: s for s in state.steps}
    changed = True
    while changed:
        changed = False
        for step in list(steps.values()):
            if step.status != "waiting":
                continue
            deps = [steps[d] for d in step.depends_on]
            if blocked := [d.step_id for d in deps if d.status in ("failed", "rejected", "skipped")]:
                reason = f"dependency {blocked[0]} did not execute"
                steps[step.step_id] = _finish(step, at, "skipped", decision=reason)
                emit(StepSkipped(execution_id=state.execution_id, step_id=step.step_id, reason=reason))
                changed = True
            elif all(d.status == "executed" for d in deps) and not state.cancelled:
                data = {"input": step.input, "steps": {d.step_id: d.output for d in deps}}
                steps[step.step_id] = replace(step, status="requested", requested_at=at)
                emit(StepRequested(execution_id=state.execution_id, step_id=step.step_id, intent=step.intent,  # type: ignore[arg-type]
                                   data=data, spec=step.spec, token_budget=step.token_budget,
                                   agent_id=state.agent_id, user_id=state.user_id, context=state.context,
                                   flags=state.flags))
    state = replace(state, steps=[steps[s.step_id] for s in state.steps])
    state = replace(state, metrics=execution_metrics(state))
    if all(s.status in TERMINAL for s in state.steps):
        statuses = {s.status for s in state.steps}
        status = "cancelled" if state.cancelled else ("failed" if statuses & {"failed", "rejected"} else "succeeded")
        state = replace(state, status=status, completed_at=at)
        state = replace(state, metrics=execution_metrics(state))
        emit(ExecutionCompleted(execution_id=state.execution_id, status=status, metrics=state.metrics))
        emit(ExecutionClosed(execution_id=state.execution_id))
    return state


def execution_metrics(state: ExecutionState) -> dict[str, Any]:
    """Tokens used and saved per lever, savings percent, cost and budget utilisation per scope."""
    steps = state.steps
    count = {status: sum(s.status == status for s in steps) for status in
             ("executed", "failed", "rejected", "skipped")}
    input_tokens = sum(s.input_tokens + s.cache_read_tokens + s.cache_write_tokens for s in steps)
    output_tokens = sum(s.output_tokens for s in steps)
    used = input_tokens + output_tokens
    levers = {name: {"tokens": sum(getattr(s, name).tokens for s in steps),
                     "usd": round(sum(getattr(s, name).usd for s in steps), 9)}
              for name in ("compression", "routing", "caching")}
    saved_tokens = sum(lever["tokens"] for lever in levers.values())
    counterfactual = sum(s.counterfactual_tokens for s in steps)
    cost = round(sum(s.cost_usd for s in steps), 9)
    counterfactual_usd = round(sum(s.counterfactual_usd for s in steps), 9)
    utilisation = {"execution": _utilisation(used, cost, state.limit.tokens, state.limit.usd)}
    for scope, use in state.scopes.items():
        if scope in ("user", "agent", "tenant"):
            utilisation[scope] = _utilisation(use.used_tokens + use.reserved_tokens, use.used_usd + use.reserved_usd,
                                              use.limit_tokens, use.limit_usd)
    return {
        "steps": len(steps), **count, "degraded": sum(bool(s.degraded) for s in steps),
        "tokens_used": used, "input_tokens": input_tokens, "output_tokens": output_tokens,
        "cache_read_tokens": sum(s.cache_read_tokens for s in steps),
        "cache_write_tokens": sum(s.cache_write_tokens for s in steps),
        "counterfactual_tokens": counterfactual, "tokens_saved": saved_tokens, "saved": levers,
        "savings_percent": round(100 * saved_tokens / counterfactual, 2) if counterfactual else 0.0,
        "cost_usd": cost, "counterfactual_usd": counterfactual_usd,
        "usd_saved": round(counterfactual_usd - cost, 9) if counterfactual_usd else 0.0,
        "usd_savings_percent": round(100 * (counterfactual_usd - cost) / counterfactual_usd, 2)
        if counterfactual_usd else 0.0,
        "budget_utilisation": utilisation,
        "latency_ms": round(sum(s.latency_ms for s in steps), 3),
    }


def _utilisation(tokens: int, usd: float, limit_tokens: int | None, limit_usd: float | None) -> float | None:
    """The larger share of a scope's token and USD limits in use; None when the scope is unlimited."""
    shares = [value / limit if limit else float(value > 0)
              for value, limit in ((tokens, limit_tokens), (usd, limit_usd)) if limit is not None]
    return round(max(shares), 4) if shares else None


_TASK_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


def _bug_payload() -> type | None:
    """The workflow domain's bug payload when its events are registered (failed steps become bugs), else None."""
    try:
        return registration("workflow.bug.logged").payload
    except UnknownEventType:
        return None


def _log_bug(state: ExecutionState, failed: StepFailed, emit: Emitter) -> None:
    bug = _bug_payload()
    if bug is None:
        return
    task_code = state.task_code if state.task_code and _TASK_CODE.match(state.task_code) else None
    emit(bug(task_code=task_code, message=f"{failed.intent} step failed: {failed.error}"[:10_000],
             file=failed.file, line=failed.line, stack=failed.stack[:100_000] or None))
