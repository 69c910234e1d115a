"""The steps fold's budgets: every scope of one tenant (executions, and each local day's users, agents, tenant
and models) in one state, with its limits, flags and timezone.

A budget state is the single writer of every scope a step's check needs (the execution's, the user's, agent's
and tenant's local day), so approval checks the estimate against all of them and reserves it in all of them in
one fold step: no lock, and no interleaving of concurrent steps can pass a limit (tests/unit/test_steps_fold.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import msgspec
from msgspec.structs import replace

from agents.batching import FoldState
from agents.zones import UnknownZone, zone
from schemas import Envelope
from schemas.steps import (
    BudgetExceeded,
    BudgetSet,
    BudgetUpdated,
    ExecutionClosed,
    ExecutionInitialised,
    ExecutionOpened,
    Flags,
    FlagsSet,
    FlagsUpdated,
    Limit,
    ReservationSettled,
    ScopeUse,
    StepApproved,
    StepDegraded,
    StepEstimated,
    StepFailed,
    StepRejected,
)

if TYPE_CHECKING:
    from agents.steps.fold import Emitter, FoldConfig


class Use(msgspec.Struct, kw_only=True):
    """Use of one scope: settled, reserved, and what its steps saved; its limit as last applied."""

    limit_tokens: int | None = None
    limit_usd: float | None = None
    used_tokens: int = 0
    used_usd: float = 0.0
    reserved_tokens: int = 0
    reserved_usd: float = 0.0
    steps: int = 0
    rejected: int = 0
    tokens_saved: int = 0
    usd_saved: float = 0.0


class ExecutionScope(msgspec.Struct, kw_only=True):
    """An open execution's limit, use and the flags in force when it opened (its decisions use those)."""

    agent_id: str
    user_id: str
    limit: Limit
    use: Use = msgspec.field(default_factory=Use)
    # None only in a state written before flags were kept per execution: the tenant's flags then apply.
    flags: Flags | None = None


class Reservation(msgspec.Struct, frozen=True, kw_only=True):
    """An estimate reserved in every scope until the step's outcome settles it."""

    execution_id: str
    step_id: str
    intent: str
    day: str
    user_id: str
    agent_id: str
    tokens: int
    usd: float
    expires_at: datetime


class BudgetState(FoldState, kw_only=True, tag="budget"):
    """Every budget scope and the flags of one tenant."""

    tenant_id: str
    flags: Flags | None = None
    timezone: str | None = None
    limits: dict[str, Limit] = {}
    executions: dict[str, ExecutionScope] = {}
    # day (tenant-local ISO date) -> "scope:subject" (user:u1, agent:a1, tenant:acme, model:claude-...) -> use
    days: dict[str, dict[str, Use]] = {}
    reservations: dict[str, Reservation] = {}
    latest_at: datetime | None = None


def fold_budget(state: BudgetState, envelope: Envelope, config: FoldConfig,
                emit: Emitter) -> tuple[BudgetState, list[Envelope]]:
    """Apply one event to the tenant's budgets: open or close an execution's scope, decide an estimate, settle a
    reservation, set a limit, the timezone or flags; expire reservations past their deadline and prune old days."""
    payload = envelope.payload
    at = envelope.occurred_at
    state = _expire(state, at, config, emit)
    if state.latest_at is None or at > state.latest_at:
        state = replace(state, latest_at=at)
    flags = state.flags or config.default_flags
    if isinstance(payload, ExecutionOpened):
        if payload.execution_id not in state.executions:
            limit = Limit(tokens=payload.token_budget, usd=payload.usd_budget)
            default = _limit(state, config, "execution", "*")
            limit = Limit(tokens=limit.tokens if limit.tokens is not None else default.tokens,
                          usd=limit.usd if limit.usd is not None else default.usd)
            scope = ExecutionScope(agent_id=payload.agent_id, user_id=payload.user_id, limit=limit, flags=flags)
            state = replace(state, executions={**state.executions, payload.execution_id: scope})
            emit(ExecutionInitialised(execution_id=payload.execution_id, flags=flags, limit=limit))
    elif isinstance(payload, StepEstimated):
        execution = state.executions.get(payload.execution_id)
        in_force = execution.flags if execution is not None and execution.flags is not None else flags
        state = _decide(state, envelope, payload, in_force, config, emit)
    elif isinstance(payload, ReservationSettled):
        state = _settle(state, payload, config)
    elif isinstance(payload, ExecutionClosed):
        executions = dict(state.executions)
        executions.pop(payload.execution_id, None)
        state = replace(state, executions=executions)
    elif isinstance(payload, BudgetSet):
        state = _set_budget(state, payload, envelope.actor, config, emit)
    elif isinstance(payload, FlagsSet):
        changes = {name: value for name in Flags.__struct_fields__ if (value := getattr(payload, name)) is not None}
        new = replace(flags, **changes)
        if new != flags:
            state = replace(state, flags=new)
            emit(FlagsUpdated(old=flags, new=new, actor=envelope.actor))
    return _prune(state, config), emit.out


