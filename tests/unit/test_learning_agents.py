"""The signals effect against fake agents that are real HTTP servers: retries, 304, timeouts, cache and plans."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from agents.learning.config import LearningSettings
from agents.learning.effects import SignalsEffect
from schemas import Envelope, new_event
from schemas.costs import LlmCallRecorded
from schemas.learning import (
    AgentSignal,
    CachedSignal,
    DayPlanned,
    IntentSnapshot,
    SignalsRequested,
    planned_event_id,
)
from streams.settings import Settings
from tests.fixtures.anthropic import FakeAnthropic
from tests.fixtures.learning_agents import ADVICE, AGENTS, FakeAgents, Reply


@pytest.fixture
def agents() -> Iterator[FakeAgents]:
    with FakeAgents() as fake:
        yield fake


def quick_options(fake: FakeAgents, **overrides: Any) -> LearningSettings:
    """Tiny delays so retries and timeouts take milliseconds."""
    return LearningSettings(**{"agents": fake.env, "freshness_s": "", "default_freshness_s": 0, "backoff_s": 0.01,
                               "agent_timeout_s": 0.5, "signals_deadline_s": 5, **overrides})


def request(cached: list[CachedSignal] | None = None, at: datetime | None = None) -> Envelope:
    at = at or datetime.now(UTC)
    intent = IntentSnapshot(intent_id=uuid.uuid4(), topic="Machine Learning", depth="informed",
                            end_goal="Build production ML models", time_per_day_min=60, user_tz="America/New_York")
    payload = SignalsRequested(learner="ada", request_event_id=uuid.uuid4(), session_id=uuid.uuid4(), week=1, day=3,
                               intent=intent, cached=cached or [])
    return new_event("acme", payload, event_id=uuid.uuid4(), occurred_at=at, recorded_at=at, actor="fold:learning")


def split(events: list[Envelope]) -> tuple[dict[str, AgentSignal], DayPlanned, list[Envelope]]:
    """Every agent's signal (carried by the plan), the plan, and the other events (costs)."""
    (plan,) = [e.payload for e in events if isinstance(e.payload, DayPlanned)]
    rest = [e for e in events if not isinstance(e.payload, DayPlanned)]
    return {s.agent: s for s in plan.signals}, plan, rest


def cached_from(signals: dict[str, AgentSignal], at: datetime) -> list[CachedSignal]:
    return [CachedSignal(agent=s.agent, data=s.data, etag=s.etag, fetched_at=at, validated_at=at)
            for s in signals.values() if s.status == "fetched"]


async def test_agents_are_called_in_parallel_with_an_agent_token_idempotency_key_and_a_template_plan(agents):
    for name in AGENTS:
        agents.push(name, Reply(delay_s=0.3, body={"ok": True, "data": ADVICE[name]}, headers={"ETag": '"x"'}))
    settings = Settings()
    effect = SignalsEffect(settings, quick_options(agents))
    ask = request()
    events = await effect.run(ask)
    assert agents.most_in_flight == 4  # the four agents were asked together
    signals, plan, rest = split(events)
    assert rest == []  # no model configured: no cost event
    assert {s.status for s in signals.values()} == {"fetched"} and all(s.attempts == 1 for s in signals.values())
    assert events[-1].event_id == planned_event_id(ask.event_id)
    assert plan.composer == "template" and not plan.degraded_mode and (plan.cache_hits, plan.cache_misses) == (0, 4)
    assert plan.plan_json_summary.title == "Neural Network Fundamentals"
    assert plan.plan_json_summary.description == "Deep dive into neural network architecture"
    assert plan.plan_json_summary.steps == ["Review basics", "Implement a simple NN", "Test with data",
                                            "Why does backprop need the chain rule?"]
    assert plan.plan_md.startswith("# Daily Learning Plan\n\n## Today's Focus: Neural Network Fundamentals")
    call = agents.calls("clo")[0]
    claims = jwt.decode(call["headers"]["authorization"].removeprefix("Bearer "), settings.jwt_keys[0],
                        algorithms=["HS256"], audience="baton-api")
    # An agent token: the one learner, reads only (a service token would act for every learner and operation).
    assert claims["tenant_id"] == "acme" and claims["scope"] == "agent" and claims["sub"] == "ada"
    assert call["headers"]["x-idempotency-key"] == f"{ask.payload.session_id}:clo"
    assert call["body"]["user_id"] == "ada" and call["body"]["intent"]["topic"] == "Machine Learning"
    assert "if-none-match" not in call["headers"]
    await effect.aclose()


