"""HTTP ingest and the WhatsApp webhook against the real broker: accepted events land, bad input changes nothing,
a broker failure part-way is retried into events applied once. The 4xx matrix runs twice: against the ingest
and webhook routers wired alone, and against the real server (`create_api` under uvicorn, with its lifespan)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaTimeoutError
from pydantic import SecretStr

from agents.batching import Record, fold_batch
from agents.conversations.config import conversation_folder
from schemas import Envelope, decode, encode, source_event_id
from streams.domains.conversations.webhook import sign
from streams.embedded import EmbeddedBroker
from streams.publisher import Publisher
from streams.server import create_api
from streams.settings import Settings
from streams.topics import ensure_topics, log_end_offsets
from tests.fixtures.ingest import (
    CONTACT,
    bearer,
    build_app,
    conversation_partitions,
    event,
    hand_wired,
    log_size,
    webhook,
)

pytestmark = pytest.mark.integration

MAX_BYTES = 4096
MAX_EVENTS = 5


@pytest.fixture
def limited(settings: Settings) -> Settings:
    """The test's settings with small request limits."""
    return settings.model_copy(update={"max_request_bytes": MAX_BYTES, "max_batch_events": MAX_EVENTS})


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the real server: create_api under uvicorn in a thread on a free loopback port.

    Its lifespan creates the topics, migrates the database and opens the publisher and the pool.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_api(settings), lifespan="on", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        async with asyncio.timeout(30):
            while not server.started:
                assert thread.is_alive(), "the API server stopped while starting (see its log above)"
                await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as http:
            yield http
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 15)
        sock.close()
    assert not thread.is_alive(), "the API server did not stop within 15 s"


@pytest.fixture
async def client(limited: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the ingest router publishing to the real broker."""
    async with hand_wired(limited) as http:
        yield http


@pytest.fixture(params=["hand-wired", "server"])
async def edge(request: pytest.FixtureRequest, limited: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The ingest edge twice: the routers wired alone, and the real server with its lifespan."""
    async with (hand_wired if request.param == "hand-wired" else served)(limited) as http:
        yield http


async def read_log(settings: Settings) -> list[Envelope]:
    """Every envelope on the conversations topic up to its end when called, decoded.

    The ends are taken before the reader is assigned, and nothing is awaited between assign and seek_to_beginning:
    aiokafka applies the answer of an offset reset still in flight to a partition that a later seek_to_* marked
    for another reset (Fetcher._update_fetch_positions checks that a reset is awaited, not which one), so the
    default reset an assignment starts, answered after seek_to_beginning, would leave the reader at the log end.
    """
    partitions = conversation_partitions(settings)
    ends = await log_end_offsets(settings, partitions)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records = []
        positions = {tp: await consumer.position(tp) for tp in partitions}
        try:
            async with asyncio.timeout(30):
                while any(positions[tp] < ends[tp] for tp in partitions):
                    for batch in (await consumer.getmany(timeout_ms=500)).values():
                        records += batch
                    positions = {tp: await consumer.position(tp) for tp in partitions}
        except TimeoutError:
            raise AssertionError(f"log not read to its end in 30 s: positions {positions}, ends {ends}") from None
        records = [r for r in records if r.offset < ends[TopicPartition(r.topic, r.partition)]]
        assert all(r.key == decode(r.value).stream_id.encode() for r in records)
        return [decode(r.value) for r in records]
    finally:
        await consumer.stop()


def signed(settings: Settings, document: Any) -> dict[str, Any]:
    """Request arguments for a webhook POST signed with the app secret."""
    body = json.dumps(document).encode()
    signature = sign(settings.whatsapp_app_secret.get_secret_value(), body)
    return {"content": body, "headers": {"Content-Type": "application/json", "X-Hub-Signature-256": signature}}


async def test_one_event_lands_on_the_log_for_the_tokens_tenant(client: httpx.AsyncClient, limited: Settings) -> None:
    sent = event()
    response = await client.post("/v1/events", json=sent, headers=bearer(limited))
    assert response.status_code == 202, response.text
    (event_id,) = response.json()["event_ids"]
    (envelope,) = await read_log(limited)
    assert str(envelope.event_id) == event_id
    assert envelope.type == "conversation.message.received"
    assert envelope.tenant_id == "acme"
    assert envelope.stream_id == f"conversation:acme:{CONTACT}"
    assert envelope.occurred_at.isoformat() == "2024-05-01T12:00:00+00:00"
    assert (envelope.actor, envelope.correlation_id, envelope.causation_id) == ("ingest", envelope.event_id, None)
    assert envelope.payload.whatsapp_message_id == sent["payload"]["whatsapp_message_id"]


async def test_batch_keeps_order_ids_and_optional_fields(client: httpx.AsyncClient, limited: Settings) -> None:
    correlation, cause = uuid.uuid4(), uuid.uuid4()
    events = [
        event(source_id="crm-1"),
        event("34699999999", correlation_id=str(correlation), causation_id=str(cause), actor="crm", schema_version=1),
        {"type": "conversation.status.updated", "occurred_at": "2024-05-01T12:00:01Z",
         "payload": {"contact": CONTACT, "whatsapp_message_id": "wamid.out", "status": "read"}},
    ]
    response = await client.post("/v1/events", json={"events": events}, headers=bearer(limited, "globex"))
    assert response.status_code == 202, response.text
    ids = response.json()["event_ids"]
    assert ids[0] == str(source_event_id("globex", "ingest", "crm-1"))
    logged = {str(e.event_id): e for e in await read_log(limited)}
    assert set(logged) == set(ids)
    assert {e.tenant_id for e in logged.values()} == {"globex"}
    second = logged[ids[1]]
    assert (second.stream_id, second.correlation_id, second.causation_id, second.actor) == (
        "conversation:globex:34699999999", correlation, cause, "crm")
    assert logged[ids[2]].type == "conversation.status.updated"


async def test_json_array_body_and_retried_source_ids(client: httpx.AsyncClient, limited: Settings) -> None:
    body = [event(source_id="crm-7"), event(source_id="crm-8")]
    first = await client.post("/v1/events", json=body, headers=bearer(limited))
    retry = await client.post("/v1/events", json=body, headers=bearer(limited))
    assert first.status_code == retry.status_code == 202
    assert first.json() == retry.json()
    # At least once: the retry is on the log again with the same ids, so folds skip it.
    assert sorted(str(e.event_id) for e in await read_log(limited)) == sorted(first.json()["event_ids"] * 2)


def _too_big() -> bytes:
    return json.dumps({"events": [event()] * 40}).encode()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 1000):
        yield data[start:start + 1000]


