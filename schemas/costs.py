"""The cost ledger's events: one per LLM call anywhere in Baton, keyed by tenant and UTC day."""

from __future__ import annotations

from schemas.catalog import EventCatalog
from schemas.codec import register_catalog
from schemas.envelope import Payload


class LlmCallRecorded(Payload, frozen=True, kw_only=True):
    """A model call made by an effect: tokens from the response's usage fields, cost from the price table."""

    day: str  # UTC date of the call, ISO format: the ledger's key
    domain: str
    purpose: str  # routing, relevance, rendering, step:<intent>, plan, ...
    cause_stream_id: str
    model: str
    agent_id: str | None = None
    user_id: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    error: str | None = None  # the call failed; the caller fell back to its deterministic path


def costs_stream_id(tenant_id: str, day: str) -> str:
    return f"costs:{tenant_id}:{day}"


CATALOG = register_catalog(EventCatalog(
    domain="costs",
    events={"llm.call.recorded": LlmCallRecorded},
    ingestible=frozenset(),
    stream_id=lambda tenant_id, payload: costs_stream_id(tenant_id, payload.day),  # type: ignore[attr-defined]
))
