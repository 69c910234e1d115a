"""The outbound effect worker: for each send request, the relevance check when asked (model or rules), the
rendering (model or template) and the send through the shared sender (agents.senders); every outcome is an event."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from agents.senders import Sender, SendError
from agents.tenants import Tenants
from schemas import Envelope, emitted
from schemas.outbound import (
    MessageApproved,
    MessageData,
    MessageReleased,
    MessageSent,
    RelevanceChecked,
    Rendering,
    SendFailed,
    SendRequested,
)

if TYPE_CHECKING:
    from agents.llm import LlmClient
    from agents.outbound.config import OutboundSettings

log = structlog.get_logger(__name__)

SEND_REQUESTED = "outbound.send.requested"
# A first attempt is requested by the decision itself (its `send`), a retry by send.requested.
SEND_REQUESTS = frozenset({"outbound.message.approved", "outbound.message.released", SEND_REQUESTED})
# Emission indexes are fixed per kind, so a re-run derives the same event ids (1 was message.rendered's).
RELEVANCE, RESULT, RELEVANCE_COST, RENDER_COST = 0, 2, 3, 4


def send_request(envelope: Envelope) -> SendRequested | None:
    """The send attempt an event requests, if any."""
    payload = envelope.payload
    if isinstance(payload, SendRequested):
        return payload
    if isinstance(payload, MessageApproved | MessageReleased) and payload.send is not None:
        return SendRequested.of(payload.send, user_id=payload.user_id, message_id=payload.message_id,
                                agent_id=payload.agent_id)
    return None


def render_template(data: MessageData) -> str:
    """Prose for a structured message without a model: a template per type, a generic one otherwise."""
    fields = data.fields
    if data.type == "text" and isinstance(fields.get("text"), str):
        return fields["text"]
    if data.type == "payment_required":
        return str(fields.get("message") or "Your payment method needs updating. Please review it to keep your service.")
    if data.type == "weekly_summary":
        stats = fields.get("stats") or {}
        items = ", ".join(f"{_words(k)}: {v}" for k, v in stats.items()) if isinstance(stats, dict) else str(stats)
        return f"Your weekly summary: {items}." if items else "Your weekly summary is ready."
    if data.type == "solution_update":
        findings = fields.get("findings") or {}
        matches = findings.get("matchedInnovators") if isinstance(findings, dict) else None
        if isinstance(matches, list) and matches:
            names = ", ".join(str(m.get("name", m)) if isinstance(m, dict) else str(m) for m in matches)
            return f"Update on your request: we found {len(matches)} match{'es' if len(matches) > 1 else ''}: {names}."
        return "Update on your request: there is news on what you asked us to look into."
    details = "; ".join(f"{_words(k)}: {v}" for k, v in fields.items())
    return f"{_words(data.type).capitalize()}: {details}." if details else f"{_words(data.type).capitalize()}."


def _words(name: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).replace("_", " ").lower()


def relevance_by_rules(request: SendRequested, now: datetime) -> tuple[bool, str]:
    """Whether a released message still makes sense: not expired, not superseded, the conversation not moved on."""
    if request.expires_at is not None and request.expires_at <= now:
        return False, "expired"
    if request.superseded_by is not None:
        return False, f"superseded by {request.superseded_by}"
    if request.last_inbound_at is not None and request.last_inbound_at > request.queued_at:
        return False, "the conversation moved on since it was queued"
    return True, "still current"


RELEVANCE_SYSTEM = (
    "You decide whether a proactive message queued earlier for a user should still be sent now. "
    "Answer with one word, RELEVANT or STALE, then a short reason."
)
CONCIERGE_SYSTEM = (
    "You are the concierge: the one voice a user hears from this product on WhatsApp. Turn the structured update "
    "you are given into one short, warm, plain-text WhatsApp message (no markdown, at most three sentences). "
    "Say only what the data says."
)


def _retryable(reason: str) -> bool:
    """A client error from the Graph API will fail again; network errors, 5xx and 429 may not."""
    match = re.match(r"whatsapp (\d{3})", reason)
    return match is None or match[1] == "429" or not match[1].startswith("4")


class OutboundEffects:
    """Runs one send attempt: relevance check when asked, rendering, sending; every outcome is an event."""

    effect_types: frozenset[str] = SEND_REQUESTS
    # A send reaches a person: never repeated, even when its outcome was lost.
    not_repeatable: frozenset[str] = SEND_REQUESTS

    def __init__(self, tenants: Tenants, sender: Sender, llm: LlmClient | None, settings: OutboundSettings, *,
                 actor: str = "effect:outbound", clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.tenants, self.sender, self.llm, self.settings = tenants, sender, llm, settings
        self.actor, self.clock = actor, clock

    async def run(self, envelope: Envelope) -> list[Envelope]:
        """Events resulting from one send request; other event types need no effect."""
        request = send_request(envelope)
        if request is None:
            return []
        events: list[Envelope] = []
        if request.check_relevance:
            checked = await self._relevance(envelope, request, events)
            events.insert(0, self._emit(envelope, RELEVANCE, checked))
            if not checked.relevant:
                return events
        rendered = None if request.text is not None else await self._render(envelope, request, events)
        events.append(self._emit(envelope, RESULT, await self._send(envelope, request, rendered)))
        return events

    def unknown_outcome(self, envelope: Envelope) -> list[Envelope]:
        """A send that started but never finished: failed, not retried (it may have reached the user)."""
        request = send_request(envelope)
        if request is None:
            return []
        failed = SendFailed(user_id=request.user_id, message_id=request.message_id, attempt=request.attempt,
                            reason="outcome unknown: the worker stopped during the send; not retried",
                            retryable=False, sender=self.sender.name)
        return [self._emit(envelope, RESULT, failed)]

    def _emit(self, cause: Envelope, index: int, payload: Any) -> Envelope:
        return emitted(cause, index, payload, actor=self.actor, occurred_at=self.clock())

    async def _relevance(self, envelope: Envelope, request: SendRequested, costs: list[Envelope]) -> RelevanceChecked:
        now = self.clock()
        common = {"user_id": request.user_id, "message_id": request.message_id}
        fallback = None
        if self.llm is not None:
            prompt = msgspec.json.encode({
                "message": request.message_data, "queued_at": request.queued_at, "now": now,
                "expires_at": request.expires_at, "newer_message_of_same_type": request.superseded_by,
                "user_last_wrote_at": request.last_inbound_at,
            }).decode()
            answer, fallback = await self._complete(envelope, request, RELEVANCE_COST, "relevance",
                                                    self.settings.relevance_model, RELEVANCE_SYSTEM, prompt, 60, costs)
            verdict = answer.strip().split(maxsplit=1) if answer else []
            if verdict and verdict[0].upper().strip(".:,") in ("RELEVANT", "STALE"):
                return RelevanceChecked(**common, relevant=verdict[0].upper().startswith("RELEVANT"), method="llm",
                                        reason=(verdict[1] if len(verdict) > 1 else verdict[0])[:300])
            if answer is not None:
                fallback = f"unparsable answer {answer[:80]!r}"
        relevant, reason = relevance_by_rules(request, now)
        return RelevanceChecked(**common, relevant=relevant, method="rules", reason=reason, fallback_reason=fallback)

    async def _render(self, envelope: Envelope, request: SendRequested, costs: list[Envelope]) -> Rendering:
        fallback = None
        if self.llm is not None:
            prompt = msgspec.json.encode(request.message_data).decode()
            text, fallback = await self._complete(envelope, request, RENDER_COST, "rendering",
                                                  self.settings.render_model, CONCIERGE_SYSTEM, prompt,
                                                  self.settings.render_max_tokens, costs)
            if text and text.strip():
                return Rendering(text=text.strip(), method="llm")
            fallback = fallback or "empty answer"
        return Rendering(text=render_template(request.message_data), method="template", fallback_reason=fallback)

    async def _complete(self, envelope: Envelope, request: SendRequested, index: int, purpose: str, model: str,
                        system: str, prompt: str, max_tokens: int, costs: list[Envelope]) -> tuple[str | None, str | None]:
        """The model's text (or None) and why it failed; the call's cost event joins `costs` either way."""
        from agents.llm import LlmError, cost_event

        assert self.llm is not None
        try:
            completion = await self.llm.complete(model=model, system=system, max_tokens=max_tokens,
                                                 messages=[{"role": "user", "content": prompt}], cache_prefix=True)
        except LlmError as exc:
            reason = str(exc)[:300]
            log.warning("outbound.llm_failed", purpose=purpose, reason=reason)
            costs.append(cost_event(envelope, index, None, domain="outbound", purpose=purpose, model=model,
                                    agent_id=request.agent_id, user_id=request.user_id, error=reason,
                                    occurred_at=self.clock()))
            return None, reason
        costs.append(cost_event(envelope, index, completion, domain="outbound", purpose=purpose,
                                agent_id=request.agent_id, user_id=request.user_id, occurred_at=self.clock()))
        return completion.text, None

    async def _send(self, envelope: Envelope, request: SendRequested,
                    rendered: Rendering | None) -> MessageSent | SendFailed:
        common = {"user_id": request.user_id, "message_id": request.message_id, "attempt": request.attempt,
                  "sender": self.sender.name, "rendered": rendered}
        text = rendered.text if rendered is not None else request.text
        assert text is not None
        tenant = self.tenants.get(envelope.tenant_id)
        if tenant is None:
            return SendFailed(**common, reason=f"unknown tenant {envelope.tenant_id!r}", retryable=False)
        if request.contact is None:
            return SendFailed(**common, reason="the user has no contact in their preferences", retryable=False)
        try:
            message_id = await self.sender.send(tenant, request.contact, text, envelope.event_id)
        except SendError as exc:
            # A send whose answer was lost may have reached the user: never sent again.
            retryable = not exc.outcome_unknown and _retryable(exc.reason)
            return SendFailed(**common, reason=exc.reason[:500], retryable=retryable)
        return MessageSent(**common, whatsapp_message_id=message_id)
