"""The worker's real Anthropic and WhatsApp clients against local fake servers, including a SIGKILL mid-send."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import psycopg
import pytest
from aiokafka import ConsumerRecord, TopicPartition

from projections.projector import assigned_consumer
from schemas import Envelope, decode, new_event
from schemas.conversations import ReplyRequested
from streams.auth import issue_token
from streams.domains import load_domains
from streams.embedded import free_port
from streams.publisher import Publisher
from streams.runtime import Runtime
from streams.settings import Settings
from streams.topics import changelog_topic, log_end_offsets
from tests.conversation_logs import inbound
from tests.integration.conftest import eventually
from tests.integration.test_pipeline import _messages

pytestmark = pytest.mark.integration


class _Server(ThreadingHTTPServer):
    # A worker sends a whole batch at once: the default listen backlog (5) resets connections, which the
    # worker rightly reports as failed sends; the Graph API does not.
    request_queue_size = 1024


class FakeApis:
    """A loopback server speaking the Graph API messages endpoint and the Anthropic Messages API.

    Every send is recorded when it arrives, by its identity on the wire (to, text): the reply event id never
    reaches the Graph API. `hold()` makes sends wait (unanswered, in flight) until `release()`.
    """

    def __init__(self, lane: str = "support", anthropic_status: int = 200) -> None:
        self.lane, self.anthropic_status = lane, anthropic_status
        self.sends: list[dict] = []  # every send request, in arrival order
        self.answered: set[int] = set()  # indexes into sends of requests the fake has finished
        self.wamids: dict[str, tuple[str, str]] = {}  # message id handed out -> identity of the send
        self.classifications = 0
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()
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
                    index = len(fake.sends)
                    fake.sends.append({"path": self.path, **body})
                    wamid = f"wamid.fake.{index + 1}"
                    fake.wamids[wamid] = send_identity(body)
                try:
                    fake.gate.wait(HOLD_LIMIT_S)
                    self._reply(200, {"messaging_product": "whatsapp",
                                      "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                                      "messages": [{"id": wamid}]})
                except OSError:
                    pass  # the worker died while its send was held
                finally:
                    with fake.lock:
                        fake.answered.add(index)

            def _reply(self, status: int, document: dict) -> None:
                raw = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                pass

        self.server = _Server(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hold(self) -> None:
        """From now on, sends arrive and wait unanswered until release()."""
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def in_flight(self) -> Counter[tuple[str, str]]:
        """Sends that arrived and have not been answered."""
        with self.lock:
            return Counter(send_identity(s) for i, s in enumerate(self.sends) if i not in self.answered)

    def sent(self) -> Counter[tuple[str, str]]:
        """How many times each (to, text) reached the fake."""
        with self.lock:
            return Counter(send_identity(s) for s in self.sends)

    def close(self) -> None:
        self.release()
        self.server.shutdown()


HOLD_LIMIT_S = 120.0  # a held send is answered after this at the latest, so no fake thread outlives a test by much


def send_identity(body: dict) -> tuple[str, str]:
    """A Graph API send as the contact sees it: recipient and text."""
    return body["to"], body["text"]["body"]


def _runtime(settings: Settings, fake: FakeApis, **updates: object) -> Runtime:
    return Runtime(settings.model_copy(update={
        "api_port": free_port(),
        "anthropic_api_key": "sk-ant-fake", "anthropic_base_url": fake.url,
        "whatsapp_access_token": "graph-token", "whatsapp_api_base": fake.url,
        **updates,
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


async def _read_topics(settings: Settings, topics: list[str]) -> list[ConsumerRecord]:
    """Every record of the topics up to their current ends, in offset order per partition."""
    consumer = await assigned_consumer(settings, topics, f"{settings.app_id}-test-reader")
    try:
        tps = sorted(consumer.assignment())
        ends = await log_end_offsets(settings, tps)
        await consumer.seek_to_beginning(*tps)
        records: dict[TopicPartition, list[ConsumerRecord]] = {tp: [] for tp in tps}
        pending = {tp for tp in tps if ends[tp] > 0}
        async with asyncio.timeout(60):
            while pending:
                for tp, batch in (await consumer.getmany(*pending, timeout_ms=500)).items():
                    records[tp] += [r for r in batch if r.offset < ends[tp]]
                pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
        return [r for tp in tps for r in records[tp]]
    finally:
        await consumer.stop()


def _conversations_domain(settings: Settings):
    return next(d for d in load_domains(settings) if d.name == "conversations")


def log_envelopes(settings: Settings, topics: list[str] | None = None) -> list[Envelope]:
    """Every envelope on the conversations topic (or the given ones), copies included, in log order per partition."""
    records = asyncio.run(_read_topics(settings, topics or [settings.topic("conversations")]))
    return [decode(r.value) for r in records if r.value is not None]


def started_sends(settings: Settings) -> set[uuid.UUID]:
    """Reply requests the effect ledger has recorded as started (recorded before each send runs)."""
    ledger = changelog_topic(settings, _conversations_domain(settings).ledger_table)
    records = asyncio.run(_read_topics(settings, [ledger]))
    return {uuid.UUID(hex=h) for r in records if r.value for h in json.loads(r.value)}


@dataclass(frozen=True)
class Replies:
    """What the log says about replies: each request (first copy) and its first outcome (the one the fold keeps)."""

    requested: dict[uuid.UUID, Envelope]
    outcomes: dict[uuid.UUID, Envelope]

    @classmethod
    def on_log(cls, settings: Settings) -> Replies:
        requested: dict[uuid.UUID, Envelope] = {}
        outcomes: dict[uuid.UUID, Envelope] = {}
        for envelope in log_envelopes(settings):
            if envelope.type == "conversation.reply.requested":
                requested.setdefault(envelope.event_id, envelope)
            elif envelope.type in ("conversation.reply.sent", "conversation.reply.failed"):
                outcomes.setdefault(envelope.payload.reply_event_id, envelope)
        return cls(requested, outcomes)

    def in_flight(self, started: set[uuid.UUID]) -> set[uuid.UUID]:
        """Started sends without an outcome on the log: what a worker killed now left in flight."""
        return started - set(self.outcomes)

    def of_type(self, event_type: str) -> set[uuid.UUID]:
        return {rid for rid, outcome in self.outcomes.items() if outcome.type == event_type}

    @property
    def unknown(self) -> set[uuid.UUID]:
        return {rid for rid, outcome in self.outcomes.items() if outcome.type == "conversation.reply.failed"
                and outcome.payload.reason.startswith("outcome unknown: ")}

    def answering(self, message_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
        """The reply request answering each of these inbound messages."""
        by_message = {request.payload.in_reply_to: rid for rid, request in self.requested.items()}
        return {m: by_message[m] for m in message_ids if m in by_message}


def assert_replies_effectively_once(
    replies: Replies, sends: Counter, identity: Callable[[uuid.UUID, Envelope], Hashable], *,
    messages: Iterable[uuid.UUID], in_flight_at_kill: set[uuid.UUID], after_restart: Iterable[uuid.UUID],
) -> None:
    """Every message got one reply request and one outcome; no reply reached the contact twice; "outcome unknown"
    only for sends in flight at the kill; every message published after the restart answered by a real send.

    sends counts what reached the contact per identity; identity(reply_event_id, request) is a send's identity.
    """
    messages = set(messages)
    answering = replies.answering(messages)
    assert set(answering) == messages, f"messages without a reply request: {sorted(messages - set(answering))}"
    assert len(replies.requested) == len(messages), "reply requests that answer no message, or two for one"
    identities = {rid: identity(rid, request) for rid, request in replies.requested.items()}
    assert len(set(identities.values())) == len(identities), "reply identities repeat: a double send could hide"
    twice = {key: n for key, n in sends.items() if n > 1}
    assert not twice, f"replies sent more than once: {twice}"
    assert set(sends) <= set(identities.values()), f"sends nobody requested: {set(sends) - set(identities.values())}"
    assert set(replies.outcomes) >= set(replies.requested), "reply requests without an outcome"
    sent, unknown = replies.of_type("conversation.reply.sent"), replies.unknown
    assert not sent & unknown
    assert len(sent) + len(unknown) == len(replies.requested), (
        f"{len(sent)} sent + {len(unknown)} outcome unknown != {len(replies.requested)} requested; other failures:"
        f" {[replies.outcomes[r].payload.reason for r in set(replies.requested) - sent - unknown]}")
    assert all(sends[identities[rid]] == 1 for rid in sent), "a reply reported sent never reached the contact"
    assert unknown <= in_flight_at_kill, (
        f"{len(unknown - in_flight_at_kill)} replies reported 'outcome unknown' were not in flight at the kill")
    later = replies.answering(after_restart)
    not_sent = {m: replies.outcomes[rid].payload for m, rid in later.items() if rid not in sent}
    assert not not_sent, f"messages published after the restart not answered by a real send: {not_sent}"


_LOGGED = re.compile(r"\breply\.logged\b.*\bwhatsapp_message_id=wamid\.baton\.([0-9a-f]{32})\b")


def logged_sends(runtime: Runtime) -> Counter[uuid.UUID]:
    """Replies the log sender 'sent' (logged, flushed line by line), per reply event id, over every worker run."""
    text = runtime.log_path("worker").read_text(errors="replace")
    return Counter(uuid.UUID(hex=m.group(1)) for m in _LOGGED.finditer(text))


def log_identity(reply_event_id: uuid.UUID, _request: Envelope) -> uuid.UUID:
    """The log sender's message id derives from the reply event id, so a logged send names its reply."""
    return reply_event_id


