"""Activity from conversations: a contact linked to an outbound user makes that user active when it writes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from agents.conversations import fold as conversations
from agents.outbound import fold as outbound
from projections.conversations.readmodels import SESSIONS
from schemas import Envelope, new_event
from schemas.conversations import ContactLinked, ContactUnlinked
from schemas.outbound import MessageData, MessageQueued, UserActive
from tests.fixtures.conversation_logs import inbound

AT = datetime(2026, 6, 1, 23, 0, tzinfo=UTC)


def link(payload, at: datetime = AT) -> Envelope:
    return new_event("acme", payload, event_id=uuid.uuid4(), occurred_at=at, recorded_at=at, actor="fold:outbound")


def test_a_linked_contact_writing_emits_user_active_on_the_outbound_topic() -> None:
    state, out = conversations.fold(None, link(ContactLinked(contact="34600000001", user_id="u1")))
    assert out == [] and state.session_number == 0 and state.linked_user_id == "u1"
    assert list(SESSIONS.rows_of(state)) == []  # no session yet, no conversation row
    message = inbound("acme", "34600000001", "wamid.1", AT + timedelta(minutes=5))
    state, out = conversations.fold(state, message)
    assert [e.type for e in out] == ["conversation.session.started", "conversation.routing.requested",
                                     "outbound.user.active"]
    active = out[-1]
    assert active.stream_id == "outbound:acme:u1" and active.occurred_at == message.occurred_at
    assert active.payload == UserActive(user_id="u1", contact="34600000001", message_event_id=str(message.event_id))
    assert state.session_number == 1 and len(list(SESSIONS.rows_of(state))) == 1
    # A redelivered message is a duplicate: no second activity.
    assert conversations.fold(state, message)[1] == []


def test_unlinked_or_never_linked_contacts_emit_no_activity() -> None:
    state, out = conversations.fold(None, inbound("acme", "34600000002", "wamid.2", AT))
    assert "outbound.user.active" not in [e.type for e in out]
    state, _ = conversations.fold(state, link(ContactLinked(contact="34600000002", user_id="u2")))
    state, _ = conversations.fold(state, link(ContactUnlinked(contact="34600000002", user_id="someone-else")))
    assert state.linked_user_id == "u2"  # unlinking another user's link changes nothing
    state, _ = conversations.fold(state, link(ContactUnlinked(contact="34600000002", user_id="u2")))
    _, out = conversations.fold(state, inbound("acme", "34600000002", "wamid.3", AT + timedelta(minutes=1)))
    assert "outbound.user.active" not in [e.type for e in out]


def test_the_activity_releases_a_message_held_for_quiet_hours() -> None:
    config = outbound.OutboundConfig()
    queued = link(MessageQueued(user_id="u1", agent_id="saga", message_data=MessageData(type="text")))
    user, out = outbound.fold(None, queued, config)
    assert [e.type for e in out][:1] == ["outbound.message.deferred"]
    conversation, _ = conversations.fold(None, link(ContactLinked(contact="34600000001", user_id="u1")))
    _, out = conversations.fold(conversation, inbound("acme", "34600000001", "wamid.9", AT + timedelta(minutes=30)))
    user, out = outbound.fold(user, out[-1], config)
    assert [(e.type, getattr(e.payload, "reason", None)) for e in out][:1] == [
        ("outbound.message.released", "active_user")]
    assert out[0].payload.send is not None and out[0].payload.send.attempt == 1  # the release requests the send
