"""The steps fold: budgets reserved across every scope at once (never overshot under any interleaving),
reconciled, released, reset at local midnight; executions as DAGs with metrics; flags; failed steps as bugs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import tzdata
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas.workflow  # noqa: F401 - the workflow domain is installed: a failed step is logged as a bug
from agents.steps.fold import BudgetState, ExecutionState, FoldConfig, fold
from schemas import Envelope, new_event
from schemas.steps import (
    Alternative,
    BudgetSet,
    BudgetTick,
    ExecutionCancelled,
    ExecutionOpened,
    ExecutionStarted,
    FlagsSet,
    Limit,
    Plan,
    ReservationSettled,
    Savings,
    StepDegraded,
    StepEstimated,
    StepExecuted,
    StepFailed,
    StepSpec,
    budget_stream_id,
)

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
TENANT = "acme"
CONFIG = FoldConfig(reservation_ttl=timedelta(minutes=10))


def event(payload, at: datetime = T0, event_id: uuid.UUID | None = None) -> Envelope:
    return new_event(TENANT, payload, event_id=event_id or uuid.uuid4(), occurred_at=at, recorded_at=at,
                     actor="test")


class Log:
    """Folds events in order, keeping each stream's state and every emission."""

    def __init__(self, config: FoldConfig = CONFIG) -> None:
        self.config = config
        self.states: dict[str, object] = {}
        self.emitted: list[Envelope] = []

    def apply(self, envelope: Envelope) -> list[Envelope]:
        state, out = fold(self.states.get(envelope.stream_id), envelope, self.config)  # type: ignore[arg-type]
        if state is not None:
            self.states[envelope.stream_id] = state
        self.emitted.extend(out)
        return out

    def run(self, envelope: Envelope, *, follow: bool = True) -> list[Envelope]:
        """Apply an event and (follow) every steps emission it causes, breadth first."""
        queue, seen = [envelope], []
        while queue:
            current = queue.pop(0)
            out = self.apply(current)
            seen.extend(out)
            if follow:
                queue.extend(e for e in out if e.type.startswith("steps."))
        return seen

    @property
    def budget(self) -> BudgetState:
        return self.states[budget_stream_id(TENANT)]  # type: ignore[return-value]

    def execution(self, execution_id: str) -> ExecutionState:
        return self.states[f"execution:{TENANT}:{execution_id}"]  # type: ignore[return-value]


def types(events: list[Envelope]) -> list[str]:
    return [e.type for e in events]


def estimate(execution_id: str, step_id: str, tokens: int, usd: float = 0.0, *, user: str = "u1",
             agent: str = "a1", **extra) -> StepEstimated:
    return StepEstimated(execution_id=execution_id, step_id=step_id, intent="extract", agent_id=agent,
                         user_id=user, tokens=tokens, usd=usd, **extra)


def open_execution(log: Log, execution_id: str, *, agent: str = "a1", user: str = "u1", at: datetime = T0,
                   tokens: int | None = None) -> None:
    log.run(event(ExecutionOpened(execution_id=execution_id, agent_id=agent, user_id=user, token_budget=tokens),
                  at), follow=False)


def settle(execution_id: str, step_id: str, outcome: str, used: int = 0, day: str = "2026-12-01",
           usd: float = 0.0) -> ReservationSettled:
    return ReservationSettled(execution_id=execution_id, step_id=step_id, day=day, outcome=outcome,  # type: ignore[arg-type]
                              used_tokens=used, used_usd=usd, model="claude-haiku-4-5" if outcome == "executed" else None,
                              user_id="u1", agent_id="a1")


def use(log: Log, key: str, day: str = "2026-12-01"):
    return log.budget.days[day][key]


# ---- zero overshoot under concurrency ------------------------------------------------------------------------

USER_LIMIT = 10_000