def _typed(contact: Any) -> dict[str, Any]:
    return {"events": [event(), event(), event(), event(contact)]}


JSON = {"Content-Type": "application/json"}
Request = Callable[[Settings], dict[str, Any]]

BAD_EVENTS: list[tuple[str, Request, int, str]] = [
    ("malformed-json", lambda s: {"content": b'{"type": ', "headers": {**JSON, **bearer(s)}},
     400, "malformed JSON: Input data was truncated"),
    ("no-token", lambda s: {"json": event()}, 401, "missing bearer token"),
    ("bad-token", lambda s: {"json": event(), "headers": {"Authorization": "Bearer nope"}},
     401, "invalid token: malformed token"),
    ("foreign-token",
     lambda s: {"json": event(), "headers": bearer(s.model_copy(update={"jwt_secret": SecretStr("x" * 40)}))},
     401, "invalid token: signed with a key that is not (or no longer) accepted"),
    ("size-declared", lambda s: {"content": _too_big(), "headers": {**JSON, **bearer(s)}},
     413, f"body of {len(_too_big())} bytes exceeds the limit of {MAX_BYTES} bytes"),
    ("size-streamed", lambda s: {"content": _chunks(_too_big()), "headers": {**JSON, **bearer(s)}},
     413, f"body exceeds the limit of {MAX_BYTES} bytes"),
    ("count", lambda s: {"json": [event()] * (MAX_EVENTS + 1), "headers": bearer(s)},
     413, f"{MAX_EVENTS + 1} events exceed the limit of {MAX_EVENTS} per request"),
    ("content-type", lambda s: {"content": json.dumps(event()), "headers": {"Content-Type": "text/plain", **bearer(s)}},
     415, "Content-Type must be application/json, got 'text/plain'"),
    ("no-content-type", lambda s: {"content": json.dumps(event()), "headers": bearer(s)},
     415, "Content-Type must be application/json, got 'none'"),
    ("json-suffix-type", lambda s: {"content": json.dumps(event()),
                                    "headers": {"Content-Type": "application/json-patch+json", **bearer(s)}},
     415, "Content-Type must be application/json, got 'application/json-patch+json'"),
    ("field", lambda s: {"json": _typed(34612345678), "headers": bearer(s)},
     422, "events[3].payload.contact: Expected `str`, got `int`"),
    ("missing-field", lambda s: {"json": [event(), {"type": "conversation.message.received", "payload": {}}],
                                 "headers": bearer(s)},
     422, "[1]: Object missing required field `occurred_at`"),
    ("naive-time", lambda s: {"json": event(occurred_at="2024-05-01T12:00:00"), "headers": bearer(s)},
     422, "occurred_at: Expected `datetime` with a timezone component"),
    ("unknown-type", lambda s: {"json": {"events": [event(), event(type="conversation.message.deleted")]},
                                "headers": bearer(s)},
     422, "events[1].type: unknown event type 'conversation.message.deleted'"),
    ("not-ingestible", lambda s: {"json": event(type="conversation.reply.sent"), "headers": bearer(s)},
     422, "type: 'conversation.reply.sent' is emitted by Baton, not ingestible"),
    ("schema-version", lambda s: {"json": event(schema_version=2), "headers": bearer(s)},
     422, "schema_version: unsupported schema_version 2 for 'conversation.message.received' (current is 1)"),
    ("tenant-in-body", lambda s: {"json": event(tenant_id="globex"), "headers": bearer(s)},
     422, "Object contains unknown field `tenant_id`"),
    # One request is one tenant's: a batch cannot name another tenant for any of its events.
    ("tenant-in-batch", lambda s: {"json": {"events": [event(), event(tenant_id="globex")]}, "headers": bearer(s)},
     422, "events[1]: Object contains unknown field `tenant_id`"),
    ("batch-unknown-key", lambda s: {"json": {"events": [event()], "atomic": True}, "headers": bearer(s)},
     422, "Object contains unknown field `atomic`"),
    ("payload-unknown-key", lambda s: {"json": {"events": [event(), event(payload={
        "contact": CONTACT, "whatsapp_message_id": "wamid.x", "message_type": "text", "txt": "hola"})]},
        "headers": bearer(s)},
     422, "events[1].payload: Object contains unknown field `txt`"),
    ("empty-batch", lambda s: {"json": {"events": []}, "headers": bearer(s)},
     422, "events: Expected `array` of length >= 1"),
    ("not-an-object", lambda s: {"json": {"events": [event(), "x"]}, "headers": bearer(s)},
     422, "events[1]: Expected `object`, got `str`"),
]