def test_llm_routing_and_whatsapp_sends_are_recorded(settings: Settings, fake: FakeApis) -> None:
    with _runtime(settings, fake).start() as runtime:
        _publish(runtime.settings, _messages(contacts=2, per_contact=1, start=datetime(2026, 11, 1, tzinfo=UTC)))
        eventually(lambda: [v for v in _totals(runtime.settings).values() if v[1] == 1] == [(1, 1, 0)] * 2,
                   "two replies sent")
        with psycopg.connect(runtime.settings.database_url) as conn:
            routed = conn.execute("SELECT payload FROM events WHERE type = 'conversation.message.routed'").fetchall()
        # Both calls are on the shared cost ledger, summed by the costs projection.
        token = issue_token(runtime.settings, "acme")
        with httpx.Client(base_url=runtime.api_url, headers={"Authorization": f"Bearer {token}"}) as api:
            report = eventually(lambda: (r := api.get("/v1/costs", params={"group_by": "domain"}).json())["groups"]
                                and r, "the routing calls on the cost ledger")
    (group,) = report["groups"]
    assert (group["key"], group["calls"], group["input_tokens"], group["output_tokens"]) == ("conversations", 2, 240, 4)
    assert report["total_usd"] == pytest.approx(2 * (120 * 1.0 + 2 * 5.0) / 1_000_000)
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
    assert fake.classifications == 2  # one call per message: the classifier does not retry an overloaded model
    assert [(p["method"], p["lane"]) for p in routed] == [("rules", "info"), ("rules", "commerce")]
    assert all("529" in p["fallback_reason"] and "overloaded_error" in p["fallback_reason"] for p in routed), routed