def local_day(at: datetime, timezone: str) -> str:
    """The civil date of an instant in an IANA zone (a 23- or 25-hour day is one day)."""
    return at.astimezone(_zone(timezone)).date().isoformat()


def _zone(name: str) -> ZoneInfo:
    """The tenant's zone; UTC where it names none Baton knows."""
    try:
        return zone(name)
    except UnknownZone:
        return zone("UTC")


def _limit(state: BudgetState, config: FoldConfig, scope: str, subject: str) -> Limit:
    for key in (f"{scope}:{subject}", f"{scope}:*"):
        if key in state.limits:
            return state.limits[key]
        if key in config.default_limits:
            return config.default_limits[key]
    return Limit()


def _fits(use: Use, limit: Limit, tokens: int, usd: float) -> tuple[bool, bool]:
    """(tokens fit, usd fits) of an estimate on top of settled and reserved use."""
    fits_tokens = limit.tokens is None or use.used_tokens + use.reserved_tokens + tokens <= limit.tokens
    fits_usd = limit.usd is None or use.used_usd + use.reserved_usd + usd <= limit.usd + 1e-12
    return fits_tokens, fits_usd


def _scope_use(scope: Any, subject: str, use: Use, limit: Limit) -> ScopeUse:
    return ScopeUse(scope=scope, subject=subject, limit_tokens=limit.tokens, limit_usd=limit.usd,
                    used_tokens=use.used_tokens, used_usd=round(use.used_usd, 9),
                    reserved_tokens=use.reserved_tokens, reserved_usd=round(use.reserved_usd, 9))


def _decide(state: BudgetState, envelope: Envelope, request: StepEstimated, flags: Flags, config: FoldConfig,
            emit: Emitter) -> BudgetState:
    key = f"{request.execution_id}/{request.step_id}"
    if key in state.reservations:
        return state
    day = local_day(envelope.occurred_at, state.timezone or config.default_timezone)
    day_uses = state.days.get(day, {})
    execution = state.executions.get(request.execution_id)
    common = {"execution_id": request.execution_id, "step_id": request.step_id}
    unavailable = request.estimate_unavailable or (None if execution is not None else "execution scope unknown")
    if unavailable and not flags.fail_open and flags.orchestration:
        emit(StepRejected(**common, scope="execution" if execution is None else "step",
                          reason=f"budget check unavailable ({unavailable}); fail-closed",
                          estimate_tokens=request.tokens, estimate_usd=request.usd))
        return state
    scopes: list[tuple[str, str, Use, Limit]] = []
    if execution is not None:
        scopes.append(("execution", request.execution_id, execution.use, execution.limit))
    for scope, subject in (("user", request.user_id), ("agent", request.agent_id), ("tenant", state.tenant_id)):
        scopes.append((scope, subject, day_uses.get(f"{scope}:{subject}", Use()), _limit(state, config, scope, subject)))
    plan, usd = request.plan, request.usd
    if flags.orchestration:
        refused = _refusal(request, scopes, request.tokens, usd)
        if refused is not None and refused[1] and flags.degrade_over_budget and plan is not None:
            for alternative in sorted(request.alternatives, key=lambda a: a.usd):
                if _refusal(request, scopes, request.tokens, alternative.usd) is None:
                    plan, usd, refused = replace(plan, model=alternative.model), alternative.usd, None
                    emit(StepDegraded(**common, fallback=f"model {alternative.model}",
                                      reason=f"estimate ${request.usd:.6f} on {request.plan.model} did not fit "  # type: ignore[union-attr]
                                             f"the budget; ${alternative.usd:.6f} does"))
                    break
        if refused is not None:
            (scope, subject, use, limit), _usd_only = refused
            numbers = (f"estimate {request.tokens} tokens / ${usd:.6f}; limit {limit.tokens} tokens / "
                       f"${limit.usd}; used {use.used_tokens} / ${use.used_usd:.6f}; reserved "
                       f"{use.reserved_tokens} / ${use.reserved_usd:.6f}")
            emit(StepRejected(**common, scope=scope, reason=f"{scope} {subject} over budget: {numbers}",  # type: ignore[arg-type]
                              estimate_tokens=request.tokens, estimate_usd=usd,
                              scopes=[_scope_use(*s) for s in scopes]))
            emit(BudgetExceeded(**common, scope=scope, subject=subject, day=day,  # type: ignore[arg-type]
                                estimate_tokens=request.tokens, estimate_usd=usd, limit_tokens=limit.tokens,
                                limit_usd=limit.usd, used_tokens=use.used_tokens, used_usd=round(use.used_usd, 9),
                                reserved_tokens=use.reserved_tokens, reserved_usd=round(use.reserved_usd, 9)))
            return _count_rejection(state, day, request)
    if unavailable and flags.orchestration:
        emit(StepDegraded(**common, fallback="unchecked scope" if execution is None else "byte-bound estimate",
                          reason=f"budget check unavailable ({unavailable}); fail-open"))
    reservation = Reservation(execution_id=request.execution_id, step_id=request.step_id, intent=request.intent, day=day,
                              user_id=request.user_id, agent_id=request.agent_id, tokens=request.tokens, usd=usd,
                              expires_at=envelope.occurred_at + config.reservation_ttl)
    state = _apply(state, reservation, config, reserved=1)
    after = state.days[day]
    snapshot = [_scope_use("execution", request.execution_id, state.executions[request.execution_id].use,
                           state.executions[request.execution_id].limit)] if execution is not None else []
    snapshot += [_scope_use(scope, subject, after[f"{scope}:{subject}"], _limit(state, config, scope, subject))
                 for scope, subject in (("user", request.user_id), ("agent", request.agent_id),
                                        ("tenant", state.tenant_id))]
    emit(StepApproved(**common, intent=request.intent, agent_id=request.agent_id, user_id=request.user_id, day=day,
                      reserved_tokens=request.tokens, reserved_usd=usd, plan=plan, data=request.data,
                      spec=request.spec, scopes=snapshot, enforced=flags.orchestration, flags=flags,
                      tz_version=config.tz_version))
    return state