BAD_WEBHOOKS: list[tuple[str, Request, int, str]] = [
    ("bad-signature", lambda s: {**signed(s, webhook()), "content": json.dumps(webhook()).encode() + b" "},
     401, "X-Hub-Signature-256 does not match the body"),
    ("wrong-secret", lambda s: signed(s.model_copy(update={"whatsapp_app_secret": SecretStr("other")}), webhook()),
     401, "X-Hub-Signature-256 does not match the body"),
    ("no-signature", lambda s: {"json": webhook()}, 401, "missing X-Hub-Signature-256 header"),
    ("unknown-number", lambda s: signed(s, webhook("999000")),
     422, "entry[0].changes[0].value.metadata.phone_number_id: unknown phone_number_id '999000' (no tenant owns it)"),
    ("structural", lambda s: signed(s, {"object": "whatsapp_business_account"}),
     422, "Object missing required field `entry`"),
    ("malformed-json", lambda s: {
        "content": b"{oops", "headers": {**JSON, "X-Hub-Signature-256": sign(s.whatsapp_app_secret.get_secret_value(),
                                                                                b"{oops")}},
     400, "malformed JSON: JSON is malformed: object keys must be strings (byte 1)"),
    ("content-type", lambda s: {
        **signed(s, webhook()),
        "headers": {**signed(s, webhook())["headers"], "Content-Type": "application/x-www-form-urlencoded"}},
     415, "Content-Type must be application/json, got 'application/x-www-form-urlencoded'"),
    ("size", lambda s: signed(s, {"pad": "x" * MAX_BYTES}),
     413, f"body of {MAX_BYTES + 11} bytes exceeds the limit of {MAX_BYTES} bytes"),
]