def more_messages(contacts: int, per_contact: int, start: datetime, tag: str) -> list[Envelope]:
    """Messages from the contacts of `_messages`, with WhatsApp ids of their own (tag), one second apart."""
    return [inbound("acme", f"3462{c:07d}", f"wamid.{tag}.{c}.{n}", start + timedelta(seconds=n), text="tengo una duda")
            for n in range(per_contact) for c in range(contacts)]


def graph_identity(_reply_event_id: uuid.UUID, request: Envelope) -> tuple[str, str]:
    """The Graph API send a reply request makes: (to, text). Support replies name a ticket derived from the message."""
    return request.payload.contact, request.payload.text


def assert_sent_ids_came_from_the_fake(replies: Replies, fake: FakeApis) -> None:
    """Each reply reported sent carries the message id the fake handed out for that very (to, text)."""
    for rid in replies.of_type("conversation.reply.sent"):
        wamid = replies.outcomes[rid].payload.whatsapp_message_id
        assert fake.wamids.get(wamid) == graph_identity(rid, replies.requested[rid]), (rid, wamid)


def test_killed_worker_never_sends_a_reply_twice(settings: Settings, fake: FakeApis) -> None:
    contacts, per_contact, later = 10, 8, 2
    start = datetime(2026, 11, 1, tzinfo=UTC)
    envelopes = _messages(contacts, per_contact, start)
    after_restart = more_messages(contacts, later, start + timedelta(hours=1), "after-restart")
    with _runtime(settings, fake).start() as runtime:
        _publish(runtime.settings, envelopes)
        eventually(lambda: len(fake.sends) >= 15, "some replies sent")
        runtime.kill("worker", signal.SIGKILL)
        at_kill = Replies.on_log(runtime.settings)  # the worker is dead: nothing answers a started send now
        in_flight = at_kill.in_flight(started_sends(runtime.settings))
        runtime.spawn("worker")
        _publish(runtime.settings, after_restart)

        def settled():
            totals = _totals(runtime.settings)
            total = per_contact + later
            done = len(totals) == contacts and all(r == total and s + f == total for r, s, f in totals.values())
            return totals if done else None

        eventually(settled, "every reply sent or failed", within_s=120)
        replies = Replies.on_log(runtime.settings)
    assert_replies_effectively_once(
        replies, fake.sent(), graph_identity, messages=[e.event_id for e in envelopes + after_restart],
        in_flight_at_kill=in_flight, after_restart=[e.event_id for e in after_restart])
    assert_sent_ids_came_from_the_fake(replies, fake)


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