async def test_a_429_waits_for_retry_after_and_a_503_backs_off_then_both_succeed(agents):
    agents.push("clo", Reply(429, {"ok": False, "error": "slow down", "code": "rate_limited"}, {"Retry-After": "0.2"}))
    agents.push("alex", Reply(503, {"ok": False, "error": "busy"}), Reply(502, None))
    effect = SignalsEffect(Settings(), quick_options(agents, backoff_s=0.05))
    signals, plan, _ = split(await effect.run(request()))
    first, second = agents.calls("clo")
    assert second["at"] - first["at"] >= 0.2  # Retry-After was honoured
    assert (signals["clo"].status, signals["clo"].attempts) == ("fetched", 2)
    assert (signals["alex"].status, signals["alex"].attempts) == ("fetched", 3)
    assert not plan.degraded_mode
    await effect.aclose()


async def test_5xx_gives_up_after_the_configured_attempts_and_the_plan_is_degraded(agents):
    agents.push("ta", *[Reply(500, {"ok": False, "error": "boom"})] * 5)
    effect = SignalsEffect(Settings(), quick_options(agents, agent_attempts=3))
    signals, plan, _ = split(await effect.run(request()))
    assert (signals["ta"].status, signals["ta"].attempts, signals["ta"].code) == ("failed", 3, "unavailable")
    assert signals["ta"].available is False
    assert plan.degraded_mode and plan.signal_quality["ta"].available is False
    assert (plan.cache_hits, plan.cache_misses) == (0, 4)
    await effect.aclose()


async def test_304_reuses_the_cached_signal_and_a_timeout_falls_back_to_the_cache(agents):
    effect = SignalsEffect(Settings(), quick_options(agents, agent_timeout_s=0.3))
    first, _, _ = split(await effect.run(request()))
    earlier = datetime.now(UTC) - timedelta(hours=1)
    agents.push("ta", Reply(delay_s=1.0, body={"ok": True, "data": {}}))
    signals, plan, _ = split(await effect.run(request(cached_from(first, earlier))))
    clo_call = agents.calls("clo")[-1]
    assert clo_call["headers"]["if-none-match"] == agents.etag("clo")
    assert (signals["clo"].status, signals["clo"].from_cache, signals["clo"].fresh) == ("not_modified", True, True)
    assert signals["clo"].validated_at > earlier
    ta = signals["ta"]
    assert (ta.status, ta.code, ta.available, ta.fresh, ta.from_cache) == ("failed", "timeout", True, False, True)
    assert plan.degraded_mode and (plan.cache_hits, plan.cache_misses) == (4, 0)
    assert (plan.signal_quality["ta"].available, plan.signal_quality["ta"].fresh) == (True, False)
    assert "Test with data" in plan.plan_json_summary.steps  # the cached ta signal still shapes the plan
    await effect.aclose()


async def test_a_signal_within_its_freshness_window_is_not_fetched(agents):
    effect = SignalsEffect(Settings(), quick_options(agents, freshness_s="clo=3600"))
    first, _, _ = split(await effect.run(request()))
    calls = len(agents.calls("clo"))
    now = datetime.now(UTC)
    signals, plan, _ = split(await effect.run(request(cached_from(first, now - timedelta(minutes=5)), at=now)))
    assert len(agents.calls("clo")) == calls
    assert (signals["clo"].status, signals["clo"].attempts, signals["clo"].fresh) == ("cached", 0, True)
    assert signals["alex"].status == "not_modified" and plan.cache_hits == 4
    await effect.aclose()


