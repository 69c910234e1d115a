"""The steps read models on a real PostgreSQL: rows projected from known events, read back by column name.

Tenant acme lives in Madrid (UTC+1 in March), so its budget day of 2026-03-01 23:30Z is 2026-03-02.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from projections.steps.readmodels import BUDGET_DAYS, EXECUTIONS, TENANTS
from schemas import Payload
from schemas.steps import (
    BudgetSet,
    ExecutionInitialised,
    ExecutionOpened,
    ExecutionStarted,
    Flags,
    FlagsSet,
    Limit,
    ReservationSettled,
    StepEstimated,
    StepExecuted,
    StepFailed,
    StepSpec,
)
from tests.fixtures.folds import states_after

pytestmark = pytest.mark.integration


def utc(hhmm: str) -> datetime:
    return datetime(2026, 3, 1, int(hhmm[:2]), int(hhmm[3:]), tzinfo=UTC)


def fold_all(events: list[tuple[str, Payload]]) -> list:
    """The state after each event (one stream), folded with the domain's own folder."""
    return states_after("steps", [(utc(when), payload, None) for when, payload in events])


def budget_story() -> list:
    def estimate(step_id: str, tokens: int, usd: float) -> StepEstimated:
        return StepEstimated(execution_id="ex-1", step_id=step_id, intent="extract", agent_id="agent-7",
                             user_id="user-3", tokens=tokens, usd=usd)

    return fold_all([
        ("23:00", BudgetSet(timezone="Europe/Madrid")),
        ("23:01", BudgetSet(scope="user", subject="user-3", limit=Limit(tokens=9000, usd=1.5))),
        ("23:02", FlagsSet(caching=False, fail_open=True)),
        ("23:30", ExecutionOpened(execution_id="ex-1", agent_id="agent-7", user_id="user-3", token_budget=5000,
                                  usd_budget=0.25)),
        ("23:31", estimate("s1", 300, 0.004)),  # approved: reserved in every scope
        ("23:32", ReservationSettled(execution_id="ex-1", step_id="s1", day="2026-03-02", outcome="executed",
                                     user_id="user-3", agent_id="agent-7", used_tokens=120, used_usd=0.001,
                                     model="claude-haiku-4-5", tokens_saved=50, usd_saved=0.0007)),
        ("23:33", estimate("s2", 70, 0.0003)),  # approved, still reserved at the end
        ("23:34", estimate("s3", 6000, 0.01)),  # over the execution's 5000 tokens: rejected
        ("23:35", estimate("s4", 7000, 0.01)),  # rejected too
        ("23:36", ExecutionOpened(execution_id="ex-2", agent_id="agent-7", user_id="user-3")),
    ])


async def test_steps_executions_columns_by_name(project_rows) -> None:
    states = fold_all([
        ("23:30", ExecutionStarted(execution_id="ex-1", agent_id="agent-7", user_id="user-3", token_budget=5000,
                                   usd_budget=0.25, steps=[StepSpec(step_id="s1", intent="extract", input="Ana, 34"),
                                                           StepSpec(step_id="s2", intent="validate", depends_on=["s1"])])),
        ("23:31", ExecutionInitialised(execution_id="ex-1", flags=Flags(routing=False),
                                       limit=Limit(tokens=4000, usd=0.2))),
        ("23:32", StepExecuted(execution_id="ex-1", step_id="s1", intent="extract", output={"name": "Ana"},
                               model="claude-haiku-4-5", input_tokens=100, output_tokens=20, cost_usd=0.001)),
        ("23:33", StepFailed(execution_id="ex-1", step_id="s2", intent="validate", error="schema mismatch")),
    ])
    (row,) = await project_rows(EXECUTIONS, [states[1]])
    assert (row["status"], row["completed_at"]) == ("running", None)
    assert [(s["step_id"], s["status"]) for s in row["steps"]] == [("s1", "requested"), ("s2", "waiting")]

    (invalid,) = fold_all([("22:00", ExecutionStarted(execution_id="ex-0", agent_id="agent-9", user_id="user-5",
                                                      steps=[]))])
    bad, row = await project_rows(EXECUTIONS, [invalid, states[-1]])  # ex-1 upserted, ex-0 inserted
    assert (row["stream_id"], row["tenant_id"], row["execution_id"]) == ("execution:acme:ex-1", "acme", "ex-1")
    assert (row["agent_id"], row["user_id"]) == ("agent-7", "user-3")
    assert row["status"] == "failed"
    assert (row["started_at"], row["completed_at"]) == (utc("23:30"), utc("23:33"))
    assert row["error"] is None  # a failed step is the step's error, not the execution's
    assert (row["token_budget"], row["usd_budget"]) == (4000, 0.2)  # the limit as the budget stream opened it
    assert row["flags"] == {"orchestration": True, "compression": True, "routing": False, "caching": True,
                            "fail_open": False, "degrade_over_budget": False}
    assert [(s["step_id"], s["status"], s["model"], s["output"], s["error"]) for s in row["steps"]] == [
        ("s1", "executed", "claude-haiku-4-5", {"name": "Ana"}, None), ("s2", "failed", None, None, "schema mismatch")]
    metrics = row["metrics"]
    assert (metrics["steps"], metrics["executed"], metrics["failed"]) == (2, 1, 1)
    assert (metrics["input_tokens"], metrics["output_tokens"], metrics["cost_usd"]) == (100, 20, 0.001)

    assert (bad["stream_id"], bad["execution_id"], bad["agent_id"], bad["user_id"]) == (
        "execution:acme:ex-0", "ex-0", "agent-9", "user-5")
    assert (bad["status"], bad["error"]) == ("invalid", "steps: at least one step is needed")
    assert (bad["started_at"], bad["completed_at"]) == (utc("22:00"), utc("22:00"))
    assert (bad["token_budget"], bad["usd_budget"], bad["flags"], bad["steps"]) == (None, None, None, [])


