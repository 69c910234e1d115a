"""The events archive every domain shares: one row per event id, the log's earliest copy kept."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from psycopg import AsyncCursor

from projections.readmodel import ReadModel, write_rows
from schemas import Envelope

_json = msgspec.json.Encoder(order="deterministic")


def event_row(envelope: Envelope, topic: str, partition: int, offset: int) -> tuple:
    """The events row archiving one envelope read at (topic, partition, offset)."""
    return (
        envelope.event_id, envelope.tenant_id, envelope.stream_id, envelope.type, envelope.schema_version,
        envelope.occurred_at, envelope.recorded_at, envelope.correlation_id, envelope.causation_id,
        envelope.actor, _json.encode(envelope.payload).decode(), topic, partition, offset, envelope.policy,
    )


EVENTS = ReadModel(
    table="events",
    columns=(
        ("event_id", "uuid"), ("tenant_id", "text"), ("stream_id", "text"), ("type", "text"),
        ("schema_version", "integer"), ("occurred_at", "timestamptz"), ("recorded_at", "timestamptz"),
        ("correlation_id", "uuid"), ("causation_id", "uuid"), ("actor", "text"), ("payload", "jsonb"),
        ("topic", "text"), ("partition", "integer"), ("offset", "bigint"), ("policy", "text"),
    ),
    upsert=False,
)


async def write_events(cur: AsyncCursor, rows: Sequence[tuple], schema: str = "public") -> int:
    """Insert event rows in one statement; events already archived are left alone. Returns rows inserted."""
    return await write_rows(cur, EVENTS, rows, schema)
