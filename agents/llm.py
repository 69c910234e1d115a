"""The one effect-side LLM client (Anthropic Messages API) and the cost event every call records.

Every model call in Baton (routing, relevance, rendering, steps, plans) goes through `LlmClient`; the effect that
made it returns `cost_event(...)` among its result events, so the shared cost ledger (the costs domain) holds
model, tokens from the response's usage fields, cost from the price table, latency and the cause of each call.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx2
import msgspec

from agents.errors import AgentError
from schemas import Envelope, emitted
from schemas.costs import LlmCallRecorded
from streams.settings import ModelPrice, Settings


class LlmError(AgentError):
    """A model call that gave no usable answer (API error, timeout, refusal to parse)."""


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Token counts as the API reports them (never estimated from characters)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    """One model answer with what it cost."""

    text: str
    model: str
    usage: Usage
    cost_usd: float
    latency_ms: float


def price_of(prices: dict[str, ModelPrice], model: str) -> ModelPrice:
    """The price of a model: exact name, else the longest configured prefix (dated model ids), else zero."""
    if model in prices:
        return prices[model]
    matches = [name for name in prices if model.startswith(name)]
    return prices[max(matches, key=len)] if matches else ModelPrice()


def cost_usd(prices: dict[str, ModelPrice], model: str, usage: Usage) -> float:
    """USD of one call; cache reads and writes priced apart from plain input."""
    price = price_of(prices, model)
    return (
        usage.input_tokens * price.input_usd_per_mtok
        + usage.output_tokens * price.output_usd_per_mtok
        + usage.cache_read_input_tokens * price.cache_read_usd_per_mtok
        + usage.cache_creation_input_tokens * price.cache_write_usd_per_mtok
    ) / 1_000_000


class LlmClient:
    """Anthropic's async client with Baton's timeout, price table and error type; no retries (callers fall back)."""

    def __init__(self, settings: Settings, *, http_client: httpx2.AsyncClient | None = None,
                 timeout_s: float | None = None, max_retries: int = 0) -> None:
        if settings.anthropic_api_key is None:
            raise LlmError("ANTHROPIC_API_KEY is not set")
        self.prices = settings.llm_prices
        self.timeout_s = timeout_s or settings.llm_timeout_s
        self._client = anthropic.AsyncAnthropic(
            api_key=settings.anthropic_api_key.get_secret_value(), base_url=settings.anthropic_base_url,
            timeout=self.timeout_s, max_retries=max_retries, http_client=http_client,
        )

    async def complete(self, *, model: str, system: str | list[dict[str, Any]], messages: list[dict[str, Any]],
                       max_tokens: int, cache_prefix: bool = False, timeout_s: float | None = None) -> Completion:
        """One Messages API call; `cache_prefix` marks the system prompt as a cacheable prefix."""
        if cache_prefix:
            blocks = [{"type": "text", "text": system}] if isinstance(system, str) else [dict(b) for b in system]
            blocks[-1]["cache_control"] = {"type": "ephemeral"}
            system = blocks
        started = time.perf_counter()
        try:
            message = await self._client.messages.create(
                model=model, max_tokens=max_tokens, system=system, messages=messages,  # type: ignore[arg-type]
                timeout=timeout_s or self.timeout_s,
            )
        except anthropic.APIStatusError as exc:
            raise LlmError(f"anthropic {exc.status_code}: {exc.message}") from exc
        except anthropic.AnthropicError as exc:
            raise LlmError(f"anthropic: {type(exc).__name__}: {exc}") from exc
        latency_ms = (time.perf_counter() - started) * 1000
        usage = _usage(message.usage)
        text = "".join(block.text for block in message.content if block.type == "text")
        return Completion(text=text, model=message.model, usage=usage,
                          cost_usd=cost_usd(self.prices, message.model, usage), latency_ms=latency_ms)

    async def count_tokens(self, *, model: str, system: str | list[dict[str, Any]],
                           messages: list[dict[str, Any]]) -> int:
        """Input tokens the model would count for this request (the token-counting endpoint)."""
        try:
            counted = await self._client.messages.count_tokens(
                model=model, system=system, messages=messages,  # type: ignore[arg-type]
            )
        except anthropic.AnthropicError as exc:
            raise LlmError(f"anthropic count_tokens: {type(exc).__name__}: {exc}") from exc
        return counted.input_tokens

    def cost_usd(self, model: str, usage: Usage) -> float:
        """USD of a call with this usage at the configured prices."""
        return cost_usd(self.prices, model, usage)

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._client.close()


def llm_client(settings: Settings, **options: Any) -> LlmClient | None:
    """The configured client, or None when no ANTHROPIC_API_KEY is set (callers use their deterministic path)."""
    return LlmClient(settings, **options) if settings.anthropic_api_key is not None else None


def _usage(usage: Any) -> Usage:
    return Usage(
        input_tokens=usage.input_tokens or 0,
        output_tokens=usage.output_tokens or 0,
        cache_read_input_tokens=getattr(usage, "cache_read_input_tokens", None) or 0,
        cache_creation_input_tokens=getattr(usage, "cache_creation_input_tokens", None) or 0,
    )


def cost_event(cause: Envelope, index: int, completion: Completion | None, *, domain: str, purpose: str,
               model: str | None = None, agent_id: str | None = None, user_id: str | None = None,
               error: str | None = None, occurred_at: datetime | None = None) -> Envelope:
    """The `llm.call.recorded` event of one call caused by `cause` (a failed call: completion None, error set).

    Its id derives from the cause and index like any emission, so a re-run effect records the call once.
    """
    at = occurred_at or datetime.now(UTC)
    usage = completion.usage if completion else Usage()
    payload = LlmCallRecorded(
        day=at.astimezone(UTC).date().isoformat(),
        domain=domain,
        purpose=purpose,
        cause_stream_id=cause.stream_id,
        model=completion.model if completion else (model or "unknown"),
        agent_id=agent_id,
        user_id=user_id,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_input_tokens,
        cache_write_tokens=usage.cache_creation_input_tokens,
        cost_usd=completion.cost_usd if completion else 0.0,
        latency_ms=completion.latency_ms if completion else 0.0,
        error=error,
    )
    return emitted(cause, index, payload, actor=f"effect:{domain}", occurred_at=at)
