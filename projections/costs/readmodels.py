"""Cost-ledger read-model rows: one llm_costs row per (tenant, day, domain, model, agent, user)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

from agents.costs.fold import CostDay
from projections.readmodel import ReadModel


def cost_rows(state: CostDay) -> Iterator[tuple]:
    """The llm_costs rows of one tenant-day."""
    day = date.fromisoformat(state.day)
    for t in state.totals:
        key = ":".join((state.tenant_id, state.day, t.domain, t.model, t.agent_id or "", t.user_id or ""))
        yield (key, state.tenant_id, day, t.domain, t.model, t.agent_id, t.user_id, t.calls, t.failed,
               t.input_tokens, t.output_tokens, t.cache_read_tokens, t.cache_write_tokens, t.cost_usd)


LLM_COSTS = ReadModel(
    table="llm_costs",
    columns=(
        ("id", "text"), ("tenant_id", "text"), ("day", "date"), ("domain", "text"), ("model", "text"),
        ("agent_id", "text"), ("user_id", "text"), ("calls", "integer"), ("failed", "integer"),
        ("input_tokens", "bigint"), ("output_tokens", "bigint"), ("cache_read_tokens", "bigint"),
        ("cache_write_tokens", "bigint"), ("cost_usd", "numeric"),
    ),
    rows=cost_rows,
)
