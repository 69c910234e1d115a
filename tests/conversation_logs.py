"""Conversation logs for read-model tests: inbound messages, what the fold emits, and the effects' answers."""

from __future__ import annotations

from datetime import datetime, timedelta

from agents.folds.conversations import ConversationState, FoldConfig, fold
from schemas import Envelope, emitted, new_event, source_event_id
from schemas.conversations import (
    MessageReceived,
    MessageRouted,
    ReplyFailed,
    ReplyRequested,
    ReplySent,
)

CONFIG = FoldConfig()


def inbound(tenant: str, contact: str, wamid: str, at: datetime, text: str = "hola", name: str | None = None) -> Envelope:
    """A WhatsApp text message as ingest publishes it."""
    payload = MessageReceived(contact=contact, whatsapp_message_id=wamid, message_type="text", text=text,
                              contact_name=name)
    return new_event(tenant, payload, event_id=source_event_id(tenant, "whatsapp", wamid), occurred_at=at,
                     recorded_at=at, actor="ingest:whatsapp")


def answers(request: Envelope, lane: str, sent: bool) -> list[Envelope]:
    """What the router and sender effects put on the log for one routing request."""
    p = request.payload
    at = request.occurred_at + timedelta(seconds=1)
    routed = emitted(request, 0, MessageRouted(session_id=p.session_id, contact=p.contact,
                                               message_event_id=p.message_event_id, lane=lane, method="rules"),
                     actor="effect:router", occurred_at=at)
    reply = emitted(request, 1, ReplyRequested(session_id=p.session_id, contact=p.contact,
                                               in_reply_to=p.message_event_id, lane=lane, text=f"answer {lane}"),
                    actor="effect:router", occurred_at=at)
    outcome = (
        ReplySent(session_id=p.session_id, contact=p.contact, reply_event_id=reply.event_id,
                  whatsapp_message_id=f"wamid.out.{reply.event_id.hex[:12]}", sender="log")
        if sent else
        ReplyFailed(session_id=p.session_id, contact=p.contact, reply_event_id=reply.event_id,
                    reason="http 500", sender="log")
    )
    return [routed, reply, emitted(reply, 0, outcome, actor="effect:sender", occurred_at=at)]


def conversation(
    tenant: str, contact: str, turns: list[tuple[datetime, str, bool]], name: str | None = None,
    state: ConversationState | None = None,
) -> tuple[list[Envelope], ConversationState]:
    """The log of one contact: per (time, lane, reply sent) an inbound message, its emissions and answers."""
    log: list[Envelope] = []
    for at, lane, sent in turns:
        message = inbound(tenant, contact, f"wamid.{tenant}.{contact}.{at.timestamp():.0f}", at,
                          text=f"question for {lane}", name=name)
        state, out = fold(state, message, CONFIG)
        log += [message, *out]
        request = next(e for e in out if e.type == "conversation.routing.requested")
        for answer in answers(request, lane, sent):
            state, more = fold(state, answer, CONFIG)
            log += [answer, *more]
    assert state is not None
    return log, state