@pytest.mark.parametrize(
    ("url", "request_args", "status", "detail"),
    [pytest.param("/v1/events", *case[1:], id=f"events-{case[0]}") for case in BAD_EVENTS]
    + [pytest.param("/v1/webhooks/whatsapp", *case[1:], id=f"webhook-{case[0]}") for case in BAD_WEBHOOKS],
)
async def test_bad_input_gets_a_precise_4xx_and_leaves_the_log_unchanged(
    edge: httpx.AsyncClient, limited: Settings, url: str, request_args: Request, status: int, detail: str
) -> None:
    assert (await edge.post("/v1/events", json=event(), headers=bearer(limited))).status_code == 202
    before = await log_size(limited)
    response = await edge.post(url, **request_args(limited))
    # The API's edge guard adds `limit_bytes` to a 413 (streams.edge); the detail is the same.
    assert (response.status_code, response.json()["detail"]) == (status, detail)
    assert await log_size(limited) == before == 1


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON",
                                          "application/json;charset=UTF-8"])
async def test_json_content_type_with_parameters_or_other_case_is_accepted(
    edge: httpx.AsyncClient, limited: Settings, content_type: str
) -> None:
    response = await edge.post("/v1/events", content=json.dumps(event()),
                               headers={"Content-Type": content_type, **bearer(limited)})
    assert response.status_code == 202, response.text
    assert await log_size(limited) == 1


@pytest.mark.parametrize("declared", ["abc", "-5", "+40", "1e3", "0x10"])
async def test_invalid_content_length_is_400_and_leaves_the_log_unchanged(
    client: httpx.AsyncClient, limited: Settings, declared: str
) -> None:
    # httpx over ASGI passes the header through as given; an ASGI server may too (the real one refuses it first).
    response = await client.post("/v1/events", content=json.dumps(event()).encode(),
                                 headers={**JSON, **bearer(limited), "Content-Length": declared})
    assert (response.status_code, response.json()) == (400, {"detail": f"invalid Content-Length {declared!r}"})
    assert await log_size(limited) == 0


@pytest.mark.parametrize("declared", ["abc", "-5"])
async def test_real_server_refuses_an_invalid_content_length_before_the_app(limited: Settings, declared: str) -> None:
    body = json.dumps(event()).encode()
    async with served(limited) as http:
        host, port = http.base_url.host, http.base_url.port
        reader, writer = await asyncio.open_connection(host, port)
        head = (f"POST /v1/events HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Authorization: {bearer(limited)['Authorization']}\r\nContent-Length: {declared}\r\n\r\n")
        writer.write(head.encode() + body)
        await writer.drain()
        async with asyncio.timeout(10):
            status_line = await reader.readline()
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 400 "), status_line
        assert (await http.get("/healthz")).status_code == 200
    assert await log_size(limited) == 0


async def test_webhook_delivery_lands_on_the_log_for_the_numbers_tenant(
    client: httpx.AsyncClient, limited: Settings
) -> None:
    response = await client.post("/v1/webhooks/whatsapp", **signed(limited, webhook("209876543210")))
    assert (response.status_code, response.json()) == (200, {"accepted": 2, "skipped": []})
    redelivered = await client.post("/v1/webhooks/whatsapp", **signed(limited, webhook("209876543210")))
    assert redelivered.status_code == 200
    logged = await read_log(limited)
    assert {(e.tenant_id, e.stream_id) for e in logged} == {("globex", f"conversation:globex:{CONTACT}")}
    # Redelivery is on the log again with the same ids, so folds skip it.
    assert sorted(str(e.event_id) for e in logged) == sorted(2 * [
        str(source_event_id("globex", "whatsapp", "wamid.in1")),
        str(source_event_id("globex", "whatsapp-status", "wamid.out1:delivered")),
    ])
    assert {e.type for e in logged} == {"conversation.message.received", "conversation.status.updated"}


async def test_webhook_with_nothing_recordable_is_acknowledged(client: httpx.AsyncClient, limited: Settings) -> None:
    document = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
        {"field": "message_template_status_update", "value": {"event": "APPROVED"}}]}]}
    response = await client.post("/v1/webhooks/whatsapp", **signed(limited, document))
    assert (response.status_code, response.json()) == (200, {"accepted": 0, "skipped": [
        "entry[0].changes[0]: field 'message_template_status_update' is not a messages change"]})
    assert await log_size(limited) == 0


