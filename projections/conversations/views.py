"""Read-only queries over the conversation read models; every query is scoped to one tenant."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Literal

import msgspec
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from projections.connections import InvalidCursor, Source, connection

Lane = Literal["info", "commerce", "support"]


class LaneCounts(BaseModel):
    """Messages routed to each lane."""

    info: int = 0
    commerce: int = 0
    support: int = 0


class LaneChangeView(BaseModel):
    """A routing decision that set the session's lane."""

    lane: Lane
    at: datetime
    message_event_id: uuid.UUID
    method: str


class TurnView(BaseModel):
    """One line of dialogue."""

    seq: int
    role: Literal["contact", "agent"]
    event_id: uuid.UUID
    at: datetime
    message_type: str
    text: str | None = None
    lane: Lane | None = None
    whatsapp_message_id: str | None = None
    status: str | None = Field(None, description="Delivery status of an agent turn: requested, sent, delivered, read, failed.")


class SessionSummary(BaseModel):
    """The latest session of one contact."""

    session_id: uuid.UUID
    contact: str
    contact_name: str | None
    session_number: int
    started_at: datetime
    last_activity_at: datetime
    expires_at: datetime
    active: bool = Field(description="True while expires_at is in the future.")
    lane: Lane | None
    messages_received: int
    replies_sent: int


class Conversation(SessionSummary):
    """A contact's latest session with its dialogue and lane history, and its earlier sessions."""

    stream_id: str
    lane_history: list[LaneChangeView]
    dialogue: list[TurnView]
    duplicates_dropped: int
    routed: LaneCounts
    replies_requested: int
    replies_failed: int
    tickets: list[str]
    previous_session_ids: list[uuid.UUID] = Field(description="Earlier sessions of the contact, newest first.")


class ConversationPage(BaseModel):
    """One page of conversations, most recently active first."""

    items: list[SessionSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class ConversationStats(BaseModel):
    """Totals over every session of the tenant."""

    sessions: int
    active_sessions: int
    contacts: int
    messages_received: int
    lanes: LaneCounts = Field(description="Messages routed per lane.")
    orchestrated: int = Field(description="Replies agents requested.")
    replies_sent: int
    replies_failed: int
    success_rate: float | None = Field(description="replies_sent / (replies_sent + replies_failed); null before any reply.")
    duplicates_dropped: int


_SUMMARY = """session_id, contact, contact_name, session_number, started_at, last_activity_at, expires_at,
    expires_at > now() AS active, lane, messages_received, replies_sent"""

_GET = f"""
SELECT {_SUMMARY}, stream_id, lane_history, dialogue, duplicates_dropped,
    json_build_object('info', routed_info, 'commerce', routed_commerce, 'support', routed_support) AS routed,
    replies_requested, replies_failed, tickets,
    ARRAY(SELECT p.session_id FROM conversation_sessions p
          WHERE p.tenant_id = s.tenant_id AND p.contact = s.contact AND p.session_id <> s.session_id
          ORDER BY p.started_at DESC, p.session_number DESC) AS previous_session_ids
FROM conversation_sessions s
WHERE tenant_id = %(tenant)s AND contact = %(contact)s
ORDER BY started_at DESC, session_number DESC
LIMIT 1
"""

_LIST = f"""
WITH latest AS (
    SELECT DISTINCT ON (contact) {_SUMMARY}
    FROM conversation_sessions
    WHERE tenant_id = %(tenant)s
    ORDER BY contact, started_at DESC, session_number DESC
)
SELECT * FROM latest
WHERE (%(lane)s::text IS NULL OR lane = %(lane)s)
  AND (%(active)s::boolean IS NULL OR active = %(active)s)
  AND (%(after_at)s::timestamptz IS NULL OR (last_activity_at, contact) < (%(after_at)s, %(after_contact)s))
ORDER BY last_activity_at DESC, contact DESC
LIMIT %(limit)s
"""

_STATS = """
SELECT count(*) AS sessions,
    count(*) FILTER (WHERE expires_at > now()) AS active_sessions,
    count(DISTINCT contact) AS contacts,
    coalesce(sum(messages_received), 0) AS messages_received,
    json_build_object('info', coalesce(sum(routed_info), 0), 'commerce', coalesce(sum(routed_commerce), 0),
                      'support', coalesce(sum(routed_support), 0)) AS lanes,
    coalesce(sum(replies_requested), 0) AS orchestrated,
    coalesce(sum(replies_sent), 0) AS replies_sent,
    coalesce(sum(replies_failed), 0) AS replies_failed,
    coalesce(sum(duplicates_dropped), 0) AS duplicates_dropped
FROM conversation_sessions
WHERE tenant_id = %(tenant)s
"""


async def get_conversation(source: Source, tenant_id: str, contact: str) -> Conversation | None:
    """The contact's latest session, or None when the tenant has never heard from it."""
    async with connection(source) as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_GET, {"tenant": tenant_id, "contact": contact})
        row = await cur.fetchone()
    return Conversation.model_validate(row) if row else None


async def list_conversations(
    source: Source, tenant_id: str, *, lane: Lane | None = None, active: bool | None = None,
    limit: int = 50, cursor: str | None = None,
) -> ConversationPage:
    """Each contact's latest session, most recently active first, filtered by lane and activity."""
    after_at, after_contact = _decode_cursor(cursor) if cursor else (None, None)
    params = {"tenant": tenant_id, "lane": lane, "active": active, "after_at": after_at,
              "after_contact": after_contact, "limit": limit + 1}
    async with connection(source) as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_LIST, params)
        rows = await cur.fetchall()
    items = [SessionSummary.model_validate(row) for row in rows[:limit]]
    more = len(rows) > limit
    return ConversationPage(items=items, next_cursor=_encode_cursor(items[-1]) if more else None)


async def conversation_stats(source: Source, tenant_id: str) -> ConversationStats:
    """Lane distribution, orchestrated replies, success rate and duplicates over the tenant's sessions."""
    async with connection(source) as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_STATS, {"tenant": tenant_id})
        row = await cur.fetchone()
    assert row is not None
    answered = row["replies_sent"] + row["replies_failed"]
    return ConversationStats.model_validate(
        {**row, "success_rate": row["replies_sent"] / answered if answered else None}
    )


def _encode_cursor(last: SessionSummary) -> str:
    raw = msgspec.json.encode((last.last_activity_at, last.contact))
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return msgspec.json.decode(raw, type=tuple[datetime, str])
    except (ValueError, msgspec.DecodeError):
        raise InvalidCursor(f"invalid cursor {cursor!r}") from None


class DailyLaneCount(BaseModel):
    """Messages routed to one lane on one UTC day."""

    day: str
    lane: Lane
    messages: int


async def daily_lanes(source: Source, tenant_id: str, days: int = 30) -> list[DailyLaneCount]:
    """Routed messages per UTC day (of the message) and lane over the last `days` days of event time."""
    async with connection(source) as conn:
        cur = await conn.execute(
            "WITH routed AS (SELECT m.occurred_at, r.payload->>'lane' AS lane FROM events r"
            "  JOIN events m ON m.event_id = (r.payload->>'message_event_id')::uuid"
            "  WHERE r.tenant_id = %s AND r.type IN ('conversation.message.routed', 'conversation.message.answered'))"
            " SELECT to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), lane, count(*) FROM routed"
            " WHERE occurred_at >= (SELECT max(occurred_at) FROM routed) - make_interval(days => %s)"
            " GROUP BY 1, 2 ORDER BY 1, 2", (tenant_id, days))
        return [DailyLaneCount(day=d, lane=lane, messages=n) for d, lane, n in await cur.fetchall()]
