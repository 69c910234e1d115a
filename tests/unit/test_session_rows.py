"""Read-model row builders: deterministic rows and JSON, coalescing, deduplication, SQL shape."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import msgspec

from agents.folds.conversations import decode_state, encode_state
from projections.writers.conversations import (
    EVENT_COLUMNS,
    SESSION_COLUMNS,
    _insert_sql,
    event_row,
    first_per_key,
    last_per_key,
    session_row,
)
from tests.conversation_logs import conversation

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _state():
    _, state = conversation("acme", "34600111222", [(T0, "info", True), (T0 + timedelta(minutes=5), "commerce", False)],
                            name="Ana")
    return state


def test_session_row_matches_columns_and_state():
    state = _state()
    row = dict(zip([name for name, _ in SESSION_COLUMNS], session_row(state), strict=True))
    assert row["session_id"] == state.session_id
    assert row["stream_id"] == "conversation:acme:34600111222"
    assert row["contact_name"] == "Ana"
    assert (row["routed_info"], row["routed_commerce"], row["routed_support"]) == (1, 1, 0)
    assert (row["replies_requested"], row["replies_sent"], row["replies_failed"]) == (2, 1, 1)
    assert row["lane"] == "commerce"
    assert [change["lane"] for change in json.loads(row["lane_history"])] == ["info", "commerce"]
    assert [turn["role"] for turn in json.loads(row["dialogue"])] == ["contact", "agent", "contact", "agent"]
    assert json.loads(row["dialogue"]) == msgspec.to_builtins(state.dialogue)
    assert json.loads(row["tickets"]) == []


def test_session_row_is_deterministic_across_encoding():
    state = _state()
    assert session_row(state) == session_row(decode_state(encode_state(state)))
    assert session_row(state) == session_row(_state())


def test_event_row_archives_envelope_and_position():
    log, _ = conversation("acme", "34600111222", [(T0, "info", True)])
    envelope = log[0]
    row = dict(zip([name for name, _ in EVENT_COLUMNS], event_row(envelope, "baton.conversations", 1, 42), strict=True))
    assert row["event_id"] == envelope.event_id
    assert row["type"] == "conversation.message.received"
    assert (row["topic"], row["partition"], row["offset"]) == ("baton.conversations", 1, 42)
    assert json.loads(row["payload"]) == msgspec.to_builtins(envelope.payload)
    assert event_row(envelope, "t", 0, 1) == event_row(envelope, "t", 0, 1)


def test_last_per_key_keeps_newest_state_of_each_session():
    rows = [("s1", 1), ("s2", 1), ("s1", 2), ("s1", 3)]
    assert last_per_key(rows) == [("s1", 3), ("s2", 1)]


def test_first_per_key_keeps_earliest_copy_of_each_event():
    rows = [("e1", "offset 3"), ("e2", "offset 4"), ("e1", "offset 9")]
    assert first_per_key(rows) == [("e1", "offset 3"), ("e2", "offset 4")]


def test_insert_statements_are_schema_qualified_batches():
    events = _insert_sql("replay_shadow", "events", EVENT_COLUMNS, False).as_string(None)
    sessions = _insert_sql("public", "conversation_sessions", SESSION_COLUMNS, True).as_string(None)
    assert events.startswith('INSERT INTO "replay_shadow"."events"')
    assert "unnest(" in events and events.endswith("DO NOTHING")
    assert events.count("%b") == len(EVENT_COLUMNS)
    assert "DO UPDATE SET" in sessions and "IS DISTINCT FROM" in sessions
