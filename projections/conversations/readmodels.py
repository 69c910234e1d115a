"""Conversation read-model rows: the conversation_sessions row of each session state."""

from __future__ import annotations

import msgspec

from agents.conversations.fold import ConversationState
from projections.readmodel import ReadModel
from schemas.conversations import conversation_stream_id

_json = msgspec.json.Encoder(order="deterministic")


def session_row(state: ConversationState) -> tuple:
    """The conversation_sessions row of one session state."""
    routed = state.routed
    return (
        state.session_id, state.tenant_id, state.contact, state.contact_name,
        conversation_stream_id(state.tenant_id, state.contact), state.session_number,
        state.started_at, state.last_activity_at, state.expires_at, state.lane,
        _json.encode(state.lane_history).decode(), _json.encode(state.dialogue).decode(),
        state.messages_received, state.duplicates_dropped,
        routed.get("info", 0), routed.get("commerce", 0), routed.get("support", 0),
        state.replies_requested, state.replies_sent, state.replies_failed, _json.encode(state.tickets).decode(),
    )


SESSIONS = ReadModel(
    table="conversation_sessions",
    columns=(
        ("session_id", "uuid"), ("tenant_id", "text"), ("contact", "text"), ("contact_name", "text"),
        ("stream_id", "text"), ("session_number", "integer"), ("started_at", "timestamptz"),
        ("last_activity_at", "timestamptz"), ("expires_at", "timestamptz"), ("lane", "text"),
        ("lane_history", "jsonb"), ("dialogue", "jsonb"), ("messages_received", "integer"),
        ("duplicates_dropped", "integer"), ("routed_info", "integer"), ("routed_commerce", "integer"),
        ("routed_support", "integer"), ("replies_requested", "integer"), ("replies_sent", "integer"),
        ("replies_failed", "integer"), ("tickets", "jsonb"),
    ),
    # A contact linked to an outbound user before writing has no session yet, hence no row.
    rows=lambda state: (session_row(state),) if state.session_number else (),
)
