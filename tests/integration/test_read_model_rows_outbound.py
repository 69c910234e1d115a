"""The outbound read models on a real PostgreSQL: rows projected from one user's known events, read back by name.

One user in Madrid (CET, UTC+1) with quiet hours 21:30-07:15: message A is sent while the user is active (one
failed attempt, then a retry), message B is queued in quiet hours, deferred and released the next morning.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import pytest

from projections.outbound.readmodels import BUDGETS, MESSAGES, USERS
from schemas import Payload
from schemas.outbound import (
    MessageData,
    MessageQueued,
    MessageRendered,
    MessageSent,
    PreferencesUpdated,
    QuietHours,
    SendFailed,
    UserActive,
    UserTicked,
)
from tests.fixtures.folds import states_after

pytestmark = pytest.mark.integration

A = str(uuid.UUID(int=0xA))  # a message's id is the id of the event that queued it
B = str(uuid.UUID(int=0xB))
STREAM = "outbound:acme:u1"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def story() -> dict[str, object]:
    """The user's state after each named step, folded with the domain's own folder."""
    events: list[tuple[str, str, Payload, uuid.UUID | None]] = [
        ("prefs", "2026-03-02 08:00", PreferencesUpdated(
            user_id="u1", timezone="Europe/Madrid", quiet_hours=QuietHours(start="21:30", end="07:15"),
            daily_limit=3, contact="34600111222"), None),
        ("active", "2026-03-02 09:00", UserActive(user_id="u1", contact="34600111222", message_event_id="wamid.in"),
         None),
        ("queued_a", "2026-03-02 09:05", MessageQueued(
            user_id="u1", agent_id="agent-a", message_data=MessageData(type="weekly_summary", fields={"week": 9}),
            priority="high", can_delay=False, requires_fresh_context=True, idempotency_key="idem-a",
            expires_at=utc("2026-03-03 12:00")), uuid.UUID(A)),
        ("rendered_a", "2026-03-02 09:06", MessageRendered(
            user_id="u1", message_id=A, text="Your week 9 summary", method="template"), None),
        ("failed_a", "2026-03-02 09:07", SendFailed(
            user_id="u1", message_id=A, attempt=1, reason="timeout", retryable=True, sender="fake"), None),
        ("retried_a", "2026-03-02 09:08", UserTicked(user_id="u1"), None),
        ("sent_a", "2026-03-02 09:09", MessageSent(
            user_id="u1", message_id=A, attempt=2, whatsapp_message_id="wamid.out.a", sender="fake"), None),
        ("queued_b", "2026-03-02 21:00", MessageQueued(
            user_id="u1", agent_id="agent-b", message_data=MessageData(type="text", fields={"body": "hola"}),
            priority="low"), uuid.UUID(B)),
        ("released_b", "2026-03-03 06:20", UserTicked(user_id="u1"), None),
        ("rendered_b", "2026-03-03 06:22", MessageRendered(user_id="u1", message_id=B, text="Hola!", method="llm"),
         None),
        ("sent_b", "2026-03-03 06:25", MessageSent(
            user_id="u1", message_id=B, attempt=1, whatsapp_message_id="wamid.out.b", sender="fake"), None),
    ]
    states = states_after("outbound", [(utc(when), payload, event_id) for _, when, payload, event_id in events])
    return dict(zip((name for name, *_ in events), states, strict=True))


async def test_outbound_messages_columns_by_name(project_rows) -> None:
    states = story()
    # A retrying after its failed first attempt, then the final state: its row is upserted, B's inserted.
    (retrying,) = await project_rows(MESSAGES, [states["failed_a"]])
    assert (retrying["status"], retrying["reason"], retrying["attempts"]) == ("retrying", "timeout", 1)
    assert retrying["retry_at"] == utc("2026-03-02 09:07:30")  # the default 30 s backoff
    assert (retrying["sent_at"], retrying["whatsapp_message_id"]) == (None, None)
    assert retrying["rendered_text"] == "Your week 9 summary"

    a, b = await project_rows(MESSAGES, [states["sent_b"]])
    assert a["message_id"] == A
    assert (a["tenant_id"], a["user_id"], a["stream_id"]) == ("acme", "u1", STREAM)
    assert (a["seq"], a["agent_id"]) == (1, "agent-a")
    assert a["message_type"] == "weekly_summary"
    assert a["message_data"] == {"type": "weekly_summary", "fields": {"week": 9}}
    assert (a["priority"], a["priority_rank"]) == ("high", 1)
    assert (a["can_delay"], a["requires_fresh_context"]) == (False, True)
    assert a["idempotency_key"] == "idem-a"
    assert (a["status"], a["reason"]) == ("sent", None)
    assert a["queued_at"] == utc("2026-03-02 09:05")
    assert a["expires_at"] == utc("2026-03-03 12:00")
    assert a["due_at"] is None
    assert a["decided_at"] == utc("2026-03-02 09:05")
    assert a["sent_at"] == utc("2026-03-02 09:09")
    assert (a["attempts"], a["retry_at"]) == (2, None)
    assert a["rendered_text"] == "Your week 9 summary"
    assert a["whatsapp_message_id"] == "wamid.out.a"
    assert [(d["decision"], d["reason"], d["at"]) for d in a["decisions"]] == [
        ("approved", "active_user", "2026-03-02T09:05:00Z")]

    assert b["message_id"] == B
    assert (b["tenant_id"], b["user_id"], b["stream_id"]) == ("acme", "u1", STREAM)
    assert (b["seq"], b["agent_id"], b["message_type"]) == (2, "agent-b", "text")
    assert b["message_data"] == {"type": "text", "fields": {"body": "hola"}}
    assert (b["priority"], b["priority_rank"]) == ("low", 3)
    assert (b["can_delay"], b["requires_fresh_context"], b["idempotency_key"]) == (True, False, None)
    assert (b["status"], b["reason"]) == ("sent", None)
    assert b["queued_at"] == utc("2026-03-02 21:00")
    assert b["expires_at"] is None
    assert b["due_at"] == utc("2026-03-03 06:15")  # the end of quiet hours, 07:15 in Madrid
    assert b["decided_at"] == utc("2026-03-03 06:20")
    assert b["sent_at"] == utc("2026-03-03 06:25")
    assert (b["attempts"], b["retry_at"]) == (1, None)
    assert (b["rendered_text"], b["whatsapp_message_id"]) == ("Hola!", "wamid.out.b")
    assert [(d["decision"], d["reason"], d["at"]) for d in b["decisions"]] == [
        ("deferred", "quiet_hours", "2026-03-02T21:00:00Z"), ("released", "slot_available", "2026-03-03T06:20:00Z")]
    assert b["decisions"][0]["due_at"] == "2026-03-03T06:15:00Z"


async def test_outbound_users_columns_by_name(project_rows) -> None:
    states = story()
    (row,) = await project_rows(USERS, [states["queued_b"]])
    assert (row["stream_id"], row["tenant_id"], row["user_id"]) == (STREAM, "acme", "u1")
    assert row["timezone"] == "Europe/Madrid"
    assert (row["quiet_hours_start"], row["quiet_hours_end"]) == ("21:30", "07:15")
    assert row["daily_limit"] == 3
    assert row["contact"] == "34600111222"
    assert row["last_inbound_at"] == utc("2026-03-02 09:00")
    assert row["last_message_at"] == utc("2026-03-02 09:09")
    assert (row["budget_date"], row["sent_on_date"]) == (date(2026, 3, 2), 1)
    assert row["wakeup_at"] == utc("2026-03-03 06:15")  # B is due then

    # The next morning: B sent, a new local date, no wake-up pending; the row is upserted.
    (row,) = await project_rows(USERS, [states["sent_b"]])
    assert row["last_inbound_at"] == utc("2026-03-02 09:00")
    assert row["last_message_at"] == utc("2026-03-03 06:25")
    assert (row["budget_date"], row["sent_on_date"]) == (date(2026, 3, 3), 1)
    assert row["wakeup_at"] is None


async def test_outbound_budgets_columns_by_name(project_rows) -> None:
    states = story()
    await project_rows(BUDGETS, [states["sent_a"]])
    # A later state of the same day, then the next day's: the first day's row keeps its last value.
    await project_rows(BUDGETS, [states["queued_b"]])
    first, second = await project_rows(BUDGETS, [states["sent_b"]])
    assert first["id"] == f"{STREAM}|2026-03-02"
    assert (first["tenant_id"], first["user_id"], first["day"]) == ("acme", "u1", date(2026, 3, 2))
    assert (first["sent"], first["daily_limit"]) == (1, 3)
    assert first["last_message_at"] == utc("2026-03-02 09:09")

    assert second["id"] == f"{STREAM}|2026-03-03"
    assert (second["tenant_id"], second["user_id"], second["day"]) == ("acme", "u1", date(2026, 3, 3))
    assert (second["sent"], second["daily_limit"]) == (1, 3)
    assert second["last_message_at"] == utc("2026-03-03 06:25")