def _refusal(request: StepEstimated, scopes: list[tuple[str, str, Use, Limit]], tokens: int,
             usd: float) -> tuple[tuple[str, str, Use, Limit], bool] | None:
    """The first scope the estimate does not fit, and whether only its USD limit refused; None if all fit."""
    if request.token_budget is not None and tokens > request.token_budget:
        return ("step", request.step_id, Use(), Limit(tokens=request.token_budget)), False
    for scope in scopes:
        fits_tokens, fits_usd = _fits(scope[2], scope[3], tokens, usd)
        if not (fits_tokens and fits_usd):
            return scope, fits_tokens
    return None


def _apply(state: BudgetState, r: Reservation, config: FoldConfig, *, reserved: int, used_tokens: int = 0,
           used_usd: float = 0.0, model: str | None = None, saved: tuple[int, float] = (0, 0.0)) -> BudgetState:
    """Add (reserved=1) or remove (reserved=-1) a reservation in every scope, plus settled use (reserved=0 or -1)."""
    day = dict(state.days.get(r.day, {}))
    keys = [f"user:{r.user_id}", f"agent:{r.agent_id}", f"tenant:{state.tenant_id}"]
    if model is not None:
        keys.append(f"model:{model}")
    settled = reserved <= 0 and model is not None
    limits = {f"{scope}:{subject}": _limit(state, config, scope, subject)
              for scope, subject in (("user", r.user_id), ("agent", r.agent_id), ("tenant", state.tenant_id))}

    def moved(use: Use, with_reservation: bool) -> Use:
        use = replace(use)
        if with_reservation:
            use.reserved_tokens += reserved * r.tokens
            use.reserved_usd = round(use.reserved_usd + reserved * r.usd, 9)
        use.used_tokens += used_tokens
        use.used_usd = round(use.used_usd + used_usd, 9)
        if settled:
            use.steps += 1
            use.tokens_saved += saved[0]
            use.usd_saved = round(use.usd_saved + saved[1], 9)
        return use

    for key in keys:
        day[key] = moved(day.get(key, Use()), not key.startswith("model:"))
        if key in limits:
            day[key].limit_tokens, day[key].limit_usd = limits[key].tokens, limits[key].usd
    executions = state.executions
    if r.execution_id in executions:
        scope = executions[r.execution_id]
        executions = {**executions, r.execution_id: replace(scope, use=moved(scope.use, True))}
    reservations = dict(state.reservations)
    key = f"{r.execution_id}/{r.step_id}"
    if reserved > 0:
        reservations[key] = r
    else:
        reservations.pop(key, None)
    return replace(state, days={**state.days, r.day: day}, executions=executions, reservations=reservations)


