"""Read-model rows on a real PostgreSQL: what the writers' statements store, keep, replace and read back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from agents.conversations.fold import ConversationState, fold
from projections import archive as event_writer

# The writers' module layout, in one place.
from projections.conversations import readmodels as session_writer
from projections.migrations import apply_migrations
from projections.readmodel import write_rows
from projections.workflow.search import derive_search
from tests.fixtures.conversation_logs import conversation, inbound

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SESSIONS = session_writer.SESSIONS


async def write_events(conn: AsyncConnection, rows: list[tuple], schema: str = "public") -> int:
    async with conn.transaction(), conn.cursor() as cur:
        return await event_writer.write_events(cur, rows, schema)


async def write_sessions(conn: AsyncConnection, states: list[ConversationState], schema: str = "public") -> int:
    async with conn.transaction(), conn.cursor() as cur:
        return await write_rows(cur, SESSIONS, [session_writer.session_row(s) for s in states], schema)


async def select(conn: AsyncConnection, query: str | sql.Composed, *params: object) -> list[dict]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params or None)
        return await cur.fetchall()


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[AsyncConnection]:
    await apply_migrations(database_url)
    async with await AsyncConnection.connect(database_url, autocommit=True) as connection:
        yield connection


def event_rows(log, topic: str = "baton.conversations", partition: int = 0, first_offset: int = 0) -> list[tuple]:
    return [event_writer.event_row(e, topic, partition, first_offset + i) for i, e in enumerate(log)]


async def test_events_are_archived_once_with_their_first_position(conn: AsyncConnection) -> None:
    log, _ = conversation("acme", "34600111222", [(T0, "info", True), (T0 + timedelta(minutes=5), "support", False)])
    rows = event_rows(log)
    # The same events read again at later offsets (a redelivery), in the same batch and in a later one.
    assert await write_events(conn, [*rows, *event_rows(log[:3], first_offset=100)]) == len(log)
    assert await write_events(conn, event_rows(log, first_offset=200)) == 0

    stored = await select(conn, 'SELECT * FROM events ORDER BY "offset"')
    assert [r["event_id"] for r in stored] == [e.event_id for e in log]
    assert [r["offset"] for r in stored] == list(range(len(log)))
    first = stored[0]
    assert (first["tenant_id"], first["stream_id"], first["type"], first["schema_version"]) == (
        "acme", "conversation:acme:34600111222", "conversation.message.received", 1)
    assert first["occurred_at"] == T0 and first["occurred_at"].utcoffset() is not None
    assert first["causation_id"] is None and first["correlation_id"] == log[0].event_id
    assert first["payload"] == msgspec.to_builtins(log[0].payload)  # jsonb read back as the payload document
    assert (first["topic"], first["partition"]) == ("baton.conversations", 0)
    assert stored[1]["causation_id"] == log[0].event_id


async def test_archived_text_is_searchable(conn: AsyncConnection) -> None:
    log, _ = conversation("acme", "34600111222", [(T0, "support", True)])
    await write_events(conn, event_rows(log))
    # Through context search's read model, derived from the archive as the projector derives it.
    async with conn.transaction(), conn.cursor() as cur:
        await derive_search(cur, "public", [e.event_id for e in log])
    found = await select(conn, "SELECT type FROM workflow_search WHERE doc @@ plainto_tsquery('english', %s)"
                         " ORDER BY type", "support")
    assert {r["type"] for r in found} >= {"conversation.message.received", "conversation.message.routed"}


async def test_sessions_upsert_keeps_the_newest_state(conn: AsyncConnection) -> None:
    _, state = conversation("acme", "34600111222", [(T0, "info", True)], name="Ana")
    _, later = conversation("acme", "34600111222", [(T0 + timedelta(minutes=5), "commerce", False)],
                            name="Ana", state=state)
    assert later.session_id == state.session_id

    # Two states of one session in one batch: only the last is written.
    assert await write_sessions(conn, [state, later]) == 1
    (row,) = await select(conn, "SELECT * FROM conversation_sessions")
    assert (row["lane"], row["messages_received"], row["replies_failed"]) == ("commerce", 2, 1)
    assert (row["routed_info"], row["routed_commerce"]) == (1, 1)
    assert [t["text"] for t in row["dialogue"]] == [
        "question for info", "answer info", "question for commerce", "answer commerce"]
    assert [c["lane"] for c in row["lane_history"]] == ["info", "commerce"]
    assert row["last_activity_at"] == T0 + timedelta(minutes=5)


async def test_rewriting_an_unchanged_session_changes_nothing(conn: AsyncConnection) -> None:
    _, state = conversation("acme", "34600111222", [(T0, "info", True)])
    assert await write_sessions(conn, [state]) == 1
    (before,) = await select(conn, "SELECT projected_at FROM conversation_sessions")
    assert await write_sessions(conn, [state, state]) == 0
    (after,) = await select(conn, "SELECT projected_at FROM conversation_sessions")
    assert after["projected_at"] == before["projected_at"]


async def test_each_session_of_a_contact_is_its_own_row(conn: AsyncConnection) -> None:
    _, first = conversation("acme", "34600111222", [(T0, "info", True)])
    message = inbound("acme", "34600111222", "wamid.later", T0 + timedelta(days=2), text="hola otra vez")
    second, _ = fold(first, message)
    other_tenant = conversation("globex", "34600111222", [(T0, "support", True)])[1]
    assert await write_sessions(conn, [first, second, other_tenant]) == 3

    rows = await select(conn, "SELECT tenant_id, session_number, session_id FROM conversation_sessions"
                              " ORDER BY tenant_id, session_number")
    assert [(r["tenant_id"], r["session_number"]) for r in rows] == [("acme", 1), ("acme", 2), ("globex", 1)]
    assert rows[0]["session_id"] == first.session_id and rows[1]["session_id"] == second.session_id


async def test_rows_go_to_the_schema_they_are_written_to(conn: AsyncConnection, database_url: str) -> None:
    await apply_migrations(database_url, "replay_shadow")
    log, state = conversation("acme", "34600111222", [(T0, "info", True)])
    assert await write_events(conn, event_rows(log), "replay_shadow") == len(log)
    assert await write_sessions(conn, [state], "replay_shadow") == 1

    shadow = sql.Identifier("replay_shadow")
    count = "SELECT (SELECT count(*) FROM {s}.events) AS events, (SELECT count(*) FROM {s}.conversation_sessions) AS s"
    assert (await select(conn, sql.SQL(count).format(s=shadow)))[0] == {"events": len(log), "s": 1}
    assert (await select(conn, sql.SQL(count).format(s=sql.Identifier("public"))))[0] == {"events": 0, "s": 0}


async def test_a_large_batch_is_one_statement_and_nothing_is_lost(conn: AsyncConnection) -> None:
    states, events = [], []
    for n in range(300):
        log, state = conversation("acme", f"3460{n:07d}", [(T0 + timedelta(seconds=n), "info", True)],
                                  name=f"Ñandú {n} \"quoted\" 'single' \\ back")
        states.append(state)
        events += event_rows(log, partition=n % 4, first_offset=n * 10)
    assert await write_sessions(conn, states) == 300
    assert await write_events(conn, events) == len(events)
    names = await select(conn, "SELECT contact_name FROM conversation_sessions ORDER BY contact")
    assert [r["contact_name"] for r in names] == [s.contact_name for s in states]


async def test_empty_batches_write_nothing(conn: AsyncConnection) -> None:
    assert await write_events(conn, []) == 0
    assert await write_sessions(conn, []) == 0
    assert (await select(conn, "SELECT count(*) AS n FROM events"))[0]["n"] == 0

