"""Outbound read-model rows: one per message, one per user, one per (user, local date) budget."""

from __future__ import annotations

from datetime import date

import msgspec

from agents.outbound.fold import OutboundState
from projections.readmodel import ReadModel
from schemas.outbound import PRIORITIES, outbound_stream_id

_json = msgspec.json.Encoder(order="deterministic")
_RANK = {priority: rank for rank, priority in enumerate(PRIORITIES)}


def message_rows(state: OutboundState) -> list[tuple]:
    """The outbound_messages rows of one user's queue (terminal messages stay until pruned from the state)."""
    stream_id = outbound_stream_id(state.tenant_id, state.user_id)
    return [
        (m.message_id, state.tenant_id, state.user_id, stream_id, m.seq, m.agent_id, m.message_data.type,
         _json.encode(m.message_data).decode(), m.priority, _RANK[m.priority], m.can_delay,
         m.requires_fresh_context, m.idempotency_key, m.status, m.reason, m.queued_at, m.expires_at, m.due_at,
         m.decided_at, m.sent_at, m.attempts, m.retry_at, m.text, m.whatsapp_message_id,
         _json.encode(m.decisions).decode())
        for m in state.messages
    ]


def user_row(state: OutboundState) -> tuple:
    """The outbound_users row of one user."""
    hours = state.quiet_hours
    return (outbound_stream_id(state.tenant_id, state.user_id), state.tenant_id, state.user_id, state.timezone,
            hours.start if hours else None, hours.end if hours else None, state.daily_limit, state.contact,
            state.last_inbound_at, state.last_message_at,
            date.fromisoformat(state.budget_date) if state.budget_date else None, state.sent_on_date, state.wakeup_at)


def budget_rows(state: OutboundState) -> list[tuple]:
    """The budget row of the user's current local date (earlier dates keep their last row)."""
    if state.budget_date is None or state.budget_limit is None:
        return []
    return [(f"{outbound_stream_id(state.tenant_id, state.user_id)}|{state.budget_date}", state.tenant_id,
             state.user_id, date.fromisoformat(state.budget_date), state.sent_on_date, state.budget_limit,
             state.last_message_at)]


MESSAGES = ReadModel(
    table="outbound_messages",
    columns=(
        ("message_id", "text"), ("tenant_id", "text"), ("user_id", "text"), ("stream_id", "text"),
        ("seq", "integer"), ("agent_id", "text"), ("message_type", "text"), ("message_data", "jsonb"),
        ("priority", "text"), ("priority_rank", "integer"), ("can_delay", "boolean"),
        ("requires_fresh_context", "boolean"), ("idempotency_key", "text"), ("status", "text"), ("reason", "text"),
        ("queued_at", "timestamptz"), ("expires_at", "timestamptz"), ("due_at", "timestamptz"),
        ("decided_at", "timestamptz"), ("sent_at", "timestamptz"), ("attempts", "integer"),
        ("retry_at", "timestamptz"), ("rendered_text", "text"), ("whatsapp_message_id", "text"),
        ("decisions", "jsonb"),
    ),
    rows=message_rows,
)

USERS = ReadModel(
    table="outbound_users",
    columns=(
        ("stream_id", "text"), ("tenant_id", "text"), ("user_id", "text"), ("timezone", "text"),
        ("quiet_hours_start", "text"), ("quiet_hours_end", "text"), ("daily_limit", "integer"), ("contact", "text"),
        ("last_inbound_at", "timestamptz"), ("last_message_at", "timestamptz"), ("budget_date", "date"),
        ("sent_on_date", "integer"), ("wakeup_at", "timestamptz"),
    ),
    row=user_row,
)

BUDGETS = ReadModel(
    table="outbound_budgets",
    columns=(
        ("id", "text"), ("tenant_id", "text"), ("user_id", "text"), ("day", "date"), ("sent", "integer"),
        ("daily_limit", "integer"), ("last_message_at", "timestamptz"),
    ),
    rows=budget_rows,
)
