"""Effects.run: routing with LLM or rules fallback, answers, tickets, sending; deterministic ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from agents.conversations.effects import EFFECT_TYPES, UNKNOWN_TENANT_REPLY, Effects
from agents.conversations.fold import FoldConfig, count_duplicate
from agents.conversations.fold import fold as conversation_fold
from agents.conversations.responders import ticket_id_for
from agents.conversations.routing import LaneChoice, LaneModel, RoutingError
from agents.llm import Completion, LlmClient, Usage
from agents.senders import LogSender, SendError
from agents.tenants import load_tenants
from schemas import Envelope, derived_event_id, source_event_id
from schemas.conversations import MessageReceived, conversation_stream_id
from streams.settings import Settings
from tests.fixtures.anthropic import FakeAnthropic
from tests.fixtures.folds import applied_once

fold = applied_once(conversation_fold, on_duplicate=count_duplicate)

TENANTS = load_tenants(Path(__file__).resolve().parents[2] / "examples" / "tenants.toml")
CONTACT = "34600111222"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 3, 2, 9, 0, 2, tzinfo=UTC)


def inbound(text: str, tenant: str = "acme", wamid: str = "wamid.in.1") -> Envelope:
    event_id = source_event_id(tenant, "whatsapp", wamid)
    return Envelope(
        event_id=event_id, type="conversation.message.received", schema_version=1, tenant_id=tenant,
        stream_id=conversation_stream_id(tenant, CONTACT), occurred_at=T0, recorded_at=T0,
        correlation_id=event_id, actor="ingest:whatsapp",
        payload=MessageReceived(contact=CONTACT, whatsapp_message_id=wamid, message_type="text", text=text),
    )


def routing_request(text: str, tenant: str = "acme") -> tuple[Envelope, Envelope]:
    """An inbound message and the routing request the fold emits for it."""
    message = inbound(text, tenant)
    _, out = fold(None, message, FoldConfig())
    return message, out[-1]


class FailingClassifier:
    model = "claude-haiku-4-5"

    async def classify(self, text: str) -> LaneChoice:
        raise RoutingError("anthropic 529: Overloaded")


class FixedClassifier:
    model = "claude-haiku-4-5"

    def __init__(self, lane: str) -> None:
        self.lane = lane

    async def classify(self, text: str) -> LaneChoice:
        return LaneChoice(self.lane, Completion(text=self.lane, model="claude-haiku-4-5-20251001", cost_usd=0.000135,
                                                latency_ms=40.0, usage=Usage(input_tokens=130, output_tokens=1)))


class RefusingSender:
    name = "whatsapp"

    async def send(self, tenant, contact, text, reply_event_id) -> str:
        raise SendError("whatsapp 400: Recipient phone number not in allowed list (code 131030)")


def effects(classifier=None, sender=None, now: datetime = NOW) -> Effects:
    return Effects(TENANTS, sender or LogSender(), classifier, clock=lambda: now)


async def test_without_a_model_one_run_routes_answers_and_sends_as_one_event():
    message, request = routing_request("¿Cuál es el horario?")
    (answered,) = await effects().run(request)

    assert answered.type == "conversation.message.answered"
    p = answered.payload
    assert (p.lane, p.method, p.matched, p.ticket_id) == ("info", "rules", ("horario",), None)
    assert p.message_event_id == message.event_id and p.reply_text.startswith("Abrimos de lunes a sábado")
    # Sent under the request's id (the sender's idempotency key), and reported with the message id it got.
    assert (p.whatsapp_message_id, p.sender, p.failure_reason) == (f"wamid.baton.{request.event_id.hex}", "log", None)
    assert answered.event_id == derived_event_id(request.event_id, 0)
    assert (answered.actor, answered.occurred_at, answered.causation_id) == ("effect:sender", NOW, request.event_id)


async def test_with_a_model_the_routing_is_logged_before_the_reply_is_requested():
    message, request = routing_request("¿Cuál es el horario?")
    routed, reply, _cost = await effects(FixedClassifier("info")).run(request)

    assert routed.type == "conversation.message.routed" and reply.type == "conversation.reply.requested"
    assert routed.payload.message_event_id == message.event_id and routed.payload.fallback_reason is None
    assert reply.payload.text.startswith("Abrimos de lunes a sábado")
    assert reply.payload.in_reply_to == message.event_id and reply.payload.lane == "info"
    assert [e.event_id for e in (routed, reply)] == [derived_event_id(request.event_id, 0),
                                                     derived_event_id(request.event_id, 2)]
    assert all(e.actor == "effect:router" and e.occurred_at == NOW and e.causation_id == request.event_id
               for e in (routed, reply))


async def test_failing_classifier_falls_back_to_rules_with_the_reason():
    _, request = routing_request("¿Cuánto cuesta el café en grano?")
    routed, reply, cost = await effects(FailingClassifier()).run(request)
    assert (routed.payload.method, routed.payload.lane) == ("rules", "commerce")
    # The failed call is on the cost ledger too, with its error and no tokens.
    assert cost.type == "llm.call.recorded" and cost.stream_id.startswith("costs:")
    assert (cost.payload.error, cost.payload.input_tokens, cost.payload.purpose) == (
        "anthropic 529: Overloaded", 0, "routing")
    assert routed.payload.fallback_reason == "anthropic 529: Overloaded"
    assert routed.payload.cost_usd == 0 and routed.payload.input_tokens == 0
    assert reply.payload.text == "Café en grano 1 kg: 18,90 EUR, disponible (42 en stock)."


async def test_classifier_lane_and_cost_are_recorded():
    _, request = routing_request("me gustaría saber si os queda matcha")
    routed, reply, cost = await effects(FixedClassifier("commerce")).run(request)
    p = routed.payload
    assert (p.method, p.lane, p.model, p.input_tokens, p.output_tokens, p.cost_usd) == (
        "llm", "commerce", "claude-haiku-4-5-20251001", 130, 1, 0.000135)
    c = cost.payload
    assert (c.domain, c.model, c.input_tokens, c.output_tokens, c.cost_usd, c.error) == (
        "conversations", "claude-haiku-4-5-20251001", 130, 1, 0.000135, None)
    assert cost.event_id == derived_event_id(request.event_id, 3)
    assert reply.payload.text == "Té verde matcha 100 g: 12,00 EUR, disponible (7 en stock)."


async def test_routing_through_the_shared_client_records_answered_and_unparseable_calls():
    _, request = routing_request("me gustaría saber si os queda matcha")
    for answer in ("commerce", "maybe"):
        with FakeAnthropic(reply=answer, model="claude-haiku-4-5-20251001") as fake:
            client = LlmClient(Settings(anthropic_api_key=SecretStr("sk-test"), anthropic_base_url=fake.base_url))
            routed, _reply, cost = await effects(LaneModel(client, "claude-haiku-4-5", 5.0)).run(request)
            await client.aclose()
        c = cost.payload
        # Priced by the one price table (a dated id takes its prefix's price), whether the answer was usable or not.
        assert c.input_tokens > 0 and c.cost_usd == pytest.approx((c.input_tokens * 1.0 + c.output_tokens * 5.0) / 1e6)
        assert (c.model, c.purpose, c.domain) == ("claude-haiku-4-5-20251001", "routing", "conversations")
        if answer == "commerce":
            assert (routed.payload.method, routed.payload.lane, c.error) == ("llm", "commerce", None)
            assert routed.payload.cost_usd == c.cost_usd and routed.payload.input_tokens == c.input_tokens
        else:
            assert (routed.payload.method, routed.payload.lane) == ("rules", "info")
            assert c.error == routed.payload.fallback_reason == "unparseable routing answer 'maybe'"


async def test_support_lane_opens_a_ticket_and_acknowledges_it():
    message, request = routing_request("Mi pedido llegó roto")
    (answered,) = await effects().run(request)
    expected = ticket_id_for(message.event_id)
    assert (answered.payload.lane, answered.payload.ticket_id) == ("support", expected)
    assert answered.payload.reply_text == f"Hemos abierto el ticket {expected}. Un agente te contactará pronto."

    routed, ticket, reply, _cost = await effects(FailingClassifier()).run(request)
    assert routed.payload.lane == "support"
    assert ticket.type == "conversation.ticket.opened" and ticket.event_id == derived_event_id(request.event_id, 1)
    assert ticket.payload.ticket_id == expected and ticket.payload.summary == "Mi pedido llegó roto"
    assert reply.payload.text == answered.payload.reply_text and reply.event_id == derived_event_id(request.event_id, 2)


async def test_reruns_emit_the_same_ids_and_payloads():
    _, request = routing_request("Mi pedido llegó roto")
    for model in (None, FailingClassifier()):
        first = await effects(model, now=NOW).run(request)
        second = await effects(model, now=NOW + timedelta(minutes=5)).run(request)
        assert [e.event_id for e in first] == [e.event_id for e in second]
        assert [e.payload for e in first] == [e.payload for e in second]


async def test_unknown_tenant_gets_no_reply_and_the_failure_names_it():
    _, request = routing_request("¿Cuál es el horario?", tenant="ghost")
    (answered,) = await effects().run(request)
    p = answered.payload
    assert (p.lane, p.reply_text, p.whatsapp_message_id) == ("info", UNKNOWN_TENANT_REPLY, None)
    assert p.failure_reason == "unknown tenant 'ghost'"


async def _requested_reply(request: Envelope) -> Envelope:
    """The reply.requested a routing with a model asks for (the steps domain asks for one the same way)."""
    return next(e for e in await effects(FixedClassifier("info")).run(request)
                if e.type == "conversation.reply.requested")


async def test_requested_reply_is_sent_and_reported():
    _, request = routing_request("¿Dónde están?")
    reply = await _requested_reply(request)
    (result,) = await effects().run(reply)
    assert result.type == "conversation.reply.sent" and result.event_id == derived_event_id(reply.event_id, 0)
    assert result.payload.reply_event_id == reply.event_id
    assert (result.payload.whatsapp_message_id, result.payload.sender) == (f"wamid.baton.{reply.event_id.hex}", "log")
    assert result.actor == "effect:sender"


async def test_send_failure_is_reported_with_the_senders_reason():
    _, request = routing_request("¿Dónde están?")
    (result,) = await effects(sender=RefusingSender()).run(await _requested_reply(request))
    assert result.type == "conversation.reply.failed" and result.payload.sender == "whatsapp"
    assert "131030" in result.payload.reason
    (answered,) = await effects(sender=RefusingSender()).run(request)
    assert answered.payload.whatsapp_message_id is None and "131030" in answered.payload.failure_reason


async def test_reply_for_unknown_tenant_fails_without_sending():
    _, request = routing_request("hola", tenant="ghost")
    (result,) = await effects(sender=RefusingSender()).run(await _requested_reply(request))
    assert result.type == "conversation.reply.failed" and "ghost" in result.payload.reason


async def test_events_that_need_no_effect_produce_nothing():
    message, request = routing_request("hola")
    routed = (await effects().run(request))[0]
    assert {request.type} < EFFECT_TYPES and message.type not in EFFECT_TYPES
    assert await effects().run(message) == [] and await effects().run(routed) == []


async def test_interrupted_send_is_reported_failed_under_the_id_of_the_real_result():
    message, request = routing_request("¿Dónde están?")
    with_model = effects(FixedClassifier("info"))
    reply = await _requested_reply(request)
    # A routing that sends is not repeatable; one that only asks a model is (the send is a run of its own).
    assert {reply.type, request.type} <= effects().not_repeatable
    assert reply.type in with_model.not_repeatable and request.type not in with_model.not_repeatable
    assert with_model.unknown_outcome(request) == []
    for asked in (request, reply):
        (unknown,) = effects().unknown_outcome(asked)
        (real,) = await effects().run(asked)
        assert "outcome unknown" in (unknown.payload.failure_reason if asked is request else unknown.payload.reason)
        assert unknown.event_id == real.event_id and unknown.type == real.type.replace("sent", "failed")

    # If the real result did reach the log first, the late failure report changes nothing.
    state, _ = fold(None, message, FoldConfig())
    state, _ = fold(state, request, FoldConfig())
    (real,) = await effects().run(request)
    (unknown,) = effects().unknown_outcome(request)
    for event in (real, unknown):
        state, _ = fold(state, event, FoldConfig())
    assert (state.replies_sent, state.replies_failed, state.dialogue[-1].status) == (1, 0, "sent")


async def test_fold_and_effects_close_the_loop():
    message, _ = routing_request("Quiero comprar café")
    config = FoldConfig()
    state, emitted = fold(None, message, config)
    log = [*emitted]
    for event in log:
        state, more = fold(state, event, config)
        assert more == []
        log.extend(await effects().run(event))
    assert state.lane == "commerce" and state.replies_sent == 1
    assert [(t.role, t.status) for t in state.dialogue] == [("contact", None), ("agent", "sent")]
    assert state.dialogue[-1].text.startswith("Café en grano 1 kg: 18,90 EUR")