async def test_steps_budget_days_columns_by_name(project_rows) -> None:
    states = budget_story()
    await project_rows(BUDGET_DAYS, [states[4]])  # s1 reserved; then the final state upserts the rows
    rows = {r["row_key"]: r for r in await project_rows(BUDGET_DAYS, [states[-1]])}
    prefix = "acme:2026-03-02:"
    assert sorted(rows) == [f"{prefix}agent:agent-7", f"{prefix}model:claude-haiku-4-5", f"{prefix}tenant:acme",
                            f"{prefix}user:user-3"]
    user = rows[f"{prefix}user:user-3"]
    assert (user["tenant_id"], user["day"], user["scope"], user["subject"]) == ("acme", date(2026, 3, 2), "user", "user-3")
    assert (user["limit_tokens"], user["limit_usd"]) == (9000, 1.5)
    assert (user["used_tokens"], user["used_usd"]) == (120, 0.001)
    assert (user["reserved_tokens"], user["reserved_usd"]) == (70, 0.0003)
    assert (user["steps"], user["rejected"]) == (1, 2)
    assert (user["tokens_saved"], user["usd_saved"]) == (50, 0.0007)

    agent = rows[f"{prefix}agent:agent-7"]
    assert (agent["scope"], agent["subject"], agent["limit_tokens"], agent["limit_usd"]) == ("agent", "agent-7", None, None)
    assert (agent["used_tokens"], agent["reserved_tokens"], agent["steps"], agent["rejected"]) == (120, 70, 1, 2)

    model = rows[f"{prefix}model:claude-haiku-4-5"]
    assert (model["scope"], model["subject"]) == ("model", "claude-haiku-4-5")
    assert (model["used_tokens"], model["used_usd"], model["reserved_tokens"], model["reserved_usd"]) == (120, 0.001, 0, 0)
    assert (model["steps"], model["rejected"], model["tokens_saved"], model["usd_saved"]) == (1, 0, 50, 0.0007)


async def test_steps_tenants_columns_by_name(project_rows) -> None:
    states = budget_story()
    (row,) = await project_rows(TENANTS, [states[0]])
    assert (row["flags"], row["timezone"], row["limits"]) == (None, "Europe/Madrid", {})
    assert (row["reservations"], row["open_executions"]) == (0, 0)

    (row,) = await project_rows(TENANTS, [states[-1]])  # upserted
    assert row["tenant_id"] == "acme"
    assert row["flags"] == {"orchestration": True, "compression": True, "routing": True, "caching": False,
                            "fail_open": True, "degrade_over_budget": False}
    assert row["timezone"] == "Europe/Madrid"
    assert row["limits"] == {"user:user-3": {"tokens": 9000, "usd": 1.5}}
    assert (row["reservations"], row["open_executions"]) == (1, 2)  # s2 reserved; ex-1 and ex-2 open
