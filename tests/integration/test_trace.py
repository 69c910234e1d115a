"""Tracing one message across the log: webhook → fold → routing → reply → delivery status, from the archive."""

from __future__ import annotations

import subprocess
import sys

import httpx
import psycopg
import pytest

from streams.embedded import child_env
from streams.runtime import Runtime
from streams.settings import settings_env
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration

CONTACT = "34677000001"


def inbound(wamid: str, text: str) -> dict:
    return {"type": "conversation.message.received", "occurred_at": "2026-12-01T10:00:00Z", "source_id": wamid,
            "payload": {"contact": CONTACT, "whatsapp_message_id": wamid, "message_type": "text", "text": text}}


def test_a_message_is_traced_from_its_whatsapp_id_to_the_delivery_of_its_reply(runtime: Runtime,
                                                                                api: httpx.Client) -> None:
    assert api.post("/v1/events", json=inbound("wamid.trace.1", "¿A qué hora abrís?")).status_code == 202
    assert api.post("/v1/events", json=inbound("wamid.trace.other", "otra cosa")).status_code == 202

    def sent():
        found = api.get("/v1/trace/wamid.trace.1")
        types = [hop["type"] for hop in found.json()["hops"]] if found.status_code == 200 else []
        return "conversation.message.answered" in types and found.json()

    chain = eventually(sent, "the reply sent and traced")
    outcome = next(h for h in chain["hops"] if h["type"] == "conversation.message.answered")
    # WhatsApp later reports the reply delivered: a separate webhook event, linked by the reply's message id.
    wamid_of_reply = _payload_field(runtime, outcome["event_id"], "whatsapp_message_id")
    status = {"type": "conversation.status.updated", "occurred_at": "2026-12-01T10:00:05Z",
              "source_id": f"{wamid_of_reply}:delivered",
              "payload": {"contact": CONTACT, "whatsapp_message_id": wamid_of_reply, "status": "delivered"}}
    assert api.post("/v1/events", json=status).status_code == 202

    def delivered():
        hops = api.get("/v1/trace/wamid.trace.1").json()["hops"]
        return "conversation.status.updated" in [h["type"] for h in hops] and hops

    hops = eventually(delivered, "the delivery status in the trace")
    types = [h["type"] for h in hops]
    assert types[0] == "conversation.message.received"
    # Routed by the rules, answered and sent in one effect run: one outcome event for the turn, and the routing
    # request the fold handed to the effects is not on the log.
    assert "conversation.message.answered" in types
    assert not {"conversation.routing.requested", "conversation.message.routed", "conversation.reply.requested",
                "conversation.reply.sent"} & set(types)
    # The other message of the same contact is a chain of its own.
    texts = [h["summary"] for h in hops if h["type"] == "conversation.message.received"]
    assert texts == ["text: ¿A qué hora abrís?"]
    answered = next(h for h in hops if h["type"] == "conversation.message.answered")
    # Caused by the inbound message it answers, which is shown above it.
    assert answered["depth"] == 1 and answered["gap_ms"] is not None and answered["gap_ms"] >= 0
    assert answered["causation_id"] == hops[0]["event_id"]
    # Equal event times follow the log (the fold wrote session.started after the message, on one partition).
    for same_time in {h["occurred_at"] for h in hops}:
        positions = [(h["topic"], h["partition"], h["offset"]) for h in hops if h["occurred_at"] == same_time]
        for place in {p[:2] for p in positions}:
            offsets = [p[2] for p in positions if p[:2] == place]
            assert offsets == sorted(offsets), (same_time, place, offsets)
    # Indented only as a true causal child: its cause is shown above it, one step less deep.
    for i, hop in enumerate(hops):
        if hop["depth"]:
            (cause,) = [h for h in hops[:i] if h["event_id"] == hop["causation_id"]]
            assert cause["depth"] == hop["depth"] - 1, hop["type"]
    assert api.get("/v1/trace/wamid.nobody").status_code == 404

    printed = subprocess.run([sys.executable, "-m", "streams.cli", "trace", "wamid.trace.1"],
                             env=child_env(COLUMNS="250", **settings_env(runtime.settings)),
                             capture_output=True, text=True, timeout=60, check=False)
    assert printed.returncode == 0, printed.stderr
    assert "conversation.message.answered" in printed.stdout and "conversation.status.updated" in printed.stdout


def _payload_field(runtime: Runtime, event_id: str, field: str) -> str:
    with psycopg.connect(runtime.settings.database_url) as conn:
        (value,) = conn.execute("SELECT payload->>%s FROM events WHERE event_id = %s", (field, event_id)).fetchone()
    return value
