"""The shared LLM client against a real local HTTP fake, and the cost ledger it feeds."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from agents.costs.fold import fold as costs_fold
from agents.llm import (
    Completion,
    LlmClient,
    LlmError,
    Usage,
    cost_event,
    cost_usd,
    llm_client,
)
from projections.costs.readmodels import cost_rows
from schemas import new_event
from schemas.conversations import MessageReceived
from schemas.costs import LlmCallRecorded
from streams.settings import ModelPrice, Settings
from tests.fixtures.anthropic import FakeAnthropic, error_body
from tests.fixtures.folds import applied_once

fold = applied_once(costs_fold)

AT = datetime(2026, 12, 1, 23, 59, tzinfo=UTC)


def settings_for(fake: FakeAnthropic) -> Settings:
    return Settings(anthropic_api_key=SecretStr("sk-test"), anthropic_base_url=fake.base_url)


def cause():
    payload = MessageReceived(whatsapp_message_id="wamid.1", contact="34600000001", message_type="text", text="hola")
    return new_event("acme", payload, event_id=uuid.uuid4(), occurred_at=AT, recorded_at=AT, actor="test")


def test_no_api_key_means_no_client():
    assert llm_client(Settings()) is None


async def test_completion_reads_usage_and_prices_cache_tokens_apart():
    with FakeAnthropic(reply="Buenos días", model="claude-haiku-4-5-20251001") as fake:
        client = LlmClient(settings_for(fake))
        system = "You are a concierge. " * 20
        first = await client.complete(model="claude-haiku-4-5", system=system, max_tokens=50, cache_prefix=True,
                                      messages=[{"role": "user", "content": "hola"}])
        second = await client.complete(model="claude-haiku-4-5", system=system, max_tokens=50, cache_prefix=True,
                                       messages=[{"role": "user", "content": "hola"}])
        counted = await client.count_tokens(model="claude-haiku-4-5", system=system,
                                            messages=[{"role": "user", "content": "hola"}])
        await client.aclose()
    assert first.text == "Buenos días" and first.model == "claude-haiku-4-5-20251001"
    assert first.usage.cache_creation_input_tokens == 100 and first.usage.cache_read_input_tokens == 0
    assert second.usage.cache_read_input_tokens == 100 and second.usage.cache_creation_input_tokens == 0
    assert first.usage.input_tokens == second.usage.input_tokens == 1
    # Dated model ids take the price of their prefix; the cached call is cheaper.
    assert first.cost_usd == pytest.approx((1 * 1.0 + 2 * 5.0 + 100 * 1.25) / 1e6)
    assert second.cost_usd == pytest.approx((1 * 1.0 + 2 * 5.0 + 100 * 0.1) / 1e6)
    assert counted == 101
    assert fake.requests[0]["system"][-1]["cache_control"] == {"type": "ephemeral"}


async def test_api_errors_are_llm_errors():
    with FakeAnthropic(responder=lambda _body: (529, error_body("overloaded_error", "busy"))) as fake:
        client = LlmClient(settings_for(fake))
        with pytest.raises(LlmError, match="529"):
            await client.complete(model="claude-haiku-4-5", system="s", max_tokens=5,
                                  messages=[{"role": "user", "content": "x"}])
        await client.aclose()


def test_unknown_model_costs_nothing_rather_than_guessing():
    prices = {"claude-haiku-4-5": ModelPrice(input_usd_per_mtok=1.0)}
    assert cost_usd(prices, "someone-elses-model", Usage(input_tokens=1000)) == 0.0


def test_cost_events_fold_into_daily_groups_once_each():
    source = cause()
    completion = Completion(text="x", model="claude-haiku-4-5", cost_usd=0.002, latency_ms=12.0,
                            usage=Usage(input_tokens=100, output_tokens=20, cache_read_input_tokens=50))
    first = cost_event(source, 0, completion, domain="outbound", purpose="rendering", user_id="u1", occurred_at=AT)
    failed = cost_event(source, 1, None, domain="outbound", purpose="rendering", model="claude-haiku-4-5",
                        user_id="u1", error="anthropic 529", occurred_at=AT)
    assert first.stream_id == "costs:acme:2026-12-01" and first.type == "llm.call.recorded"
    assert first.event_id == cost_event(source, 0, completion, domain="outbound", purpose="rendering").event_id
    state = None
    for event in (first, failed, first):  # the redelivered first call counts once
        state, emitted = fold(state, event, None)
        assert emitted == []
    (row,) = list(cost_rows(state))
    assert row[0] == "acme:2026-12-01:outbound:claude-haiku-4-5::u1"
    assert row[7:] == (2, 1, 100, 20, 50, 0, 0.002)
    assert isinstance(failed.payload, LlmCallRecorded) and failed.payload.error == "anthropic 529"