def _settle(state: BudgetState, settled: ReservationSettled, config: FoldConfig) -> BudgetState:
    reservation = state.reservations.get(f"{settled.execution_id}/{settled.step_id}")
    if reservation is None:
        if settled.outcome != "executed":
            return state
        # Released already (expired): what the step used after all is still charged.
        late = Reservation(execution_id=settled.execution_id, step_id=settled.step_id, intent="", day=settled.day,
                           user_id=settled.user_id, agent_id=settled.agent_id, tokens=0, usd=0.0,
                           expires_at=datetime.min)
        return _apply(state, late, config, reserved=0, used_tokens=settled.used_tokens, used_usd=settled.used_usd,
                      model=settled.model, saved=(settled.tokens_saved, settled.usd_saved))
    used_tokens, used_usd = settled.used_tokens, settled.used_usd
    if settled.outcome == "unknown":
        used_tokens, used_usd = reservation.tokens, reservation.usd
    return _apply(state, reservation, config, reserved=-1, used_tokens=used_tokens, used_usd=used_usd,
                  model=settled.model or ("unknown" if settled.outcome == "unknown" else None),
                  saved=(settled.tokens_saved, settled.usd_saved))


def _count_rejection(state: BudgetState, day: str, request: StepEstimated) -> BudgetState:
    uses = dict(state.days.get(day, {}))
    for key in (f"user:{request.user_id}", f"agent:{request.agent_id}", f"tenant:{state.tenant_id}"):
        use = replace(uses.get(key, Use()))
        use.rejected += 1
        uses[key] = use
    return replace(state, days={**state.days, day: uses})


def _expire(state: BudgetState, at: datetime, config: FoldConfig, emit: Emitter) -> BudgetState:
    """Release reservations whose deadline (event time) has passed; the execution hears its step timed out."""
    expired = [r for r in state.reservations.values() if r.expires_at <= at]
    for r in sorted(expired, key=lambda r: (r.expires_at, r.execution_id, r.step_id)):
        state = _apply(state, r, config, reserved=-1)
        emit(ReservationSettled(execution_id=r.execution_id, step_id=r.step_id, day=r.day, outcome="expired",
                                user_id=r.user_id, agent_id=r.agent_id))
        emit(StepFailed(execution_id=r.execution_id, step_id=r.step_id, intent=r.intent, timed_out=True,  # type: ignore[arg-type]
                        error=f"no outcome within {config.reservation_ttl.total_seconds():.0f} s; reservation released"))
    return state


def _set_budget(state: BudgetState, change: BudgetSet, actor: str, config: FoldConfig,
                emit: Emitter) -> BudgetState:
    if change.timezone is not None:
        old = state.timezone or config.default_timezone
        if change.timezone != old:
            state = replace(state, timezone=change.timezone)
            emit(BudgetUpdated(scope="timezone", subject=state.tenant_id, old_timezone=old,
                               new_timezone=change.timezone, actor=actor))
    if change.scope is not None:
        subject = state.tenant_id if change.scope == "tenant" else change.subject
        key = f"{change.scope}:{subject}"
        old_limit = state.limits.get(key) or config.default_limits.get(key)
        if old_limit != change.limit:
            state = replace(state, limits={**state.limits, key: change.limit})
            emit(BudgetUpdated(scope=change.scope, subject=subject, old=old_limit, new=change.limit, actor=actor))
            state = _restamp(state, change.scope, config)
    return state


def _restamp(state: BudgetState, scope: str, config: FoldConfig) -> BudgetState:
    """The latest day's uses of a scope carry its limits as changed (their rows show them)."""
    if not state.days:
        return state
    latest = max(state.days)
    uses = dict(state.days[latest])
    for key, use in uses.items():
        kind, _, subject = key.partition(":")
        if kind == scope:
            limit = _limit(state, config, kind, subject)
            uses[key] = replace(use, limit_tokens=limit.tokens, limit_usd=limit.usd)
    return replace(state, days={**state.days, latest: uses})


def _prune(state: BudgetState, config: FoldConfig) -> BudgetState:
    """Drop local days older than the retention that hold no reservation (their last rows are projected)."""
    if state.latest_at is None or len(state.days) <= config.retention_days:
        return state
    keep = sorted(state.days)[-config.retention_days:]
    held = {r.day for r in state.reservations.values()}
    days = {day: uses for day, uses in state.days.items() if day in keep or day in held}
    return replace(state, days=days) if len(days) != len(state.days) else state
