"""Conversation read-model rows: pure builders from envelopes and states, and batched upserts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache

import msgspec
from psycopg import AsyncCursor, sql

from agents.folds.conversations import ConversationState
from schemas import Envelope
from schemas.conversations import conversation_stream_id

# (column, PostgreSQL type) in row order; the row builders below produce exactly these tuples.
EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "uuid"), ("tenant_id", "text"), ("stream_id", "text"), ("type", "text"),
    ("schema_version", "integer"), ("occurred_at", "timestamptz"), ("recorded_at", "timestamptz"),
    ("correlation_id", "uuid"), ("causation_id", "uuid"), ("actor", "text"), ("payload", "jsonb"),
    ("topic", "text"), ("partition", "integer"), ("offset", "bigint"),
)
SESSION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("session_id", "uuid"), ("tenant_id", "text"), ("contact", "text"), ("contact_name", "text"),
    ("stream_id", "text"), ("session_number", "integer"), ("started_at", "timestamptz"),
    ("last_activity_at", "timestamptz"), ("expires_at", "timestamptz"), ("lane", "text"),
    ("lane_history", "jsonb"), ("dialogue", "jsonb"), ("messages_received", "integer"),
    ("duplicates_dropped", "integer"), ("routed_info", "integer"), ("routed_commerce", "integer"),
    ("routed_support", "integer"), ("replies_requested", "integer"), ("replies_sent", "integer"),
    ("replies_failed", "integer"), ("tickets", "jsonb"),
)

_json = msgspec.json.Encoder(order="deterministic")


def event_row(envelope: Envelope, topic: str, partition: int, offset: int) -> tuple:
    """The events row archiving one envelope read at (topic, partition, offset)."""
    return (
        envelope.event_id, envelope.tenant_id, envelope.stream_id, envelope.type, envelope.schema_version,
        envelope.occurred_at, envelope.recorded_at, envelope.correlation_id, envelope.causation_id,
        envelope.actor, _json.encode(envelope.payload).decode(), topic, partition, offset,
    )


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


def first_per_key(rows: Iterable[tuple]) -> list[tuple]:
    """Rows deduplicated on their first column, the first occurrence kept (the log's earliest copy)."""
    unique: dict[object, tuple] = {}
    for row in rows:
        unique.setdefault(row[0], row)
    return list(unique.values())


def last_per_key(rows: Iterable[tuple]) -> list[tuple]:
    """Rows coalesced on their first column, the last occurrence kept (the newest state)."""
    return list({row[0]: row for row in rows}.values())


async def write_events(cur: AsyncCursor, rows: Sequence[tuple], schema: str = "public") -> int:
    """Insert event rows in one statement; events already archived are left alone. Returns rows inserted."""
    return await _write(cur, _insert_sql(schema, "events", EVENT_COLUMNS, False), first_per_key(rows))


async def write_sessions(cur: AsyncCursor, rows: Sequence[tuple], schema: str = "public") -> int:
    """Upsert session rows in one statement, last state per session wins. Returns rows changed."""
    statement = _insert_sql(schema, "conversation_sessions", SESSION_COLUMNS, True)
    return await _write(cur, statement, last_per_key(rows))


async def _write(cur: AsyncCursor, statement: sql.Composed, rows: list[tuple]) -> int:
    if not rows:
        return 0
    await cur.execute(statement, [list(column) for column in zip(*rows)])
    return cur.rowcount


@cache
def _insert_sql(schema: str, table: str, columns: tuple[tuple[str, str], ...], upsert: bool) -> sql.Composed:
    """INSERT ... SELECT FROM unnest(one array per column) ON CONFLICT on the first column."""
    names = [sql.Identifier(name) for name, _ in columns]
    arrays = sql.SQL(", ").join(sql.SQL("%b::{}[]").format(sql.SQL(kind)) for _, kind in columns)
    statement = sql.SQL("INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays}) ON CONFLICT ({key}) ").format(
        table=sql.Identifier(schema, table), names=sql.SQL(", ").join(names), arrays=arrays, key=names[0],
    )
    if not upsert:
        return statement + sql.SQL("DO NOTHING")
    target = sql.Identifier(table)
    rest = names[1:]
    return statement + sql.SQL(
        "DO UPDATE SET ({rest}) = ROW({excluded}), projected_at = now() WHERE ({current}) IS DISTINCT FROM ({excluded})"
    ).format(
        rest=sql.SQL(", ").join(rest),
        excluded=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(n) for n in rest),
        current=sql.SQL(", ").join(sql.SQL("{}.{}").format(target, n) for n in rest),
    )