async def test_a_forced_refresh_revalidates_every_fresh_signal_with_its_etag(agents):
    from msgspec.structs import replace

    effect = SignalsEffect(Settings(), quick_options(agents, freshness_s=",".join(f"{n}=3600" for n in AGENTS)))
    first, _, _ = split(await effect.run(request()))
    now = datetime.now(UTC)
    cached = cached_from(first, now - timedelta(minutes=5))  # fresh for every agent
    calls = {name: len(agents.calls(name)) for name in AGENTS}
    # Unforced, fresh signals are served without asking anyone.
    signals, _, _ = split(await effect.run(request(cached, at=now)))
    assert {s.status for s in signals.values()} == {"cached"} and all(
        len(agents.calls(name)) == calls[name] for name in AGENTS)
    # Forced: every agent is asked with its cached ETag; an unchanged one answers 304, a changed one 200.
    agents.data["alex"] = {"advice": "Start from gradient descent"}
    plain = request(cached, at=now)
    forced = replace(plain, payload=replace(plain.payload, force_refresh=True))
    signals, plan, _ = split(await effect.run(forced))
    for name in AGENTS:
        (call,) = agents.calls(name)[calls[name]:]
        assert call["headers"]["if-none-match"] == next(c.etag for c in cached if c.agent == name)
    assert {name: s.status for name, s in signals.items()} == {
        "clo": "not_modified", "alex": "fetched", "ta": "not_modified", "socratic": "not_modified"}
    assert all(s.fresh and s.validated_at > now - timedelta(minutes=1) for s in signals.values())
    assert (signals["alex"].data, signals["alex"].etag) == (agents.data["alex"], agents.etag("alex"))
    assert not plan.degraded_mode and (plan.cache_hits, plan.cache_misses) == (3, 1)
    assert plan.plan_json_summary.description == "Start from gradient descent"  # the 200 replaced the signal
    await effect.aclose()


async def test_unconfigured_and_failing_agents_give_a_fallback_plan(agents):
    for name in AGENTS[1:]:
        agents.push(name, Reply(400, {"ok": False, "error": "bad learner", "code": "invalid"}))
    options = quick_options(agents, agents=f"clo=,{','.join(f'{n}={agents.url(n)}' for n in AGENTS[1:])}")
    signals, plan, _ = split(await SignalsEffect(Settings(), options).run(request()))
    assert signals["clo"].status == "unconfigured" and signals["alex"].code == "invalid"
    assert signals["alex"].attempts == 1  # a 4xx is the agent's answer: not retried
    assert plan.degraded_mode and plan.plan_json_summary.steps[0].startswith("Review what you already know")


async def test_the_model_composes_the_plan_and_its_cost_is_recorded(agents):
    answer = json.dumps({"title": "Backprop by hand", "description": "Derive it", "steps": ["Derive", "Code"],
                         "plan_md": "# Backprop by hand"})
    with FakeAnthropic(reply=answer) as model:
        settings = Settings(anthropic_api_key="sk-test", anthropic_base_url=model.base_url)
        signals, plan, rest = split(await SignalsEffect(settings, quick_options(agents)).run(request()))
        (prompt,) = [r for r in model.requests if r["path"].startswith("/v1/messages")]
    assert plan.composer == "llm" and plan.plan_json_summary.title == "Backprop by hand"
    assert plan.plan_md == "# Backprop by hand"
    assert "Neural Network Fundamentals" in prompt["messages"][0]["content"]
    (cost,) = rest
    assert isinstance(cost.payload, LlmCallRecorded) and cost.payload.domain == "learning"
    assert cost.payload.user_id == "ada" and cost.payload.output_tokens > 0 and cost.payload.error is None


async def test_an_unusable_model_answer_falls_back_to_the_template_and_records_the_error(agents):
    with FakeAnthropic(reply="Sure! Here is a plan: study.") as model:
        settings = Settings(anthropic_api_key="sk-test", anthropic_base_url=model.base_url)
        _, plan, (cost,) = split(await SignalsEffect(settings, quick_options(agents)).run(request()))
    assert plan.composer == "template" and plan.plan_json_summary.title == "Neural Network Fundamentals"
    assert cost.payload.error == "the model's answer is not a plan"
