"""The step runner: intent handlers, routing, compression and caching measured with the model's own counts,
the savings ledger against the counterfactual call, fallbacks and failures; Anthropic through its real client
against a local fake server that answers with usage fields including cache tokens."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

import schemas.outbound  # noqa: F401 - the outbound domain is installed: a send step queues its message
from agents.llm import LlmClient, Usage
from agents.steps import intents
from agents.steps.config import Route, StepsSettings
from agents.steps.effects import StepRunner
from agents.steps.fold import FoldConfig, fold
from agents.steps.intents import (
    StepError,
    aggregate,
    compress,
    conditional,
    filter_items,
    route,
    savings,
    transform,
    validate,
)
from schemas import Envelope, UnknownEventType, new_event
from schemas.steps import ExecutionOpened, Flags, StepApproved, StepRequested
from streams.settings import Settings, loaded
from tests.fixtures.anthropic import FakeAnthropic, error_body

AT = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
ORDERS = {"orders": [{"sku": "A", "qty": 2, "price": 3.5, "status": "paid"},
                     {"sku": "B", "qty": 1, "price": 10.0, "status": "open"},
                     {"sku": "A", "qty": 5, "price": 3.5, "status": "paid"}]}
CONTEXT = "Company handbook. " + " ".join(f"Rule {i}: answer politely and cite the order number." for i in range(400))


def data(value) -> dict:
    return {"input": value, "steps": {}}


# ---- deterministic handlers (the examples of docs/steps.md) ----------------------------------------------------


def test_transform_filter_conditional_aggregate_over_json():
    assert transform(data(ORDERS), {"expression": "input.orders[].sku"}) == ["A", "B", "A"]
    paid = filter_items(data(ORDERS), {"items": "input.orders", "where": "status == 'paid'"})
    assert [o["qty"] for o in paid] == [2, 5]
    assert conditional(data(ORDERS), {"when": "length(input.orders) > `2`"}) == {"condition": True, "branch": "then"}
    totals = aggregate(data(ORDERS), {"items": "input.orders", "group_by": "sku",
                                      "metrics": {"n": {"op": "count"}, "units": {"op": "sum", "of": "qty"},
                                                  "avg_price": {"op": "avg", "of": "price"}}})
    assert totals == {"A": {"n": 2, "units": 7, "avg_price": 3.5}, "B": {"n": 1, "units": 1, "avg_price": 10.0}}


def test_validate_checks_json_schema_and_names_what_is_wrong():
    schema = {"type": "object", "required": ["orders"],
              "properties": {"orders": {"type": "array", "items": {"required": ["sku", "qty"]}}}}
    assert validate(data(ORDERS), {"schema": schema})["valid"] is True
    with pytest.raises(StepError, match="orders/1: 'qty' is a required property"):
        validate(data({"orders": [{"sku": "A", "qty": 1}, {"sku": "B"}]}), {"schema": schema})
    with pytest.raises(StepError, match="spec.schema"):
        validate(data({}), {"schema": {"type": "nonsense"}})


def test_bad_specs_are_step_errors():
    with pytest.raises(StepError, match="spec.expression"):
        transform(data({}), {"expression": "orders[?"})
    with pytest.raises(StepError, match="spec.items must select a list"):
        filter_items(data({"x": 1}), {"items": "input.x", "where": "@"})


def test_routing_table_by_intent_and_input_size():
    routes = [Route(intent="summarize", max_input_tokens=1000, model="small"), Route(intent="*", model="any"),
              Route(intent="extract", model="never")]
    assert route(routes, "summarize", 1000, "default") == "small"
    assert route(routes, "summarize", 1001, "default") == "any"
    assert route(routes, "extract", 5, "default") == "any"
    assert route([], "extract", 5, "default") == "default"


def test_compression_is_deterministic_and_lossless_for_repeated_keys():
    text = "Hello    world\n\n\n\nHello    world\nsecond   line  "
    assert compress(text, "Summarize:")[0] == "Summarize:\n\nHello world\n\nsecond line"
    prompt, applied = compress(ORDERS, "")
    assert '"columns":["sku","qty","price","status"]' in prompt and prompt.count('"sku"') == 1
    assert applied == ["json_keys", "json_whitespace"] and compress(ORDERS, "") == (prompt, applied)


def test_savings_levers_sum_to_the_counterfactual_minus_the_actual_cost():
    from schemas.steps import Plan

    config = loaded(StepsSettings)
    plan = Plan(model="claude-haiku-4-5", counterfactual_model="claude-sonnet-4-5", system="s", prompt="p",
                max_tokens=100, raw_tokens_counterfactual=1000, raw_tokens_routed=1000, compressed_tokens=700)
    usage = Usage(input_tokens=200, output_tokens=50, cache_read_input_tokens=500, cache_creation_input_tokens=0)
    compression, routing, caching, counterfactual, actual = savings(plan, usage, config.prices)
    assert compression.tokens == 1000 - 700 and routing.tokens == 0
    assert counterfactual == pytest.approx((1000 * 3 + 50 * 15) / 1e6)
    assert actual == pytest.approx((200 * 1 + 500 * 0.1 + 50 * 5) / 1e6)
    assert caching.usd == pytest.approx(500 * (1 - 0.1) / 1e6)
    assert compression.usd + routing.usd + caching.usd == pytest.approx(counterfactual - actual)


# ---- the runner against the fake Messages API ------------------------------------------------------------------


def requested(intent: str, value, *, spec: dict | None = None, flags: Flags = Flags(), context: str = "",
              token_budget: int | None = None, step_id: str = "s1") -> Envelope:
    payload = StepRequested(execution_id="x1", step_id=step_id, intent=intent, data=data(value), spec=spec or {},  # type: ignore[arg-type]
                            token_budget=token_budget, agent_id="a1", user_id="u1", context=context, flags=flags)
    return new_event("acme", payload, event_id=uuid.uuid4(), occurred_at=AT, recorded_at=AT, actor="test")


def approve(estimated: Envelope) -> Envelope:
    """The budget fold's approval of an estimate (no limits)."""
    opened = new_event("acme", ExecutionOpened(execution_id="x1", agent_id="a1", user_id="u1"),
                       event_id=uuid.uuid4(), occurred_at=AT, recorded_at=AT, actor="test")
    state, _ = fold(None, opened, FoldConfig())
    _, out = fold(state, estimated, FoldConfig())
    (approved,) = [e for e in out if e.type == "steps.step.approved"]
    return approved


