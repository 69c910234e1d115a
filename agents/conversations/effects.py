"""The effect step: routing (LLM or rules) with its answer, and reply sending; results are events."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import structlog

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


class Effects:
    """Runs the side effect an event asks for and returns the events describing its outcome."""

    effect_types: frozenset[str] = EFFECT_TYPES
    # A send reaches the contact: it must never be repeated, even when its outcome was lost.
    not_repeatable: frozenset[str] = frozenset({REPLY_REQUESTED})

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
        if not isinstance(payload, ReplyRequested):
            return []
        # Same id as the real result: if that did reach the log, the fold keeps whichever came first.
        return [self._send_result(envelope, payload,
                                  reason="outcome unknown: the worker stopped during the send; not retried")]

    async def _route(self, envelope: Envelope, request: RoutingRequested) -> list[Envelope]:
        routed, completion = await self._decide(request)
        now = self.clock()
        events = [emitted(envelope, ROUTED, routed, actor=self.router_actor, occurred_at=now)]
        tenant = self.tenants.get(envelope.tenant_id)
        if tenant is None:
            log.warning("effects.unknown_tenant", tenant=envelope.tenant_id, event_id=str(envelope.event_id))
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
        if self.lane_model is not None:  # every model call, answered or not, goes to the cost ledger
            events.append(cost_event(envelope, COST, completion, domain="conversations", purpose="routing",
                                     model=getattr(self.lane_model, "model", None), error=routed.fallback_reason,
                                     occurred_at=now))
        return events

    async def _decide(self, request: RoutingRequested) -> tuple[MessageRouted, Completion | None]:
        """The model's lane, or the rules' when there is no model or it fails; with the model call, if answered."""
        common = {"session_id": request.session_id, "contact": request.contact,
                  "message_event_id": request.message_event_id}
        fallback_reason, completion = None, None
        if self.lane_model is not None:
            try:
                choice = await self.lane_model.classify(request.text)
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

    async def _send(self, envelope: Envelope, request: ReplyRequested) -> Envelope:
        tenant = self.tenants.get(envelope.tenant_id)
        if tenant is None:
            return self._send_result(envelope, request, reason=f"unknown tenant {envelope.tenant_id!r}")
        try:
            message_id = await self.sender.send(tenant, request.contact, request.text, envelope.event_id)
        except SendOutcomeUnknown as exc:  # the request was written and its answer lost: it may have been sent
            return self._send_result(envelope, request, reason=f"{exc.reason[:480]}; not retried")
        except SendError as exc:
            return self._send_result(envelope, request, reason=exc.reason[:500])
        return self._send_result(envelope, request, message_id=message_id)

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