async def test_webhook_handshake(client: httpx.AsyncClient, limited: Settings) -> None:
    params = {"hub.mode": "subscribe", "hub.verify_token": limited.whatsapp_verify_token.get_secret_value(), "hub.challenge": "1158201444"}
    ok = await client.get("/v1/webhooks/whatsapp", params=params)
    assert (ok.status_code, ok.text, ok.headers["content-type"]) == (200, "1158201444", "text/plain; charset=utf-8")
    refused = await client.get("/v1/webhooks/whatsapp", params={**params, "hub.verify_token": "guess"})
    assert refused.status_code == 403
    assert refused.json() == {"detail": "verification failed: needs hub.mode=subscribe, the configured "
                                        "hub.verify_token and a hub.challenge"}


async def test_broker_gone_is_503_after_the_publish_timeout(limited: Settings) -> None:
    broker = EmbeddedBroker().start()
    settings = limited.model_copy(update={"kafka_bootstrap_servers": broker.bootstrap_servers, "publish_timeout_s": 2,
                                         "broker_profile": "embedded"})  # its own embedded broker
    try:
        await ensure_topics(settings)
        async with Publisher(settings) as publisher:
            broker.stop()
            transport = httpx.ASGITransport(app=build_app(settings, publisher))
            async with httpx.AsyncClient(transport=transport, base_url="http://baton") as http:
                events = await http.post("/v1/events", json=event(), headers=bearer(settings))
                hook = await http.post("/v1/webhooks/whatsapp", **signed(settings, webhook()))
    finally:
        broker.stop()
    for response in (events, hook):
        assert response.status_code == 503
        assert response.json()["detail"].startswith("events may be only partly stored, retry the request: ")


class _FailingAfter:
    """A producer that hands its first `k` sends to a real one and fails the rest, as a broker that stops
    acknowledging part-way through a request does."""

    def __init__(self, producer: Any, k: int) -> None:
        self._producer, self._left = producer, k

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    async def send(self, *args: Any, **kwargs: Any) -> asyncio.Future:
        if self._left > 0:
            self._left -= 1
            return await self._producer.send(*args, **kwargs)
        failed = asyncio.get_running_loop().create_future()
        failed.set_exception(KafkaTimeoutError("injected: no ack"))
        return failed


class FaultyPublisher(Publisher):
    """The real publisher on the real broker, with a fault injected after `k` records."""

    def __init__(self, settings: Settings, k: int) -> None:
        super().__init__(settings)
        self._producer = _FailingAfter(self._producer, k)


async def test_broker_failure_part_way_is_503_and_the_retry_applies_each_event_once(limited: Settings) -> None:
    contacts = ("34600000001", "34600000002")
    body = {"events": [event(contacts[i % 2], source_id=f"crm-{i}") for i in range(4)]}
    async with FaultyPublisher(limited, k=2) as faulty, hand_wired(limited, faulty) as http:
        failed = await http.post("/v1/events", json=body, headers=bearer(limited))
    assert (failed.status_code, failed.json()) == (503, {"detail": "events may be only partly stored, retry the "
                                                                   "request: 2 of 4 events not acknowledged: "
                                                                   "KafkaTimeoutError('injected: no ack')"})
    # Not all or none: Kafka without transactions cannot undo the two records the broker did take.
    assert await log_size(limited) == 2

    async with hand_wired(limited) as http:
        retried = await http.post("/v1/events", json=body, headers=bearer(limited))
    assert retried.status_code == 202, retried.text
    ids = retried.json()["event_ids"]
    assert ids == [str(source_event_id("acme", "ingest", f"crm-{i}")) for i in range(4)]
    log = await read_log(limited)
    assert sorted(str(e.event_id) for e in log) == sorted(ids[:2] * 2 + ids[2:])

    # What the worker makes of it: each message once, the stored copies skipped as duplicates.
    topic = limited.topic("conversations")
    records = [Record(topic, 0, i, e.stream_id.encode(), encode(e)) for i, e in enumerate(log)]
    result = fold_batch(records, lambda _key: None, conversation_folder(limited))
    assert (result.dead, result.folded) == ([], 6)
    states = dict(result.writes)
    assert sorted(states) == [f"conversation:acme:{c}" for c in contacts]
    for contact in contacts:
        state = states[f"conversation:acme:{contact}"]
        mine = [body["events"][i]["payload"]["whatsapp_message_id"] for i in range(4) if i % 2 == contacts.index(contact)]
        assert (state.messages_received, state.duplicates_dropped) == (2, 1)
        assert [t.whatsapp_message_id for t in state.dialogue] == mine
    requested = [e for _, e in result.requests if e.type == "conversation.routing.requested"]
    assert sorted(str(e.payload.message_event_id) for e in requested) == sorted(ids)
