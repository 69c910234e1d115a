"""The worker's real Anthropic and WhatsApp clients against local fake servers, including a SIGKILL mid-send."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from schemas import new_event
from schemas.conversations import ReplyRequested
from streams.embedded import free_port
from streams.publisher import Publisher
from streams.runtime import Runtime
from streams.settings import Settings
from tests.integration.conftest import eventually
from tests.integration.test_pipeline import _messages

pytestmark = pytest.mark.integration


class FakeApis:
    """A loopback server speaking the Graph API messages endpoint and the Anthropic Messages API."""

    def __init__(self, lane: str = "support", anthropic_status: int = 200) -> None:
        self.lane, self.anthropic_status = lane, anthropic_status
        self.sends: list[dict] = []
        self.classifications = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/v1/messages":
                    with fake.lock:
                        fake.classifications += 1
                    if fake.anthropic_status != 200:
                        return self._reply(fake.anthropic_status, {"type": "error", "error": {
                            "type": "overloaded_error", "message": "Overloaded"}})
                    return self._reply(200, {
                        "id": "msg_fake", "type": "message", "role": "assistant", "model": body["model"],
                        "content": [{"type": "text", "text": fake.lane}], "stop_reason": "end_turn",
                        "stop_sequence": None, "usage": {"input_tokens": 120, "output_tokens": 2}})
                assert self.headers["Authorization"] == "Bearer graph-token", self.headers["Authorization"]
                with fake.lock:
                    fake.sends.append({"path": self.path, **body})
                    wamid = f"wamid.fake.{len(fake.sends)}"
                self._reply(200, {"messaging_product": "whatsapp", "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                                  "messages": [{"id": wamid}]})

            def _reply(self, status: int, document: dict) -> None:
                raw = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _runtime(settings: Settings, fake: FakeApis) -> Runtime:
    return Runtime(settings.model_copy(update={
        "api_port": free_port(),
        "anthropic_api_key": "sk-ant-fake", "anthropic_base_url": fake.url,
        "whatsapp_access_token": "graph-token", "whatsapp_api_base": fake.url,
    }))


@pytest.fixture
def fake() -> Iterator[FakeApis]:
    apis = FakeApis()
    yield apis
    apis.close()


def _publish(settings: Settings, envelopes: list) -> None:
    async def run() -> None:
        async with Publisher(settings) as publisher:
            await publisher.publish(envelopes)
    asyncio.run(run())


def _totals(settings: Settings) -> dict[str, tuple[int, int, int]]:
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute("SELECT contact, replies_requested, replies_sent, replies_failed"
                            " FROM conversation_sessions").fetchall()
    return {contact: tuple(rest) for contact, *rest in rows}


def test_llm_routing_and_whatsapp_sends_are_recorded(settings: Settings, fake: FakeApis) -> None:
    with _runtime(settings, fake).start() as runtime:
        _publish(runtime.settings, _messages(contacts=2, per_contact=1, start=datetime(2026, 11, 1, tzinfo=UTC)))
        eventually(lambda: [v for v in _totals(runtime.settings).values() if v[1] == 1] == [(1, 1, 0)] * 2,
                   "two replies sent")
        with psycopg.connect(runtime.settings.database_url) as conn:
            routed = conn.execute("SELECT payload FROM events WHERE type = 'conversation.message.routed'").fetchall()
    assert len(routed) == 2
    for (payload,) in routed:
        assert (payload["lane"], payload["method"], payload["model"]) == ("support", "llm", "claude-haiku-4-5")
        assert (payload["input_tokens"], payload["output_tokens"]) == (120, 2)
        assert payload["cost_usd"] == pytest.approx((120 * 1.0 + 2 * 5.0) / 1_000_000)
    assert sorted(s["to"] for s in fake.sends) == ["34620000000", "34620000001"]
    assert all(s["path"] == "/109876543210/messages" and "ticket" in s["text"]["body"] for s in fake.sends)


def test_classifier_outage_falls_back_to_rules(settings: Settings) -> None:
    fake = FakeApis(anthropic_status=529)
    try:
        with _runtime(settings, fake).start() as runtime:
            _publish(runtime.settings, _messages(contacts=1, per_contact=2, start=datetime(2026, 11, 1, tzinfo=UTC)))
            eventually(lambda: list(_totals(runtime.settings).values()) == [(2, 2, 0)], "replies sent")
            with psycopg.connect(runtime.settings.database_url) as conn:
                routed = [p for (p,) in conn.execute(  # in the order of the messages they route
                    "SELECT r.payload FROM events r JOIN events m ON m.event_id = (r.payload->>'message_event_id')::uuid"
                    " WHERE r.type = 'conversation.message.routed' ORDER BY m.occurred_at")]
    finally:
        fake.close()
    assert fake.classifications >= 2
    assert [(p["method"], p["lane"]) for p in routed] == [("rules", "info"), ("rules", "commerce")]
    assert all(p["fallback_reason"] for p in routed)


def test_killed_worker_never_sends_a_reply_twice(settings: Settings, fake: FakeApis) -> None:
    contacts, per_contact = 10, 8
    envelopes = _messages(contacts, per_contact, datetime(2026, 11, 1, tzinfo=UTC))
    with _runtime(settings, fake).start() as runtime:
        _publish(runtime.settings, envelopes)
        eventually(lambda: len(fake.sends) >= 15, "some replies sent")
        runtime.kill("worker", signal.SIGKILL)
        runtime.spawn("worker")

        def settled():
            totals = _totals(runtime.settings)
            done = len(totals) == contacts and all(r == per_contact and s + f == per_contact
                                                   for r, s, f in totals.values())
            return totals if done else None

        totals = eventually(settled, "every reply sent or failed", within_s=120)
    sends_per_contact = Counter(s["to"] for s in fake.sends)
    for contact, (_, sent, failed) in totals.items():
        assert sends_per_contact[contact] <= per_contact, f"{contact} got a reply twice"
        assert sent <= sends_per_contact[contact] <= sent + failed


def test_request_redelivered_at_once_is_sent_once_and_reported_sent(settings: Settings, fake: FakeApis) -> None:
    at = datetime(2026, 11, 1, tzinfo=UTC)
    request = new_event("acme", ReplyRequested(session_id=uuid.uuid4(), contact="34699000001", in_reply_to=uuid.uuid4(),
                                               lane="info", text="Abrimos a las 9."),
                        event_id=uuid.uuid4(), occurred_at=at, recorded_at=at, actor="effect:router")
    with _runtime(settings, fake).start() as runtime:
        _publish(runtime.settings, [request, request])  # both copies reach the effect worker in one batch

        def outcomes():
            with psycopg.connect(runtime.settings.database_url) as conn:
                return conn.execute("SELECT type FROM events WHERE causation_id = %s", (request.event_id,)).fetchall()

        assert eventually(outcomes, "the send's outcome") == [("conversation.reply.sent",)]
    assert [s["to"] for s in fake.sends] == ["34699000001"]
