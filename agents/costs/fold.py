"""The cost ledger fold: per tenant and UTC day, call totals by (domain, model, agent, user)."""

from __future__ import annotations

import msgspec
from msgspec.structs import replace

from agents.batching import FoldState, StateCodec
from schemas import Envelope
from schemas.costs import LlmCallRecorded


class Totals(msgspec.Struct, kw_only=True):
    domain: str
    model: str
    agent_id: str | None
    user_id: str | None
    calls: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0


class CostDay(FoldState, kw_only=True):
    tenant_id: str
    day: str
    totals: list[Totals] = []


CODEC = StateCodec.json(CostDay)


def fold(state: CostDay | None, envelope: Envelope, _config: object) -> tuple[CostDay, list[Envelope]]:
    """Add one call to its group."""
    call: LlmCallRecorded = envelope.payload  # type: ignore[assignment]
    state = state or CostDay(tenant_id=envelope.tenant_id, day=call.day)
    group = (call.domain, call.model, call.agent_id, call.user_id)
    totals = [replace(t) for t in state.totals]
    current = next((t for t in totals if (t.domain, t.model, t.agent_id, t.user_id) == group), None)
    if current is None:
        current = Totals(domain=call.domain, model=call.model, agent_id=call.agent_id, user_id=call.user_id)
        totals.append(current)
    current.calls += 1
    current.failed += call.error is not None
    current.input_tokens += call.input_tokens
    current.output_tokens += call.output_tokens
    current.cache_read_tokens += call.cache_read_tokens
    current.cache_write_tokens += call.cache_write_tokens
    current.cost_usd = round(current.cost_usd + call.cost_usd, 9)
    return replace(state, totals=totals), []