@st.composite
def races(draw):
    """Steps of two executions of two agents for one user, their estimates and outcomes, in any interleaving."""
    steps = draw(st.lists(st.tuples(st.sampled_from(["e1", "e2"]), st.integers(1, 3000),
                                    st.sampled_from(["executed", "failed", "timed_out", "unknown", "lost"]),
                                    st.floats(0, 1)), min_size=1, max_size=40))
    # Each step: its estimate arrives, later its outcome; the interleaving of all of them is drawn.
    pending = [[("estimate", i), ("outcome", i)] for i in range(len(steps))]
    order = []
    while any(pending):
        choices = [i for i, p in enumerate(pending) if p]
        order.append(pending[draw(st.sampled_from(choices))].pop(0))
    return steps, order


@settings(max_examples=300, deadline=None)
@given(races())
def test_no_interleaving_of_concurrent_steps_passes_any_scope(race):
    steps, order = race
    log = Log()
    log.run(event(BudgetSet(scope="user", subject="u1", limit=Limit(tokens=USER_LIMIT))), follow=False)
    log.run(event(BudgetSet(scope="agent", subject="a2", limit=Limit(tokens=USER_LIMIT // 2))), follow=False)
    log.run(event(BudgetSet(scope="tenant", limit=Limit(tokens=USER_LIMIT * 2))), follow=False)
    open_execution(log, "e1", agent="a1")
    open_execution(log, "e2", agent="a2", tokens=USER_LIMIT // 3)
    approved: dict[int, int] = {}
    charged = 0
    at = T0
    for kind, i in order:
        execution_id, tokens, outcome, share = steps[i]
        at += timedelta(seconds=1)
        if kind == "estimate":
            agent = "a1" if execution_id == "e1" else "a2"
            out = log.run(event(estimate(execution_id, f"s{i}", tokens, agent=agent), at), follow=False)
            if "steps.step.approved" in types(out):
                approved[i] = tokens
        elif i in approved and outcome != "lost":
            actual = int(tokens * share) if outcome == "executed" else 0
            charged += actual if outcome == "executed" else tokens if outcome == "unknown" else 0
            log.run(event(settle(execution_id, f"s{i}", outcome, used=actual), at), follow=False)
        days = log.budget.days.get("2026-12-01", {})
        limits = {"user:u1": USER_LIMIT, "agent:a2": USER_LIMIT // 2, "tenant:acme": USER_LIMIT * 2}
        for key, limit in limits.items():
            if key in days:
                assert days[key].used_tokens + days[key].reserved_tokens <= limit, (key, days[key])
        e2 = log.budget.executions["e2"].use
        assert e2.used_tokens + e2.reserved_tokens <= USER_LIMIT // 3
    # Lost outcomes expire; afterwards nothing is reserved anywhere and use is exactly what was charged.
    log.run(event(BudgetTick(), at + timedelta(hours=1)), follow=False)
    days = log.budget.days["2026-12-01"] if approved else {}
    for key in ("user:u1", "tenant:acme"):
        if key in days:
            assert days[key].reserved_tokens == 0
            assert days[key].used_tokens == charged
    assert log.budget.reservations == {}


def test_steps_that_fit_alone_are_refused_together_with_the_numbers():
    log = Log()
    log.run(event(BudgetSet(scope="user", subject="u1", limit=Limit(tokens=1000, usd=1.0))), follow=False)
    open_execution(log, "e1")
    open_execution(log, "e2", agent="a2")
    first = log.run(event(estimate("e1", "s1", 600)), follow=False)
    second = log.run(event(estimate("e2", "s1", 600, agent="a2")), follow=False)
    assert types(first) == ["steps.step.approved"]
    assert types(second) == ["steps.step.rejected", "steps.budget.exceeded"]
    rejected, exceeded = second[0].payload, second[1].payload
    assert rejected.scope == "user" and "limit 1000 tokens" in rejected.reason and "reserved 600" in rejected.reason
    assert (exceeded.subject, exceeded.limit_tokens, exceeded.reserved_tokens, exceeded.estimate_tokens) == \
        ("u1", 1000, 600, 600)
    assert use(log, "user:u1").rejected == 1 and use(log, "agent:a2").rejected == 1


def test_reconciliation_charges_actual_use_and_frees_the_rest():
    log = Log()
    log.run(event(BudgetSet(scope="user", subject="u1", limit=Limit(tokens=1000))), follow=False)
    open_execution(log, "e1")
    log.run(event(estimate("e1", "s1", 900, usd=0.01)), follow=False)
    assert use(log, "user:u1").reserved_tokens == 900
    log.run(event(settle("e1", "s1", "executed", used=300, usd=0.002)), follow=False)
    user = use(log, "user:u1")
    assert (user.used_tokens, user.reserved_tokens, user.used_usd, user.reserved_usd) == (300, 0, 0.002, 0.0)
    assert use(log, "model:claude-haiku-4-5").used_tokens == 300
    assert types(log.run(event(estimate("e1", "s2", 700)), follow=False)) == ["steps.step.approved"]


@pytest.mark.parametrize("outcome", ["failed", "timed_out"])
def test_failure_and_timeout_release_the_reservation(outcome):
    log = Log()
    open_execution(log, "e1")
    log.run(event(estimate("e1", "s1", 500)), follow=False)
    log.run(event(settle("e1", "s1", outcome)), follow=False)
    user = use(log, "user:u1")
    assert (user.used_tokens, user.reserved_tokens) == (0, 0)
    assert log.budget.executions["e1"].use.reserved_tokens == 0


def test_unknown_outcome_is_charged_in_full():
    log = Log()
    open_execution(log, "e1")
    log.run(event(estimate("e1", "s1", 500)), follow=False)
    log.run(event(settle("e1", "s1", "unknown")), follow=False)
    assert (use(log, "user:u1").used_tokens, use(log, "user:u1").reserved_tokens) == (500, 0)


def test_a_reservation_without_outcome_expires_by_event_time_and_fails_its_step():
    log = Log()
    open_execution(log, "e1")
    log.run(event(estimate("e1", "s1", 500)), follow=False)
    assert log.run(event(BudgetTick(), T0 + timedelta(minutes=9)), follow=False) == []
    out = log.run(event(BudgetTick(), T0 + timedelta(minutes=10)), follow=False)
    assert types(out) == ["steps.reservation.settled", "steps.step.failed"]
    assert out[1].payload.timed_out and out[1].stream_id == f"execution:{TENANT}:e1"
    assert use(log, "user:u1").reserved_tokens == 0


def test_daily_scopes_reset_at_the_tenants_local_midnight():
    log = Log()
    log.run(event(BudgetSet(timezone="Europe/Madrid")), follow=False)
    log.run(event(BudgetSet(scope="user", subject="*", limit=Limit(tokens=1000))), follow=False)
    open_execution(log, "e1")
    before = datetime(2026, 12, 1, 22, 59, tzinfo=UTC)  # 23:59 in Madrid
    after = datetime(2026, 12, 1, 23, 1, tzinfo=UTC)  # 00:01 on 2 December in Madrid
    assert types(log.run(event(estimate("e1", "s1", 1000), before), follow=False)) == ["steps.step.approved"]
    assert types(log.run(event(estimate("e1", "s2", 1000), before), follow=False))[0] == "steps.step.rejected"
    approved = log.run(event(estimate("e1", "s3", 1000), after), follow=False)
    assert types(approved) == ["steps.step.approved"] and approved[0].payload.day == "2026-12-02"
    assert approved[0].payload.tz_version == tzdata.IANA_VERSION
    assert use(log, "user:u1", "2026-12-01").reserved_tokens == 1000
    assert use(log, "user:u1", "2026-12-02").reserved_tokens == 1000


def test_a_usd_limit_degrades_to_a_cheaper_model_when_configured():
    plan = Plan(model="claude-sonnet-4-5", counterfactual_model="claude-sonnet-4-5", system="s", prompt="p",
                max_tokens=100)
    request = estimate("e1", "s1", 500, usd=0.02, plan=plan,
                       alternatives=[Alternative(model="claude-haiku-4-5", usd=0.004)])
    log = Log()
    log.run(event(BudgetSet(scope="user", subject="u1", limit=Limit(usd=0.01))), follow=False)
    open_execution(log, "e1")
    assert types(log.run(event(request), follow=False))[0] == "steps.step.rejected"
    log.run(event(FlagsSet(degrade_over_budget=True)), follow=False)
    # The flag applies to executions opened after the change (e1 keeps the flags it opened with).
    assert types(log.run(event(StepEstimated(**{**_fields(request), "step_id": "s2"})), follow=False))[0] == \
        "steps.step.rejected"
    open_execution(log, "e2")
    out = log.run(event(StepEstimated(**{**_fields(request), "execution_id": "e2"})), follow=False)
    assert types(out) == ["steps.step.degraded", "steps.step.approved"]
    assert out[1].payload.plan.model == "claude-haiku-4-5" and out[1].payload.reserved_usd == 0.004


def _fields(struct) -> dict:
    return {name: getattr(struct, name) for name in struct.__struct_fields__}


# ---- flags -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("orchestration", "fail_open", "unavailable", "expected"), [
    (True, False, False, ["steps.step.rejected", "steps.budget.exceeded"]),
    (True, True, False, ["steps.step.rejected", "steps.budget.exceeded"]),
    (True, False, True, ["steps.step.rejected"]),
    (True, True, True, ["steps.step.rejected", "steps.budget.exceeded"]),
    (False, False, False, ["steps.step.approved"]),
    (False, True, True, ["steps.step.approved"]),
])
def test_flag_matrix_of_budget_decisions(orchestration, fail_open, unavailable, expected):
    """Over the limit: refused unless orchestration is off (passed through, recorded, not enforced)."""
    log = Log()
    log.run(event(BudgetSet(scope="user", subject="u1", limit=Limit(tokens=100))), follow=False)
    log.run(event(FlagsSet(orchestration=orchestration, fail_open=fail_open)), follow=False)
    open_execution(log, "e1")
    request = estimate("e1", "s1", 500, estimate_unavailable="token count failed" if unavailable else None)
    out = log.run(event(request), follow=False)
    assert types(out) == expected
    if out[0].type == "steps.step.approved":
        assert out[0].payload.enforced is False
        assert use(log, "user:u1").reserved_tokens == 500  # still recorded


def test_fail_open_proceeds_on_an_unchecked_estimate_within_limits_and_says_so():
    log = Log()
    log.run(event(FlagsSet(fail_open=True)), follow=False)
    open_execution(log, "e1")
    out = log.run(event(estimate("e1", "s1", 50, estimate_unavailable="token count failed")), follow=False)
    assert types(out) == ["steps.step.degraded", "steps.step.approved"]
    assert "fail-open" in out[0].payload.reason


def test_flag_and_budget_changes_record_old_and_new_values():
    log = Log()
    flags = log.run(event(FlagsSet(compression=False)), follow=False)[0].payload
    assert (flags.old.compression, flags.new.compression, flags.new.routing) == (True, False, True)
    assert log.run(event(FlagsSet(compression=False)), follow=False) == []
    first = log.run(event(BudgetSet(scope="agent", subject="a1", limit=Limit(tokens=10))), follow=False)[0].payload
    second = log.run(event(BudgetSet(scope="agent", subject="a1", limit=Limit(tokens=20))), follow=False)[0].payload
    assert (first.old, first.new.tokens, second.old.tokens, second.new.tokens) == (None, 10, 10, 20)


def test_a_redelivered_event_changes_nothing():
    log = Log()
    open_execution(log, "e1")
    request = event(estimate("e1", "s1", 500))
    assert types(log.run(request, follow=False)) == ["steps.step.approved"]
    assert log.run(request, follow=False) == []
    assert use(log, "user:u1").reserved_tokens == 500


# ---- executions ----------------------------------------------------------------------------------------------


def started(*steps: StepSpec, execution_id: str = "x1", **extra) -> ExecutionStarted:
    return ExecutionStarted(execution_id=execution_id, agent_id="a1", user_id="u1", steps=list(steps), **extra)


def executed(step_id: str, output=None, execution_id: str = "x1", **numbers) -> StepExecuted:
    return StepExecuted(execution_id=execution_id, step_id=step_id, intent="transform", output=output, **numbers)


def test_independent_steps_are_requested_together_and_dependents_after_them():
    log = Log()
    out = log.run(event(started(StepSpec(step_id="a", intent="transform", input=1),
                                StepSpec(step_id="b", intent="transform", input=2),
                                StepSpec(step_id="c", intent="aggregate", depends_on=["a", "b"]))))
    requested = [e.payload for e in out if e.type == "steps.step.requested"]
    assert [r.step_id for r in requested] == ["a", "b"]
    assert requested[0].data == {"input": 1, "steps": {}} and requested[0].flags.orchestration
    log.run(event(executed("a", output=[1])))
    out = log.run(event(executed("b", output=[2])))
    (c,) = [e.payload for e in out if e.type == "steps.step.requested"]
    assert c.step_id == "c" and c.data == {"input": None, "steps": {"a": [1], "b": [2]}}
    out = log.run(event(executed("c", output=3)))
    assert types(out)[:2] == ["steps.execution.completed", "steps.execution.closed"]
    assert log.execution("x1").status == "succeeded"
    assert "x1" not in log.budget.executions


def test_a_failed_step_skips_its_dependents_fails_the_execution_and_logs_a_bug():
    log = Log()
    log.run(event(started(StepSpec(step_id="a", intent="validate"), StepSpec(step_id="b", intent="send",
                                                                           depends_on=["a"]), task_code="T-7")))
    out = log.run(event(StepFailed(execution_id="x1", step_id="a", intent="validate", error="StepError: $: bad",
                                   stack="Traceback ...", file="agents/steps.py", line=42)))
    assert "steps.step.skipped" in types(out) and "steps.execution.completed" in types(out)
    state = log.execution("x1")
    assert [s.status for s in state.steps] == ["failed", "skipped"] and state.status == "failed"
    (bug,) = [e for e in out if e.type == "workflow.bug.logged"]
    assert bug.payload.task_code == "T-7" and bug.payload.line == 42 and "bad" in bug.payload.message
    assert bug.stream_id.startswith(f"bug:{TENANT}:")


def test_a_condition_skips_the_other_branch():
    log = Log()
    log.run(event(started(StepSpec(step_id="if", intent="conditional", spec={"then": ["yes"], "else": ["no"]}),
                          StepSpec(step_id="yes", intent="transform", depends_on=["if"]),
                          StepSpec(step_id="no", intent="transform", depends_on=["if"]))))
    out = log.run(event(executed("if", output={"condition": True, "branch": "then"})))
    assert [e.payload.step_id for e in out if e.type == "steps.step.requested"] == ["yes"]
    assert [e.payload.step_id for e in out if e.type == "steps.step.skipped"] == ["no"]


def test_an_invalid_graph_completes_failed_without_opening_a_budget():
    log = Log()
    out = log.run(event(started(StepSpec(step_id="a", intent="transform", depends_on=["b"]))))
    assert types(out) == ["steps.execution.completed"]
    assert "unknown step 'b'" in out[0].payload.metrics["error"]


def test_cancellation_skips_waiting_steps_and_lets_running_ones_finish():
    log = Log()
    log.run(event(started(StepSpec(step_id="a", intent="transform"), StepSpec(step_id="b", intent="transform",
                                                                            depends_on=["a"]))))
    log.run(event(ExecutionCancelled(execution_id="x1")))
    assert [s.status for s in log.execution("x1").steps] == ["requested", "skipped"]
    out = log.run(event(executed("a", output=1)))
    assert log.execution("x1").status == "cancelled" and "steps.execution.closed" in types(out)


def test_metrics_add_up_tokens_savings_cost_and_utilisation():
    log = Log()
    log.run(event(BudgetSet(scope="user", subject="u1", limit=Limit(tokens=10_000))), follow=False)
    log.run(event(started(StepSpec(step_id="a", intent="extract"), StepSpec(step_id="b", intent="summarize"),
                          token_budget=4000)))
    for step_id in ("a", "b"):
        log.run(event(estimate("x1", step_id, 1000)))
    log.run(event(executed("a", input_tokens=100, output_tokens=50, cache_read_tokens=400, cache_write_tokens=0,
                           counterfactual_tokens=900, counterfactual_usd=0.01, cost_usd=0.004,
                           compression=Savings(tokens=300, usd=0.001), routing=Savings(tokens=50, usd=0.004),
                           caching=Savings(usd=0.001))))
    log.run(event(executed("b", input_tokens=200, output_tokens=50, counterfactual_tokens=350,
                           counterfactual_usd=0.002, cost_usd=0.002, compression=Savings(tokens=100, usd=0.0))))
    m = log.execution("x1").metrics
    assert m["tokens_used"] == 100 + 50 + 400 + 200 + 50 == 800
    assert m["tokens_saved"] == 300 + 50 + 100
    assert m["saved"]["compression"] == {"tokens": 400, "usd": 0.001}
    assert m["saved"]["routing"]["tokens"] == 50 and m["saved"]["caching"]["usd"] == 0.001
    assert m["savings_percent"] == round(100 * 450 / 1250, 2)
    assert m["cost_usd"] == 0.006 and m["usd_saved"] == 0.006 and m["usd_savings_percent"] == 50.0
    assert m["budget_utilisation"]["execution"] == 0.2
    # The user's share at the last approval: 2000 reserved of 10 000.
    assert m["budget_utilisation"]["user"] == 0.2
    assert log.execution("x1").status == "succeeded"


# ---- issue 19 --------------------------------------------------------------------------------------------------


def degraded(step_id: str, execution_id: str = "x1", reason: str = "model call failed: 529") -> StepDegraded:
    return StepDegraded(execution_id=execution_id, step_id=step_id, fallback="deterministic", reason=reason)


def test_a_step_executed_degraded_counts_as_degraded_even_when_its_degraded_event_comes_after():
    """Logs written before the runner emitted step.degraded first: executed (degraded=True), then degraded."""
    log = Log()
    log.run(event(started(StepSpec(step_id="a", intent="summarize"),
                          StepSpec(step_id="b", intent="summarize", depends_on=["a"]))))
    log.run(event(executed("a", output="x", degraded=True)))
    log.run(event(degraded("a")))
    log.run(event(executed("b", output="y", degraded=True)))
    out = log.run(event(degraded("b")))
    state = log.execution("x1")
    assert [s.degraded for s in state.steps] == [["deterministic: model call failed: 529"], ["deterministic"]]
    assert state.metrics["degraded"] == 2 and out == []
    (completed,) = [e.payload for e in log.emitted if e.type == "steps.execution.completed"]
    assert completed.metrics["degraded"] == 2


def test_a_degraded_event_before_its_step_executed_is_recorded_once():
    log = Log()
    log.run(event(started(StepSpec(step_id="a", intent="summarize"))))
    log.run(event(degraded("a")))
    log.run(event(executed("a", output="x", degraded=True, fallback="deterministic",
                           degraded_reason="model call failed: 529")))
    state = log.execution("x1")
    assert state.steps[0].degraded == ["deterministic: model call failed: 529"]
    assert state.status == "succeeded" and state.metrics["degraded"] == 1


def test_an_execution_keeps_the_flags_in_force_when_its_budget_scope_opened():
    """Orchestration switched off mid-run: the running execution's dependent step is still enforced."""
    log = Log()
    log.run(event(BudgetSet(scope="user", subject="u1", limit=Limit(tokens=2000))), follow=False)
    log.run(event(started(StepSpec(step_id="a", intent="extract"),
                          StepSpec(step_id="b", intent="extract", depends_on=["a"]))))
    log.run(event(FlagsSet(orchestration=False), T0 + timedelta(seconds=1)), follow=False)
    log.run(event(estimate("x1", "a", 1500), T0 + timedelta(seconds=2)))
    log.run(event(settle("x1", "a", "executed", used=1500), T0 + timedelta(seconds=3)), follow=False)
    out = log.run(event(executed("a", output=1), T0 + timedelta(seconds=3)))
    (requested,) = [e.payload for e in out if e.type == "steps.step.requested"]
    assert requested.flags.orchestration is True
    decision = log.run(event(estimate("x1", "b", 1000), T0 + timedelta(seconds=4)), follow=False)
    assert types(decision) == ["steps.step.rejected", "steps.budget.exceeded"]
    assert use(log, "user:u1").used_tokens + use(log, "user:u1").reserved_tokens == 1500
    # An execution opened after the change runs with orchestration off: recorded, not enforced.
    open_execution(log, "x2", at=T0 + timedelta(seconds=5))
    late = log.run(event(estimate("x2", "s1", 1000), T0 + timedelta(seconds=6)), follow=False)
    assert types(late) == ["steps.step.approved"] and late[0].payload.enforced is False
    # The other way round: opened with orchestration off, switched on mid-run, still not enforced.
    log.run(event(FlagsSet(orchestration=True), T0 + timedelta(seconds=7)), follow=False)
    again = log.run(event(estimate("x2", "s2", 1000), T0 + timedelta(seconds=8)), follow=False)
    assert types(again) == ["steps.step.approved"] and again[0].payload.enforced is False
    assert again[0].payload.flags.orchestration is False


def test_the_captured_flags_survive_a_rebuild_from_the_log():
    events = [event(ExecutionOpened(execution_id="e1", agent_id="a1", user_id="u1")),
              event(FlagsSet(orchestration=False), T0 + timedelta(seconds=1)),
              event(BudgetSet(scope="user", subject="u1", limit=Limit(tokens=10)), T0 + timedelta(seconds=2)),
              event(estimate("e1", "s1", 500), T0 + timedelta(seconds=3))]
    first, second = Log(), Log()
    live = [types(first.run(e, follow=False)) for e in events]
    from agents.steps.fold import CODEC
    for e in events[:2]:
        second.run(e, follow=False)
    second.states = {k: CODEC.decode(CODEC.encode(v)) for k, v in second.states.items()}  # a restart mid-log
    replayed = [types(second.run(e, follow=False)) for e in events[2:]]
    assert live[-1] == replayed[-1] == ["steps.step.rejected", "steps.budget.exceeded"]
    assert first.budget.executions["e1"].flags.orchestration is True


def test_a_flag_change_that_changes_nothing_records_nothing():
    log = Log()
    assert log.run(event(FlagsSet()), follow=False) == []
    assert log.run(event(FlagsSet(orchestration=True, caching=True)), follow=False) == []  # the defaults already
    assert log.run(event(BudgetSet(timezone="UTC")), follow=False) == []  # the default timezone already
    change = log.run(event(FlagsSet(caching=False)), follow=False)
    assert types(change) == ["steps.flags.updated"] and change[0].payload.old != change[0].payload.new


def test_flag_and_budget_changes_name_who_asked():
    log = Log()
    asked = new_event(TENANT, FlagsSet(routing=False), event_id=uuid.uuid4(), occurred_at=T0, recorded_at=T0,
                      actor="service:ops-bot")
    (flags,) = log.run(asked, follow=False)
    assert flags.payload.actor == "service:ops-bot" and flags.actor == "fold:steps"
    budget = new_event(TENANT, BudgetSet(scope="user", subject="u1", limit=Limit(tokens=5)), event_id=uuid.uuid4(),
                       occurred_at=T0, recorded_at=T0, actor="tenant:acme")
    (limit,) = log.run(budget, follow=False)
    assert limit.payload.actor == "tenant:acme"
