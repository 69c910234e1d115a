"""The conversation fold: sessions, dialogue turns, lanes and duplicate guards per contact."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

import msgspec
from msgspec.structs import replace

from agents.batching import FoldState, StateCodec
from agents.errors import FoldError
from schemas import Envelope, emitted
from schemas.conversations import (
    CONVERSATION_EVENTS,
    ROUTABLE_TYPES,
    ContactLinked,
    ContactUnlinked,
    MessageAnswered,
    MessageReceived,
    MessageRouted,
    ReplyFailed,
    ReplyRequested,
    ReplySent,
    RoutingRequested,
    SessionExpired,
    SessionStarted,
    StatusUpdated,
    TicketOpened,
)
from schemas.outbound import UserActive

T = TypeVar("T")


class Turn(msgspec.Struct, kw_only=True):
    """One line of dialogue: from the contact, or a reply Baton asked to send."""

    seq: int
    role: Literal["contact", "agent"]
    event_id: uuid.UUID
    at: datetime
    message_type: str
    text: str | None = None
    lane: str | None = None
    whatsapp_message_id: str | None = None
    status: str | None = None


class LaneChange(msgspec.Struct, kw_only=True):
    """A routing decision that set the session's lane."""

    lane: str
    at: datetime
    message_event_id: uuid.UUID
    method: str


class PendingStatus(msgspec.Struct, kw_only=True):
    """A delivery status that arrived before the reply.sent naming its WhatsApp message id."""

    whatsapp_message_id: str
    status: str
    at: datetime


class ConversationState(FoldState, kw_only=True):
    """The current session of one (tenant, contact) stream and its bounded memory.

    session_number 0 is no session yet: a contact linked to an outbound user before writing.
    """

    tenant_id: str
    contact: str
    contact_name: str | None = None
    session_id: uuid.UUID
    session_number: int = 1
    started_at: datetime
    last_activity_at: datetime
    expires_at: datetime
    lane: str | None = None
    lane_history: list[LaneChange] = []
    dialogue: list[Turn] = []
    next_seq: int = 1
    messages_received: int = 0
    duplicates_dropped: int = 0
    routed: dict[str, int] = {}
    replies_requested: int = 0
    replies_sent: int = 0
    replies_failed: int = 0
    tickets: list[str] = []
    seen_message_ids: list[str] = []
    pending_statuses: list[PendingStatus] = []
    linked_user_id: str | None = None


CODEC = StateCodec.json(ConversationState)


class FoldConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Limits of the conversation fold; every bound drops the oldest entries first."""

    session_timeout: timedelta = timedelta(hours=24)
    max_dialogue_turns: int = 50
    max_lane_history: int = 20
    max_seen_message_ids: int = 256
    max_tickets: int = 20
    max_pending_statuses: int = 32


ACTOR = "fold:conversations"

# Delivery order of a reply; a status only moves forward and "failed" is terminal.
_STATUS_RANK = {"requested": 0, "sent": 1, "delivered": 2, "read": 3, "failed": 4}

DEFAULT_CONFIG = FoldConfig()

_SESSION_SCOPED = (MessageRouted, MessageAnswered, TicketOpened, ReplyRequested, ReplySent, ReplyFailed)


def fold(
    state: ConversationState | None, envelope: Envelope, config: FoldConfig = DEFAULT_CONFIG
) -> tuple[ConversationState | None, list[Envelope]]:
    """Apply one conversation event; returns the new state and the events it emits."""
    payload = envelope.payload
    expected = CONVERSATION_EVENTS.get(envelope.type)
    if expected is None or not isinstance(payload, expected):
        raise FoldError(
            f"conversation fold cannot apply {envelope.type!r} "
            f"(payload {type(payload).__name__}, event {envelope.event_id})"
        )
    if state is not None and (state.tenant_id != envelope.tenant_id or state.contact != payload.contact):
        raise FoldError(
            f"event {envelope.event_id} for {envelope.tenant_id}/{payload.contact} "
            f"reached the state of {state.tenant_id}/{state.contact}"
        )
    if isinstance(payload, MessageReceived):
        return _received(state, envelope, payload, config)
    if isinstance(payload, ContactLinked | ContactUnlinked):
        return _linked(state, envelope, payload), []
    if state is None:
        return state, []
    changes: dict[str, Any] = {}
    if not isinstance(payload, _SESSION_SCOPED) or payload.session_id == state.session_id:
        changes = _apply(state, envelope, config)
    return replace(state, **changes), []


def count_duplicate(state: ConversationState, envelope: Envelope) -> ConversationState:
    """A message delivered again is counted (the spine skips every other duplicate)."""
    if isinstance(envelope.payload, MessageReceived):
        return replace(state, duplicates_dropped=state.duplicates_dropped + 1)
    return state


def _received(
    state: ConversationState | None, envelope: Envelope, payload: MessageReceived, config: FoldConfig
) -> tuple[ConversationState, list[Envelope]]:
    if state is not None and payload.whatsapp_message_id in state.seen_message_ids:
        return count_duplicate(state, envelope), []
    at = envelope.occurred_at
    events: list[Envelope] = []
    if state is None or state.session_number == 0 or at > state.expires_at:
        state, events = _new_session(state, envelope, payload)
    text = payload.text or (payload.location.name if payload.location else None)
    last_activity_at = max(state.last_activity_at, at)
    turn = Turn(seq=state.next_seq, role="contact", event_id=envelope.event_id, at=at,
                message_type=payload.message_type, text=text, whatsapp_message_id=payload.whatsapp_message_id)
    state = replace(
        state,
        contact_name=payload.contact_name or state.contact_name,
        last_activity_at=last_activity_at,
        expires_at=last_activity_at + config.session_timeout,
        messages_received=state.messages_received + 1,
        dialogue=_bounded([*state.dialogue, turn], config.max_dialogue_turns),
        next_seq=state.next_seq + 1,
        seen_message_ids=_bounded([*state.seen_message_ids, payload.whatsapp_message_id],
                                  config.max_seen_message_ids),
    )
    if payload.message_type in ROUTABLE_TYPES and text and text.strip():
        request = RoutingRequested(session_id=state.session_id, contact=payload.contact,
                                   message_event_id=envelope.event_id, text=text)
        events.append(emitted(envelope, len(events), request, actor=ACTOR))
    if state.linked_user_id is not None:
        active = UserActive(user_id=state.linked_user_id, contact=payload.contact,
                            message_event_id=str(envelope.event_id))
        events.append(emitted(envelope, len(events), active, actor=ACTOR))
    return state, events


def _new_session(
    old: ConversationState | None, envelope: Envelope, payload: MessageReceived
) -> tuple[ConversationState, list[Envelope]]:
    at = envelope.occurred_at
    session_id = uuid.uuid5(envelope.event_id, "session")
    events: list[Envelope] = []
    if old is not None and old.session_number > 0:
        expired = SessionExpired(session_id=old.session_id, contact=old.contact,
                                 last_activity_at=old.last_activity_at)
        events.append(emitted(envelope, 0, expired, actor=ACTOR))
    started = SessionStarted(session_id=session_id, contact=payload.contact,
                             previous_session_id=old.session_id if old else None)
    events.append(emitted(envelope, len(events), started, actor=ACTOR))
    # Dedupe memory outlives sessions: a redelivery after a rollover is still a duplicate.
    # Pending statuses do not: they await a reply.sent of the ended session, which _SESSION_SCOPED ignores now.
    state = ConversationState(
        tenant_id=envelope.tenant_id,
        contact=payload.contact,
        contact_name=old.contact_name if old else None,
        session_id=session_id,
        session_number=old.session_number + 1 if old else 1,
        started_at=at,
        last_activity_at=at,
        expires_at=at,
        applied_event_ids=list(old.applied_event_ids) if old else [],
        seen_message_ids=list(old.seen_message_ids) if old else [],
        linked_user_id=old.linked_user_id if old else None,
    )
    return state, events


def _linked(state: ConversationState | None, envelope: Envelope,
            payload: ContactLinked | ContactUnlinked) -> ConversationState:
    """Record (or clear) the outbound user this contact is; a contact not seen yet gets a state without session."""
    if state is None:
        at = envelope.occurred_at
        state = ConversationState(tenant_id=envelope.tenant_id, contact=payload.contact, session_number=0,
                                  session_id=uuid.uuid5(envelope.event_id, "link"), started_at=at,
                                  last_activity_at=at, expires_at=at)
    if isinstance(payload, ContactLinked):
        state = replace(state, linked_user_id=payload.user_id)
    elif state.linked_user_id == payload.user_id:
        state = replace(state, linked_user_id=None)
    return state


def _apply(state: ConversationState, envelope: Envelope, config: FoldConfig) -> dict[str, Any]:
    """Field changes one non-inbound event makes to its (current) session."""
    payload = envelope.payload
    if isinstance(payload, MessageRouted):
        change = LaneChange(lane=payload.lane, at=envelope.occurred_at,
                            message_event_id=payload.message_event_id, method=payload.method)
        return {
            "lane": payload.lane,
            "lane_history": _bounded([*state.lane_history, change], config.max_lane_history),
            "routed": {**state.routed, payload.lane: state.routed.get(payload.lane, 0) + 1},
            "dialogue": _update_turn(state.dialogue, lambda t: t.role == "contact"
                                     and t.event_id == payload.message_event_id, lane=payload.lane),
        }
    if isinstance(payload, MessageAnswered):
        return _answered(state, envelope, payload, config)
    if isinstance(payload, TicketOpened):
        return {"tickets": _bounded([*state.tickets, payload.ticket_id], config.max_tickets)}
    if isinstance(payload, ReplyRequested):
        turn = Turn(seq=state.next_seq, role="agent", event_id=envelope.event_id, at=envelope.occurred_at,
                    message_type="text", text=payload.text, lane=payload.lane, status="requested")
        return {
            "replies_requested": state.replies_requested + 1,
            "dialogue": _bounded([*state.dialogue, turn], config.max_dialogue_turns),
            "next_seq": state.next_seq + 1,
        }
    if isinstance(payload, ReplySent):
        dialogue = _advance(state.dialogue, lambda t: t.event_id == payload.reply_event_id, "sent",
                            whatsapp_message_id=payload.whatsapp_message_id)
        return {"replies_sent": state.replies_sent + 1, **_early_statuses(state, dialogue, payload.whatsapp_message_id)}
    if isinstance(payload, ReplyFailed):
        return {
            "replies_failed": state.replies_failed + 1,
            "dialogue": _advance(state.dialogue, lambda t: t.event_id == payload.reply_event_id, "failed"),
        }
    if isinstance(payload, StatusUpdated):
        wamid = payload.whatsapp_message_id
        if any(t.role == "agent" and t.whatsapp_message_id == wamid for t in state.dialogue):
            return {"dialogue": _advance(state.dialogue, lambda t: t.whatsapp_message_id == wamid, payload.status)}
        # The status overtook its reply.sent (or names a turn no longer kept): hold it until that arrives.
        if any(p.whatsapp_message_id == wamid and p.status == payload.status for p in state.pending_statuses):
            return {}
        pending = PendingStatus(whatsapp_message_id=wamid, status=payload.status, at=envelope.occurred_at)
        return {"pending_statuses": _bounded([*state.pending_statuses, pending], config.max_pending_statuses)}
    return {}  # session.started / session.expired / routing.requested: their effect is already applied


def _answered(state: ConversationState, envelope: Envelope, payload: MessageAnswered,
              config: FoldConfig) -> dict[str, Any]:
    """Routed, answered and sent (or failed) in one effect run: the lane change, ticket and agent turn at once."""
    change = LaneChange(lane=payload.lane, at=envelope.occurred_at, message_event_id=payload.message_event_id,
                        method=payload.method)
    sent = payload.whatsapp_message_id is not None
    turn = Turn(seq=state.next_seq, role="agent", event_id=envelope.event_id, at=envelope.occurred_at,
                message_type="text", text=payload.reply_text, lane=payload.lane,
                whatsapp_message_id=payload.whatsapp_message_id, status="sent" if sent else "failed")
    dialogue = _update_turn(state.dialogue, lambda t: t.role == "contact" and t.event_id == payload.message_event_id,
                            lane=payload.lane)
    changes: dict[str, Any] = {
        "lane": payload.lane,
        "lane_history": _bounded([*state.lane_history, change], config.max_lane_history),
        "routed": {**state.routed, payload.lane: state.routed.get(payload.lane, 0) + 1},
        "replies_requested": state.replies_requested + 1,
        "replies_sent": state.replies_sent + sent,
        "replies_failed": state.replies_failed + (not sent),
        "next_seq": state.next_seq + 1,
        "dialogue": _bounded([*dialogue, turn], config.max_dialogue_turns),
    }
    if payload.ticket_id is not None:
        changes["tickets"] = _bounded([*state.tickets, payload.ticket_id], config.max_tickets)
    if sent:
        changes |= _early_statuses(state, changes["dialogue"], payload.whatsapp_message_id)  # type: ignore[arg-type]
    return changes


def _early_statuses(state: ConversationState, dialogue: list[Turn], wamid: str) -> dict[str, Any]:
    """Apply the statuses that overtook the send naming wamid on the log."""
    early = [p for p in state.pending_statuses if p.whatsapp_message_id == wamid]
    for pending in early:
        dialogue = _advance(dialogue, lambda t: t.whatsapp_message_id == wamid, pending.status)
    changes: dict[str, Any] = {"dialogue": dialogue}
    if early:
        changes["pending_statuses"] = [p for p in state.pending_statuses if p.whatsapp_message_id != wamid]
    return changes


def _advance(dialogue: list[Turn], match: Callable[[Turn], bool], status: str, **changes: Any) -> list[Turn]:
    """Move the matching agent turn's delivery status forward, never back."""
    def forward(turn: Turn) -> bool:
        return turn.role == "agent" and match(turn) and _STATUS_RANK[status] > _STATUS_RANK.get(turn.status or "", -1)
    return _update_turn(dialogue, forward, status=status, **changes)


def _update_turn(dialogue: list[Turn], match: Callable[[Turn], bool], **changes: Any) -> list[Turn]:
    return [replace(turn, **changes) if match(turn) else turn for turn in dialogue]


def _bounded(items: list[T], limit: int) -> list[T]:
    return items[-limit:] if len(items) > limit else items
