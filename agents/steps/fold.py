"""The steps fold: executions (a DAG of steps and their metrics) and tenant budgets (every scope in one state).

Each event goes to its execution's state (agents.steps.executions) or its tenant's budget state
(agents.steps.budgets); both are kept in one state table under the union `State`. A budget state is the single
writer of every scope a step's check needs, so approval checks an estimate against all of them and reserves it in
all of them in one fold step (tests/unit/test_steps_fold.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec

from agents.batching import StateCodec
from agents.errors import FoldError
from agents.steps.budgets import BudgetState, fold_budget
from agents.steps.executions import ExecutionState, fold_execution
from agents.zones import TZ_VERSION
from schemas import Envelope, emitted
from schemas.steps import (
    BudgetExceeded,
    BudgetSet,
    BudgetTick,
    BudgetUpdated,
    ExecutionClosed,
    ExecutionOpened,
    ExecutionStarted,
    Flags,
    FlagsSet,
    FlagsUpdated,
    Limit,
    ReservationSettled,
    StepEstimated,
)

ACTOR = "fold:steps"


class FoldConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Defaults and bounds of the steps fold."""

    # Limits by "scope:subject" ("user:*" is every user's default) until PUT /v1/budgets sets others.
    default_limits: dict[str, Limit] = {}
    default_flags: Flags = Flags()
    default_timezone: str = "UTC"
    # A reservation with no outcome after this long (event time) is released; the runner times out first.
    reservation_ttl: timedelta = timedelta(minutes=10)
    retention_days: int = 3
    tz_version: str = TZ_VERSION


State = ExecutionState | BudgetState
CODEC = StateCodec.json(State)


_BUDGET_EVENTS = (ExecutionOpened, StepEstimated, ReservationSettled, ExecutionClosed, BudgetTick, BudgetSet,
                  BudgetUpdated, FlagsSet, FlagsUpdated, BudgetExceeded)


def fold(state: State | None, envelope: Envelope, config: FoldConfig = FoldConfig()) -> tuple[State | None, list[Envelope]]:
    """Apply one steps event to its execution or budget state; returns the new state and its emissions."""
    payload = envelope.payload
    if isinstance(payload, _BUDGET_EVENTS):
        if state is not None and not isinstance(state, BudgetState):
            raise FoldError(f"budget event {envelope.type} reached an execution state")
        return fold_budget(state or BudgetState(tenant_id=envelope.tenant_id), envelope, config, Emitter(envelope))
    if state is not None and not isinstance(state, ExecutionState):
        raise FoldError(f"execution event {envelope.type} reached a budget state")
    if state is None and not isinstance(payload, ExecutionStarted):
        return state, []  # an outcome for an execution that never started here: nothing to attach it to
    execution = state or ExecutionState(tenant_id=envelope.tenant_id, execution_id=payload.execution_id)  # type: ignore[attr-defined]
    return fold_execution(execution, envelope, Emitter(envelope))


class Emitter:
    """Emissions of one fold step with fixed, consecutive indexes (so a re-fold derives the same ids)."""

    def __init__(self, cause: Envelope) -> None:
        self.cause = cause
        self.out: list[Envelope] = []

    def __call__(self, payload: Any) -> None:
        self.out.append(emitted(self.cause, len(self.out), payload, actor=ACTOR))
