"""End to end on the real broker and PostgreSQL: webhook → log → worker → projector → query API."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from datetime import UTC, datetime

import httpx
import psycopg
import pytest

from agents.tenants import Tenant
from schemas import Envelope
from streams.deadletter import list_dead_letters
from streams.domains.conversations.demo import (
    message_delivery,
    post_signed,
    status_delivery,
)
from streams.embedded import child_env
from streams.publisher import Publisher
from streams.runtime import Runtime
from streams.settings import settings_env
from tests.fixtures.effects import (
    Replies,
    assert_replies_effectively_once,
    log_identity,
    logged_sends,
    started_sends,
)
from tests.fixtures.pipeline import (
    acme_messages,
    acme_sessions,
    produce_records,
    replay_verify,
)
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration


def conversation(api: httpx.Client, contact: str) -> dict | None:
    response = api.get(f"/v1/conversations/{contact}")
    return response.json() if response.status_code == 200 else None


def replied(api: httpx.Client, contact: str, replies: int = 1):
    """The conversation once `replies` agent turns have been sent."""
    def probe():
        found = conversation(api, contact)
        sent = [t for t in (found or {}).get("dialogue", []) if t["role"] == "agent" and t["status"] == "sent"]
        return found if len(sent) >= replies else None
    return probe


def test_webhook_message_is_routed_answered_and_visible(runtime: Runtime, api: httpx.Client, acme: Tenant) -> None:
    body = message_delivery(acme, "34611000001", "Marta", "wamid.e2e.1", "¿Cuánto cuesta el café en grano?", 1_790_000_000)
    assert post_signed(api, runtime.settings, body).status_code == 200

    found = eventually(replied(api, "34611000001"), "reply visible in the API")
    assert found["lane"] == "commerce"
    assert found["contact_name"] == "Marta"
    contact_turn, agent_turn = found["dialogue"]
    assert contact_turn["text"] == "¿Cuánto cuesta el café en grano?"
    assert contact_turn["lane"] == "commerce"
    assert "18,90 EUR" in agent_turn["text"]
    assert agent_turn["whatsapp_message_id"]

    read = status_delivery(acme, "34611000001", agent_turn["whatsapp_message_id"], "read", 1_790_000_060)
    assert post_signed(api, runtime.settings, read).status_code == 200
    eventually(lambda: conversation(api, "34611000001")["dialogue"][1]["status"] == "read", "read status")

    stats = api.get("/v1/stats/conversations").json()
    assert stats["lanes"]["commerce"] == 1
    assert stats["orchestrated"] == 1
    assert stats["success_rate"] == 1.0


def test_same_webhook_twice_gives_one_turn(runtime: Runtime, api: httpx.Client, acme: Tenant) -> None:
    body = message_delivery(acme, "34611000002", "Pablo", "wamid.e2e.dup", "Tengo un problema con mi pedido", 1_790_000_000)
    for _ in range(2):
        assert post_signed(api, runtime.settings, body).status_code == 200
    later = message_delivery(acme, "34611000002", "Pablo", "wamid.e2e.dup2", "¿Y el horario?", 1_790_000_030)
    assert post_signed(api, runtime.settings, later).status_code == 200

    found = eventually(replied(api, "34611000002", replies=2), "both replies")
    contact_turns = [t for t in found["dialogue"] if t["role"] == "contact"]
    assert [t["text"] for t in contact_turns] == ["Tengo un problema con mi pedido", "¿Y el horario?"]
    assert found["duplicates_dropped"] == 1
    assert len(found["tickets"]) == 1
    assert api.get("/v1/stats/conversations").json()["duplicates_dropped"] == 1


def test_other_tenant_sees_nothing(runtime: Runtime, api: httpx.Client, acme: Tenant) -> None:
    body = message_delivery(acme, "34611000003", "Eva", "wamid.e2e.iso", "hola", 1_790_000_000)
    assert post_signed(api, runtime.settings, body).status_code == 200
    eventually(replied(api, "34611000003"), "reply for acme")

    from streams.auth import issue_token

    globex = {"Authorization": f"Bearer {issue_token(runtime.settings, 'globex')}"}
    assert api.get("/v1/conversations/34611000003", headers=globex).status_code == 404
    assert api.get("/v1/conversations", headers=globex).json()["items"] == []


def test_worker_killed_mid_stream_loses_and_duplicates_nothing(runtime: Runtime) -> None:
    contacts, per_contact = 20, 12
    envelopes = acme_messages(contacts, per_contact, datetime(2026, 11, 1, 9, 0, tzinfo=UTC))

    async def publish(chunk: list[Envelope]) -> None:
        async with Publisher(runtime.settings) as publisher:
            await publisher.publish(chunk)

    half = len(envelopes) // 2
    asyncio.run(publish(envelopes[:half]))
    eventually(lambda: sum(v[0] for v in acme_sessions(runtime.settings).values()) >= 40, "some messages folded")
    runtime.kill("worker", signal.SIGKILL)
    asyncio.run(publish(envelopes[half:]))
    asyncio.run(publish(envelopes[: half // 2]))  # redelivered records
    # The worker is dead: what it started (effect ledger) and left without an outcome is what was in flight.
    in_flight = Replies.on_log(runtime.settings).in_flight(started_sends(runtime.settings))
    runtime.spawn("worker")

    def settled():
        sessions = acme_sessions(runtime.settings)
        done = len(sessions) == contacts and all(v[2] + v[3] == per_contact for v in sessions.values())
        return sessions if done else None

    try:
        sessions = eventually(settled, "every message answered after the restart", within_s=120)
    except AssertionError as exc:
        with psycopg.connect(runtime.settings.database_url) as conn:
            counts = conn.execute("SELECT type, count(*) FROM events GROUP BY type ORDER BY type").fetchall()
            unanswered = conn.execute(  # messages and reply requests that no outcome answers: where they sit
                "SELECT q.type, q.partition, q.\"offset\" FROM events q WHERE q.type IN"
                " ('conversation.message.received', 'conversation.reply.requested') AND NOT EXISTS"
                " (SELECT 1 FROM events a WHERE a.causation_id = q.event_id) ORDER BY 2, 3").fetchall()
        raise AssertionError(f"{exc}; sessions {acme_sessions(runtime.settings)}; events {counts};"
                             f" requests without outcome {unanswered}") from None
    for contact, (received, requested, sent, failed, turns) in sessions.items():
        assert (received, requested, sent + failed, turns) == (per_contact, per_contact, per_contact, 2 * per_contact), contact
    # A send the kill interrupted is never repeated: it is reported failed with an unknown outcome. The log
    # sender's "send" is its log line (flushed per line, so a SIGKILL loses none), naming the reply event id.
    replies = Replies.on_log(runtime.settings)
    assert_replies_effectively_once(
        replies, logged_sends(runtime), log_identity, messages=[e.event_id for e in envelopes],
        in_flight_at_kill=in_flight, after_restart=[e.event_id for e in envelopes[half:]])
    assert {replies.reason(rid) for rid in replies.outcomes} - {None} <= {
        "outcome unknown: the worker stopped during the send; not retried"}

    report = replay_verify(runtime.settings)
    assert report.returncode == 0, report.stdout + report.stderr


def test_replay_verify_reports_a_tampered_read_model(runtime: Runtime, api: httpx.Client, acme: Tenant) -> None:
    body = message_delivery(acme, "34611000004", "Iker", "wamid.e2e.tamper", "¿dónde están?", 1_790_000_000)
    assert post_signed(api, runtime.settings, body).status_code == 200
    eventually(replied(api, "34611000004"), "reply")
    clean = replay_verify(runtime.settings)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    with psycopg.connect(runtime.settings.database_url) as conn:
        conn.execute("UPDATE conversation_sessions SET lane = 'support' WHERE contact = '34611000004'")
    tampered = replay_verify(runtime.settings)
    assert tampered.returncode == 1
    assert "conversation_sessions" in tampered.stdout


def test_undecodable_record_goes_to_dead_letters(runtime: Runtime) -> None:
    settings = runtime.settings

    asyncio.run(produce_records(settings, settings.topic("conversations"),
                                [(b"conversation:acme:x", json.dumps({"type": "conversation.bogus"}).encode())]))
    letters = eventually(
        lambda: [d for d in asyncio.run(list_dead_letters(settings)) if d.stage.startswith("fold")],
        "dead letter from the worker",
    )
    assert letters[0].reason == "decode: invalid envelope: Object missing required field `event_id`"
    assert letters[0].source_topic == settings.topic("conversations")
    cli = subprocess.run([sys.executable, "-m", "streams.cli", "deadletter", "list"],
                         env=child_env(COLUMNS="200", **settings_env(settings)), capture_output=True, text=True, timeout=60, check=False)
    assert cli.returncode == 0 and "fold:conversations" in cli.stdout
