"""The costs read model on a real PostgreSQL: llm_costs rows from known calls, read back by column name."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from projections.costs.readmodels import LLM_COSTS
from schemas.costs import LlmCallRecorded
from tests.fixtures.folds import states_after

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def fold_calls(calls: list[LlmCallRecorded]) -> list:
    """The cost day after each call, folded with the domain's own folder."""
    return states_after("costs", [(T0, call, None) for call in calls])


def call(**fields) -> LlmCallRecorded:
    base = {"day": "2026-03-02", "domain": "outbound", "purpose": "rendering",
            "cause_stream_id": "outbound:acme:u1", "model": "claude-haiku"}
    return LlmCallRecorded(**{**base, **fields})


async def test_llm_costs_columns_by_name(project_rows) -> None:
    states = fold_calls([
        call(agent_id="agent-7", user_id="user-3", input_tokens=1000, output_tokens=200, cache_read_tokens=30,
             cache_write_tokens=4, cost_usd=0.0125),
        # Another group of the same day: no agent, no user, a failed call.
        call(domain="steps", model="claude-sonnet", purpose="step:plan", input_tokens=5, output_tokens=6,
             error="timeout"),
    ])
    await project_rows(LLM_COSTS, states[:1])  # the first group alone, then both groups
    rows = await project_rows(LLM_COSTS, states[-1:])
    assert len(rows) == 2
    by_domain = {r["domain"]: r for r in rows}

    first = by_domain["outbound"]
    assert first["id"] == "acme:2026-03-02:outbound:claude-haiku:agent-7:user-3"
    assert first["tenant_id"] == "acme"
    assert first["day"] == date(2026, 3, 2)
    assert first["model"] == "claude-haiku"
    assert first["agent_id"] == "agent-7"
    assert first["user_id"] == "user-3"
    assert (first["calls"], first["failed"]) == (1, 0)
    assert (first["input_tokens"], first["output_tokens"]) == (1000, 200)
    assert (first["cache_read_tokens"], first["cache_write_tokens"]) == (30, 4)
    assert first["cost_usd"] == Decimal("0.0125")

    second = by_domain["steps"]
    assert second["id"] == "acme:2026-03-02:steps:claude-sonnet::"
    assert (second["model"], second["agent_id"], second["user_id"]) == ("claude-sonnet", None, None)
    assert (second["calls"], second["failed"]) == (1, 1)
    assert (second["input_tokens"], second["output_tokens"]) == (5, 6)
    assert (second["cache_read_tokens"], second["cache_write_tokens"]) == (0, 0)
    assert second["cost_usd"] == Decimal(0)


async def test_llm_costs_row_is_upserted_with_the_new_totals(project_rows) -> None:
    first_call = call(agent_id="agent-7", input_tokens=100, output_tokens=10, cache_read_tokens=3,
                      cache_write_tokens=1, cost_usd=0.5)
    later_call = call(agent_id="agent-7", input_tokens=20, output_tokens=7, cache_read_tokens=9,
                      cache_write_tokens=2, cost_usd=0.25, error="rate limited")
    before, after = fold_calls([first_call, later_call])
    (row,) = await project_rows(LLM_COSTS, [before])
    assert (row["calls"], row["failed"], row["input_tokens"], row["output_tokens"]) == (1, 0, 100, 10)

    (row,) = await project_rows(LLM_COSTS, [after])
    assert row["id"] == "acme:2026-03-02:outbound:claude-haiku:agent-7:"
    assert (row["agent_id"], row["user_id"]) == ("agent-7", None)
    assert (row["calls"], row["failed"]) == (2, 1)
    assert (row["input_tokens"], row["output_tokens"]) == (120, 17)
    assert (row["cache_read_tokens"], row["cache_write_tokens"]) == (12, 3)
    assert row["cost_usd"] == Decimal("0.75")