def runner_for(fake: FakeAnthropic | None, **config) -> StepRunner:
    client = None if fake is None else LlmClient(Settings(anthropic_api_key=SecretStr("sk-test"),
                                                          anthropic_base_url=fake.base_url))
    return StepRunner(StepsSettings(**config), client, clock=lambda: AT)


async def run_step(runner: StepRunner, request: Envelope) -> tuple[Envelope, Envelope, list[Envelope]]:
    (estimated,) = await runner.run(request)
    approved = approve(estimated)
    return estimated, approved, await runner.run(approved)


def by_type(events: list[Envelope]) -> dict[str, object]:
    return {e.type: e.payload for e in events}


async def test_deterministic_step_costs_nothing_and_settles_executed():
    runner = runner_for(None)
    estimated, _, out = await run_step(runner, requested("transform", ORDERS, spec={"expression": "input.orders[0]"}))
    assert (estimated.payload.tokens, estimated.payload.usd, estimated.payload.plan) == (0, 0.0, None)
    events = by_type(out)
    assert events["steps.step.executed"].output["sku"] == "A"
    assert events["steps.reservation.settled"].outcome == "executed"
    assert out[0].stream_id == "execution:acme:x1" and out[1].stream_id == "budget:acme"


async def test_model_step_is_routed_compressed_cached_and_its_savings_come_from_usage():
    with FakeAnthropic(reply='{"total": 3}') as fake:
        runner = runner_for(fake)
        first = await run_step(runner, requested("extract", ORDERS, context=CONTEXT,
                                                 spec={"instruction": "Extract   the   total."}))
        second = await run_step(runner, requested("extract", ORDERS, context=CONTEXT, step_id="s2",
                                                  spec={"instruction": "Extract   the   total."}))
    estimated, approved, out = first
    plan = approved.payload.plan
    assert plan.model == "claude-haiku-4-5" and plan.counterfactual_model == "claude-sonnet-4-5"
    assert plan.cache_prefix and "json_keys" in plan.compression
    assert plan.compressed_tokens < plan.raw_tokens_routed == plan.raw_tokens_counterfactual
    calls = [r for r in fake.requests if r["path"] == "/v1/messages"]
    assert calls[0]["system"][-1]["cache_control"] == {"type": "ephemeral"} and calls[0]["model"] == "claude-haiku-4-5"
    one, two = by_type(out), by_type(second[2])
    executed = one["steps.step.executed"]
    assert executed.output == {"total": 3} and executed.cache_write_tokens > 0 and executed.cache_read_tokens == 0
    cached = two["steps.step.executed"]
    assert cached.cache_read_tokens == executed.cache_write_tokens and cached.cache_write_tokens == 0
    assert cached.caching.usd > 0 > executed.caching.usd  # a cache write costs more than plain input
    for step in (executed, cached):
        used_input = step.input_tokens + step.cache_read_tokens + step.cache_write_tokens
        assert step.compression.tokens == plan.raw_tokens_routed - used_input > 0
        assert step.compression.usd + step.routing.usd + step.caching.usd == pytest.approx(
            step.counterfactual_usd - step.cost_usd)
        assert step.routing.usd > 0
    # The reservation bounds what the call used, in tokens and in USD.
    settled = one["steps.reservation.settled"]
    assert settled.used_tokens <= approved.payload.reserved_tokens and settled.used_usd <= approved.payload.reserved_usd
    cost = one["llm.call.recorded"]
    assert cost.domain == "steps" and cost.purpose == "step:extract" and cost.cache_write_tokens > 0


