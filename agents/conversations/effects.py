"""The effect step: routing (LLM or rules) with its answer, and reply sending; results are events."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import structlog
from msgspec.structs import replace

from agents.conversations.responders import (
    answer_commerce,
    answer_info,
    answer_support,
    ticket_id_for,
)
from agents.conversations.routing import LaneModel, RoutingError, route_by_rules
from agents.llm import Completion, cost_event
from agents.senders import Sender, SendError, SendOutcomeUnknown
from agents.tenants import Tenant, Tenants
from schemas import Envelope, emitted
from schemas.conversations import (
    MessageAnswered,
    MessageRouted,
    ReplyFailed,
    ReplyRequested,
    ReplySent,
    RoutingRequested,
    TicketOpened,
)

log = structlog.get_logger(__name__)

UNKNOWN_TENANT_REPLY = "Lo siento, ahora mismo no puedo responder a tu consulta. Un agente te contactará pronto."

ROUTING_REQUESTED = "conversation.routing.requested"
REPLY_REQUESTED = "conversation.reply.requested"
EFFECT_TYPES: frozenset[str] = frozenset({ROUTING_REQUESTED, REPLY_REQUESTED})

# Emission indexes are fixed per kind, so a re-run derives the same event ids.
ROUTED, TICKET, REPLY, COST = 0, 1, 2, 3
RESULT = 0
UNKNOWN_OUTCOME = "outcome unknown: the worker stopped during the send; not retried"


class Effects:
    """Runs the side effect an event asks for and returns the events describing its outcome.

    Without a lane model a routing request is answered in one run: rules, answer, send, one message.answered.
    With one, the model's decision is logged first (message.routed, reply.requested) and the send is a run of its
    own, so a crash during a slow, billed model call retries the routing instead of leaving the message unanswered.
    """

    effect_types: frozenset[str] = EFFECT_TYPES

    def __init__(
        self,
        tenants: Tenants,
        sender: Sender,
        lane_model: LaneModel | None = None,
        *,
        router_actor: str = "effect:router",
        sender_actor: str = "effect:sender",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.tenants = tenants
        self.sender = sender
        self.lane_model = lane_model
        self.router_actor = router_actor
        self.sender_actor = sender_actor
        self.clock = clock
        # A send reaches the contact: the request that sends must never run twice, even when its outcome was lost.
        self.not_repeatable = frozenset({REPLY_REQUESTED} if lane_model is not None
                                        else {REPLY_REQUESTED, ROUTING_REQUESTED})

    async def run(self, envelope: Envelope) -> list[Envelope]:
        """Events resulting from one effect request; other event types need no effect."""
        payload = envelope.payload
        if isinstance(payload, RoutingRequested):
            return await self._route(envelope, payload)
        if isinstance(payload, ReplyRequested):
            return [await self._send(envelope, payload)]
        return []

    def unknown_outcome(self, envelope: Envelope) -> list[Envelope]:
        """Result of a non-repeatable effect that started but never finished: reported failed, not retried."""
        payload = envelope.payload
        # Same id as the real result: if that did reach the log, the fold keeps whichever came first.
        if isinstance(payload, ReplyRequested):
            return [self._send_result(envelope, payload, reason=UNKNOWN_OUTCOME)]
        if isinstance(payload, RoutingRequested) and self.lane_model is None:
            answer = self._rules_answer(payload, self.tenants.get(envelope.tenant_id))
            return [self._answered(envelope, replace(answer, failure_reason=UNKNOWN_OUTCOME))]
        return []

    async def _route(self, envelope: Envelope, request: RoutingRequested) -> list[Envelope]:
        if self.lane_model is None:
            tenant = self._tenant(envelope)
            answer = self._rules_answer(request, tenant)
            message_id, reason = await self._deliver(envelope, tenant, request.contact, answer.reply_text)
            return [self._answered(envelope, replace(answer, whatsapp_message_id=message_id,
                                                     failure_reason=reason or None))]
        routed, completion = await self._decide(request)
        now = self.clock()
        events = [emitted(envelope, ROUTED, routed, actor=self.router_actor, occurred_at=now)]
        tenant = self._tenant(envelope)
        if routed.lane == "support":
            ticket_id = ticket_id_for(request.message_event_id)
            ticket = TicketOpened(session_id=request.session_id, contact=request.contact,
                                  message_event_id=request.message_event_id, ticket_id=ticket_id,
                                  summary=request.text[:200])
            events.append(emitted(envelope, TICKET, ticket, actor=self.router_actor, occurred_at=now))
            text = answer_support(ticket_id)
        else:
            text = _answer(routed.lane, request.text, tenant)
        reply = ReplyRequested(session_id=request.session_id, contact=request.contact,
                               in_reply_to=request.message_event_id, lane=routed.lane, text=text)
        events.append(emitted(envelope, REPLY, reply, actor=self.router_actor, occurred_at=now))
        # Every model call, answered or not, goes to the cost ledger.
        events.append(cost_event(envelope, COST, completion, domain="conversations", purpose="routing",
                                 model=getattr(self.lane_model, "model", None), error=routed.fallback_reason,
                                 occurred_at=now))
        return events

    def _tenant(self, envelope: Envelope) -> Tenant | None:
        tenant = self.tenants.get(envelope.tenant_id)
        if tenant is None:
            log.warning("effects.unknown_tenant", tenant=envelope.tenant_id, event_id=str(envelope.event_id))
        return tenant

    def _rules_answer(self, request: RoutingRequested, tenant: Tenant | None) -> MessageAnswered:
        """The rules' lane and the ticket and reply it leads to, not sent yet."""
        decision = route_by_rules(request.text)
        ticket_id = ticket_id_for(request.message_event_id) if decision.lane == "support" else None
        text = answer_support(ticket_id) if ticket_id is not None else _answer(decision.lane, request.text, tenant)
        return MessageAnswered(session_id=request.session_id, contact=request.contact,
                               message_event_id=request.message_event_id, lane=decision.lane,
                               matched=decision.matched, ticket_id=ticket_id, reply_text=text, sender=self.sender.name)

    def _answered(self, envelope: Envelope, answer: MessageAnswered) -> Envelope:
        return emitted(envelope, RESULT, answer, actor=self.sender_actor, occurred_at=self.clock())

    async def _decide(self, request: RoutingRequested) -> tuple[MessageRouted, Completion | None]:
        """The model's lane, or the rules' when it fails; with the model call, if answered."""
        common = {"session_id": request.session_id, "contact": request.contact,
                  "message_event_id": request.message_event_id}
        fallback_reason, completion = None, None
        try:
            choice = await self.lane_model.classify(request.text)  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001 - any routing-model failure falls back to the rules
            fallback_reason = (str(exc) or type(exc).__name__)[:200]
            # An unparseable answer was still a billed call: its tokens go to the cost ledger.
            completion = exc.completion if isinstance(exc, RoutingError) else None
            log.warning("effects.routing_model_failed", reason=fallback_reason)
        else:
            completion = choice.completion
            return MessageRouted(**common, lane=choice.lane, method="llm", model=completion.model,
                                 input_tokens=completion.usage.input_tokens,
                                 output_tokens=completion.usage.output_tokens,
                                 cost_usd=completion.cost_usd), completion
        decision = route_by_rules(request.text)
        return MessageRouted(**common, lane=decision.lane, method="rules", fallback_reason=fallback_reason), completion

    async def _deliver(self, envelope: Envelope, tenant: Tenant | None, contact: str,
                       text: str) -> tuple[str | None, str]:
        """Hand a reply to the sender, keyed by the requesting event: (WhatsApp message id, "") or (None, reason)."""
        if tenant is None:
            return None, f"unknown tenant {envelope.tenant_id!r}"
        try:
            return await self.sender.send(tenant, contact, text, envelope.event_id), ""
        except SendOutcomeUnknown as exc:  # the request was written and its answer lost: it may have been sent
            return None, f"{exc.reason[:480]}; not retried"
        except SendError as exc:
            return None, exc.reason[:500]

    async def _send(self, envelope: Envelope, request: ReplyRequested) -> Envelope:
        message_id, reason = await self._deliver(envelope, self._tenant(envelope), request.contact, request.text)
        return self._send_result(envelope, request, message_id=message_id, reason=reason)

    def _send_result(self, envelope: Envelope, request: ReplyRequested, *, message_id: str | None = None,
                     reason: str = "") -> Envelope:
        common = {"session_id": request.session_id, "contact": request.contact, "reply_event_id": envelope.event_id,
                  "sender": self.sender.name}
        result = (ReplySent(**common, whatsapp_message_id=message_id) if message_id is not None
                  else ReplyFailed(**common, reason=reason))
        return emitted(envelope, RESULT, result, actor=self.sender_actor, occurred_at=self.clock())


def _answer(lane: str, text: str, tenant: Tenant | None) -> str:
    if tenant is None:
        return UNKNOWN_TENANT_REPLY
    return answer_commerce(text, tenant) if lane == "commerce" else answer_info(text, tenant)
