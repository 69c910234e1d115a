"""Read-model row builders: the row a state and an envelope become, and coalescing/deduplication of batches.

What PostgreSQL makes of these rows (upserts, schemas, read-back) is tested in
tests/integration/test_read_model_rows.py against a real server, not by reading SQL text.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from msgspec.structs import replace

from agents.conversations.fold import CODEC, PendingStatus, fold
from projections import archive as event_writer

# The writers' module layout, in one place.
from projections.conversations import readmodels as session_writer
from projections.readmodel import first_per_key, last_per_key
from tests.fixtures.conversation_logs import conversation

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SESSION_COLUMNS = [name for name, _ in session_writer.SESSIONS.columns]
EVENT_COLUMNS = [name for name, _ in event_writer.EVENTS.columns]


def _conversation():
    return conversation("acme", "34600111222", [(T0, "info", True), (T0 + timedelta(minutes=5), "commerce", False)],
                        name="Ana")


def session_dict(state) -> dict:
    return dict(zip(SESSION_COLUMNS, session_writer.session_row(state), strict=True))


def test_session_row_holds_the_state_as_columns():
    log, state = _conversation()
    inbound = [e for e in log if e.type == "conversation.message.received"]
    replies = [e for e in log if e.type == "conversation.reply.requested"]
    sent = next(e for e in log if e.type == "conversation.reply.sent")
    row = session_dict(state)

    assert row["session_id"] == state.session_id
    assert (row["tenant_id"], row["contact"], row["contact_name"]) == ("acme", "34600111222", "Ana")
    assert row["stream_id"] == "conversation:acme:34600111222"
    assert row["session_number"] == 1
    assert (row["started_at"], row["last_activity_at"], row["expires_at"]) == (
        T0, T0 + timedelta(minutes=5), T0 + timedelta(hours=24, minutes=5))
    assert (row["routed_info"], row["routed_commerce"], row["routed_support"]) == (1, 1, 0)
    assert (row["messages_received"], row["duplicates_dropped"]) == (2, 0)
    assert (row["replies_requested"], row["replies_sent"], row["replies_failed"]) == (2, 1, 1)
    assert row["lane"] == "commerce"
    assert json.loads(row["lane_history"]) == [
        {"lane": "info", "at": "2026-03-02T09:00:01Z", "message_event_id": str(inbound[0].event_id), "method": "rules"},
        {"lane": "commerce", "at": "2026-03-02T09:05:01Z", "message_event_id": str(inbound[1].event_id),
         "method": "rules"},
    ]
    assert json.loads(row["dialogue"]) == [
        {"seq": 1, "role": "contact", "event_id": str(inbound[0].event_id), "at": "2026-03-02T09:00:00Z",
         "message_type": "text", "text": "question for info", "lane": "info",
         "whatsapp_message_id": inbound[0].payload.whatsapp_message_id, "status": None},
        {"seq": 2, "role": "agent", "event_id": str(replies[0].event_id), "at": "2026-03-02T09:00:01Z",
         "message_type": "text", "text": "answer info", "lane": "info",
         "whatsapp_message_id": sent.payload.whatsapp_message_id, "status": "sent"},
        {"seq": 3, "role": "contact", "event_id": str(inbound[1].event_id), "at": "2026-03-02T09:05:00Z",
         "message_type": "text", "text": "question for commerce", "lane": "commerce",
         "whatsapp_message_id": inbound[1].payload.whatsapp_message_id, "status": None},
        {"seq": 4, "role": "agent", "event_id": str(replies[1].event_id), "at": "2026-03-02T09:05:01Z",
         "message_type": "text", "text": "answer commerce", "lane": "commerce",
         "whatsapp_message_id": None, "status": "failed"},
    ]
    assert json.loads(row["tickets"]) == []


def test_session_row_of_a_state_rebuilt_from_its_log_is_the_same():
    log, state = _conversation()
    replayed = None
    for envelope in log:  # the emitted events are on the log too; folding them again changes nothing
        replayed, _ = fold(replayed, envelope)
    assert session_writer.session_row(replayed) == session_writer.session_row(state)
    assert session_writer.session_row(CODEC.decode(CODEC.encode(state))) == session_writer.session_row(state)


def test_pending_statuses_are_not_projected():
    _, state = _conversation()
    waiting = replace(state, pending_statuses=[PendingStatus(whatsapp_message_id="wamid.x", status="read", at=T0)])
    assert session_writer.session_row(waiting) == session_writer.session_row(state)


def test_event_row_archives_envelope_and_position():
    log, _ = conversation("acme", "34600111222", [(T0, "info", True)])
    envelope = log[0]
    row = dict(zip(EVENT_COLUMNS, event_writer.event_row(envelope, "baton.conversations", 1, 42), strict=True))
    assert row["event_id"] == envelope.event_id
    assert (row["tenant_id"], row["stream_id"]) == ("acme", "conversation:acme:34600111222")
    assert (row["type"], row["schema_version"], row["actor"]) == ("conversation.message.received", 1, "ingest:whatsapp")
    assert row["occurred_at"] == row["recorded_at"] == T0
    assert (row["correlation_id"], row["causation_id"]) == (envelope.event_id, None)
    assert (row["topic"], row["partition"], row["offset"]) == ("baton.conversations", 1, 42)
    assert json.loads(row["payload"]) == {
        "contact": "34600111222", "whatsapp_message_id": envelope.payload.whatsapp_message_id,
        "message_type": "text", "contact_name": None, "phone_number_id": None, "text": "question for info",
        "reply_id": None, "media": None, "location": None, "reaction_to": None, "context_message_id": None,
    }


def test_emitted_event_row_names_its_cause():
    log, _ = conversation("acme", "34600111222", [(T0, "info", True)])
    started = log[1]
    row = dict(zip(EVENT_COLUMNS, event_writer.event_row(started, "t", 0, 7), strict=True))
    assert row["type"] == "conversation.session.started"
    assert (row["causation_id"], row["correlation_id"]) == (log[0].event_id, log[0].event_id)
    assert row["actor"] == "fold:conversations"


def test_last_per_key_keeps_newest_state_of_each_session():
    rows = [("s1", 1), ("s2", 1), ("s1", 2), ("s1", 3)]
    assert last_per_key(rows) == [("s1", 3), ("s2", 1)]


def test_first_per_key_keeps_earliest_copy_of_each_event():
    rows = [("e1", "offset 3"), ("e2", "offset 4"), ("e1", "offset 9")]
    assert first_per_key(rows) == [("e1", "offset 3"), ("e2", "offset 4")]