@pytest.mark.parametrize("compression", [True, False])
@pytest.mark.parametrize("routing", [True, False])
@pytest.mark.parametrize("caching", [True, False])
async def test_flag_matrix_of_levers(compression, routing, caching):
    with FakeAnthropic(reply="summary") as fake:
        runner = runner_for(fake)
        flags = Flags(compression=compression, routing=routing, caching=caching)
        _, approved, out = await run_step(runner, requested("summarize", ORDERS, context=CONTEXT, flags=flags))
    plan = approved.payload.plan
    assert (plan.model == "claude-haiku-4-5") is routing
    assert bool(plan.compression) is compression
    assert plan.cache_prefix is caching
    executed = by_type(out)["steps.step.executed"]
    assert (executed.compression.tokens > 0) is compression
    assert (executed.routing.usd > 0) is routing
    assert (executed.cache_write_tokens > 0) is caching


async def test_orchestration_off_passes_the_plain_call_through():
    with FakeAnthropic(reply="text") as fake:
        _, approved, out = await run_step(runner_for(fake), requested(
            "generate", ORDERS, context=CONTEXT, flags=Flags(orchestration=False)))
    plan = approved.payload.plan
    assert (plan.model, plan.compression, plan.cache_prefix) == ("claude-sonnet-4-5", [], False)
    executed = by_type(out)["steps.step.executed"]
    assert executed.output == "text" and executed.compression.tokens == 0 == executed.routing.tokens


async def test_truncation_fits_the_step_budget_by_the_models_count():
    text = " ".join(f"word{i}" for i in range(3000))
    with FakeAnthropic(reply="short") as fake:
        estimated, approved, out = await run_step(runner_for(fake), requested(
            "summarize", text, token_budget=1000, spec={"max_tokens": 100}))
    assert "truncated" in approved.payload.plan.compression
    assert estimated.payload.tokens <= 1000
    assert "steps.step.executed" in by_type(out)


async def test_model_error_falls_back_to_the_deterministic_path_recorded_degraded():
    def answer(body):
        return 529, error_body("overloaded_error", "busy")

    with FakeAnthropic(responder=answer) as fake:
        _, _, out = await run_step(runner_for(fake), requested("summarize", "one two three four",
                                                               spec={"fallback": "input"}))
    events = by_type(out)
    assert events["steps.step.degraded"].fallback == "deterministic" and "529" in events["steps.step.degraded"].reason
    assert events["steps.step.executed"].output == "one two three four" and events["steps.step.executed"].degraded
    assert events["llm.call.recorded"].error and events["steps.reservation.settled"].used_tokens == 0


async def test_without_a_model_client_model_steps_run_their_fallback():
    _, _, out = await run_step(runner_for(None), requested("enrich", {"a": 1}, spec={"defaults": {"b": 2}}))
    events = by_type(out)
    assert events["steps.step.executed"].output == {"a": 1, "b": 2}
    assert "ANTHROPIC_API_KEY" in events["steps.step.degraded"].reason


async def test_a_failed_token_count_gives_a_byte_bound_marked_unavailable():
    def answer(body):
        return None

    with FakeAnthropic(responder=answer) as fake:
        runner = runner_for(fake)

        async def broken(**_kwargs):
            from agents.llm import LlmError
            raise LlmError("count down")

        runner.client.count_tokens = broken  # type: ignore[union-attr]
        (estimated,) = await runner.run(requested("extract", ORDERS))
    assert "count down" in estimated.payload.estimate_unavailable
    assert estimated.payload.tokens >= len(estimated.payload.plan.prompt.encode())


