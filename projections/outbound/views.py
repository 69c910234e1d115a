"""Read-only queries over the outbound read models; every query is scoped to one tenant."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any, Literal

from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from projections.connections import Source, connection

Status = Literal["deferred", "sending", "retrying", "sent", "dropped", "failed"]
Priority = Literal["urgent", "high", "medium", "low"]


class MessageSummary(BaseModel):
    """One queued message and where it stands."""

    message_id: str
    user_id: str
    agent_id: str
    message_type: str
    priority: Priority
    status: Status
    reason: str | None = Field(description="Reason of the last decision (or of the failure).")
    queued_at: datetime
    due_at: datetime | None = Field(description="When a deferred message is next considered.")
    expires_at: datetime | None
    sent_at: datetime | None


class DeferredUntilView(BaseModel):
    """When a deferred message was due, as decided: in UTC and on the user's wall clock, with the zone."""

    at: datetime = Field(description="The due instant in UTC.")
    local_time: str = Field(description="The user's local time then, ISO 8601 with its offset "
                                        "(e.g. 2026-06-02T08:00:00+02:00).")
    timezone: str = Field(description="The user's IANA zone (e.g. Europe/Madrid).")
    abbreviation: str = Field(description="The zone's abbreviation at that instant (e.g. CEST).")
    tz_version: str = Field(description="The tz database version the local time was computed with.")


class DecisionView(BaseModel):
    """One decision with its reason and the inputs it was taken on."""

    decision: Literal["approved", "deferred", "released", "dropped"]
    reason: str
    event_id: str
    at: datetime
    due_at: datetime | None = None
    deferred_until: DeferredUntilView | None = Field(
        None, description="A deferral's due instant, UTC and local with the zone; kept after release or failure.")
    inputs: dict[str, Any] = Field(description="Budget before/after, local time and date, zone, tz version, "
                                               "active or not, quiet hours, daily limit, rule.")


class MessageDetail(MessageSummary):
    """A message with its data, rendering, delivery and every decision."""

    message_data: dict[str, Any]
    can_delay: bool
    requires_fresh_context: bool
    idempotency_key: str | None
    decided_at: datetime | None
    attempts: int
    retry_at: datetime | None
    rendered_text: str | None
    whatsapp_message_id: str | None
    decisions: list[DecisionView]


class QueueCount(BaseModel):
    """Messages with one status and priority."""

    status: Status
    priority: Priority
    count: int


class Queue(BaseModel):
    """Counts by status and priority, and the matching messages (priority order, then oldest first)."""

    counts: list[QueueCount]
    items: list[MessageSummary]


class Budget(BaseModel):
    """A user's budget on one of their local dates."""

    user_id: str
    date: date
    sent: int
    limit: int
    remaining: int
    last_message_at: datetime | None


class Activity(BaseModel):
    """Whether a user is active: an inbound message from their contact within the active window."""

    user_id: str
    active: bool
    last_inbound_at: datetime | None
    active_window_minutes: float
    contact: str | None
    last_message_at: datetime | None


_SUMMARY = ("message_id, user_id, agent_id, message_type, priority, status, reason, queued_at, due_at, expires_at,"
            " sent_at")


async def queue(source: Source, tenant: str, *, user_id: str | None, status: str | None, priority: str | None,
                limit: int) -> Queue:
    """Counts by status and priority, and up to `limit` messages, filtered alike."""
    where, params = _filters(tenant, user_id=user_id, status=status, priority=priority)
    async with connection(source) as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT status, priority, count(*) AS count FROM outbound_messages WHERE {where}"
                          " GROUP BY status, priority, priority_rank ORDER BY status, priority_rank", params)
        counts = [QueueCount(**row) for row in await cur.fetchall()]
        await cur.execute(f"SELECT {_SUMMARY} FROM outbound_messages WHERE {where}"
                          " ORDER BY priority_rank, queued_at, seq LIMIT %(limit)s", {**params, "limit": limit})
        items = [MessageSummary(**row) for row in await cur.fetchall()]
    return Queue(counts=counts, items=items)


def _filters(tenant: str, **filters: str | None) -> tuple[str, dict[str, Any]]:
    clauses = ["tenant_id = %(tenant)s"] + [f"{name} = %({name})s" for name, v in filters.items() if v is not None]
    return " AND ".join(clauses), {"tenant": tenant, **filters}


async def get_message(source: Source, tenant: str, message_id: str) -> MessageDetail | None:
    """One message with every decision, or None."""
    async with connection(source) as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_SUMMARY}, message_data, can_delay, requires_fresh_context, idempotency_key, decided_at,"
            " attempts, retry_at, rendered_text, whatsapp_message_id, decisions FROM outbound_messages"
            " WHERE tenant_id = %s AND message_id = %s", (tenant, message_id))
        row = await cur.fetchone()
    if row is None:
        return None
    data = row.pop("message_data")
    return MessageDetail(**row, message_data={"type": data["type"], **data.get("fields", {})})


async def budgets(source: Source, tenant: str, day: date) -> list[Budget]:
    """Every user's budget on that local date (users who were sent nothing that day have no row)."""
    async with connection(source) as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT user_id, day AS date, sent, daily_limit AS limit, greatest(daily_limit - sent, 0)"
                          " AS remaining, last_message_at FROM outbound_budgets WHERE tenant_id = %s AND day = %s"
                          " ORDER BY user_id", (tenant, day))
        return [Budget(**row) for row in await cur.fetchall()]


async def activity(source: Source, tenant: str, user_id: str, window: timedelta) -> Activity | None:
    """A user's activity now (wall clock), or None for an unknown user."""
    async with connection(source) as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT user_id, coalesce(last_inbound_at >= now() - %s, false) AS active, last_inbound_at,"
                          " contact, last_message_at FROM outbound_users WHERE tenant_id = %s AND user_id = %s",
                          (window, tenant, user_id))
        row = await cur.fetchone()
    return None if row is None else Activity(**row, active_window_minutes=window.total_seconds() / 60)


class DailyDecisions(BaseModel):
    """Decisions of one kind (a drop with its reason) on one UTC day."""

    day: str
    decision: str
    count: int


_DECISIONS = ["outbound.message.approved", "outbound.message.deferred", "outbound.message.released",
              "outbound.message.dropped", "outbound.message.sent"]


async def daily_decisions(source: Source, tenant_id: str, days: int = 30) -> list[DailyDecisions]:
    """Decisions and sends per UTC day of event time, over the last `days` days up to the newest one."""
    async with connection(source) as conn:
        cur = await conn.execute(
            "WITH d AS (SELECT occurred_at, split_part(type, '.', 3) || CASE WHEN type = 'outbound.message.dropped'"
            "   THEN ': ' || coalesce(payload->>'reason', '?') ELSE '' END AS decision"
            "  FROM events WHERE tenant_id = %s AND type = ANY(%s))"
            " SELECT to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), decision, count(*) FROM d"
            " WHERE occurred_at >= (SELECT max(occurred_at) FROM d) - make_interval(days => %s)"
            " GROUP BY 1, 2 ORDER BY 1, 2", (tenant_id, _DECISIONS, days))
        return [DailyDecisions(day=day, decision=decision, count=n) for day, decision, n in await cur.fetchall()]