async def test_a_failing_handler_fails_the_step_with_its_stack_and_releases():
    runner = runner_for(None)
    _, _, out = await run_step(runner, requested("validate", {"x": 1}, spec={"schema": {"required": ["y"]}}))
    events = by_type(out)
    failed = events["steps.step.failed"]
    assert "'y' is a required property" in failed.error and "Traceback" in failed.stack
    assert failed.file.endswith("agents/steps/intents.py") and failed.line > 0
    assert events["steps.reservation.settled"].outcome == "failed"


async def test_a_step_past_its_timeout_fails_timed_out_and_releases(monkeypatch):
    runner = runner_for(None, step_timeout_s=0.01)

    async def slow(*_args):
        await asyncio.sleep(1)

    monkeypatch.setattr(runner, "_execute", slow)
    approved = approve((await runner.run(requested("transform", {}, spec={"expression": "@"})))[0])
    events = by_type(await runner.run(approved))
    assert events["steps.step.failed"].timed_out and events["steps.reservation.settled"].outcome == "timed_out"


def test_an_unknown_outcome_is_reported_failed_and_charged():
    runner = runner_for(None)
    approved = new_event("acme", StepApproved(execution_id="x1", step_id="s1", intent="send", agent_id="a1",
                                              user_id="u1", day="2026-12-01", reserved_tokens=10, reserved_usd=0.1),
                         event_id=uuid.uuid4(), occurred_at=AT, recorded_at=AT, actor="test")
    events = by_type(runner.unknown_outcome(approved))
    assert events["steps.step.failed"].outcome_unknown and events["steps.reservation.settled"].outcome == "unknown"


async def test_send_queues_an_outbound_message():
    _, _, out = await run_step(runner_for(None), requested("send", {"name": "Ana"}, spec={
        "message_type": "order_update", "fields_from": "input", "priority": "high"}))
    events = by_type(out)
    queued = events["outbound.message.queued"]
    assert (queued.user_id, queued.agent_id, queued.priority) == ("u1", "a1", "high")
    assert queued.message_data.type == "order_update" and queued.message_data.fields == {"name": "Ana"}
    assert events["steps.step.executed"].output["queued"] == "outbound"


async def test_send_replies_in_the_conversation_when_there_is_no_outbound_domain(monkeypatch):
    real = intents.registration

    def without_outbound(event_type):
        if event_type == "outbound.message.queued":
            raise UnknownEventType(event_type)
        return real(event_type)

    monkeypatch.setattr(intents, "registration", without_outbound)
    _, _, out = await run_step(runner_for(None), requested("send", {"text": "Hola"}, spec={
        "contact": "34600000001", "text_from": "input.text"}))
    events = by_type(out)
    reply = events["conversation.reply.requested"]
    assert (reply.contact, reply.text) == ("34600000001", "Hola")
    assert events["steps.step.executed"].output["queued"] == "conversation"


async def test_a_failed_model_call_marks_the_step_and_the_execution_degraded():
    """The runner's outcome events folded in log order: the execution shows the degradation and counts it."""
    from agents.steps.fold import ExecutionState
    from schemas.steps import ExecutionStarted, StepSpec

    def answer(body):
        return 529, error_body("overloaded_error", "busy")

    started = new_event("acme", ExecutionStarted(execution_id="x1", agent_id="a1", user_id="u1", steps=[
        StepSpec(step_id="s1", intent="summarize", input="one two three", spec={"fallback": "input"})]),
        event_id=uuid.uuid4(), occurred_at=AT, recorded_at=AT, actor="test")
    execution, opened = fold(None, started, FoldConfig())
    budget, (initialised,) = fold(None, opened[0], FoldConfig())
    execution, (request,) = fold(execution, initialised, FoldConfig())
    with FakeAnthropic(responder=answer) as fake:
        runner = runner_for(fake)
        (estimated,) = await runner.run(request)
        budget, (approved,) = fold(budget, estimated, FoldConfig())
        out = await runner.run(approved)
    execution, _ = fold(execution, approved, FoldConfig())
    emitted = []
    for envelope in [e for e in out if e.stream_id == "execution:acme:x1"]:
        execution, more = fold(execution, envelope, FoldConfig())
        emitted.extend(more)
    assert isinstance(execution, ExecutionState) and execution.status == "succeeded"
    (step,) = execution.steps
    assert step.output == "one two three" and len(step.degraded) == 1
    assert step.degraded[0].startswith("deterministic: model call failed") and "529" in step.degraded[0]
    assert execution.metrics["degraded"] == 1
    (completed,) = [e.payload for e in emitted if e.type == "steps.execution.completed"]
    assert completed.metrics["degraded"] == 1
    executed = by_type(out)["steps.step.executed"]
    assert (executed.fallback, executed.degraded_reason) == ("deterministic", step.degraded[0].split(": ", 1)[1])
