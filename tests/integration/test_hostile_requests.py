"""Hostile and careless requests against the running API on the real broker and PostgreSQL: operations stay within
the caller's tenant, an event the broker cannot take is a 413 (never "retry"), and the API keeps answering others
while pathological requests are refused."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest
from aiokafka import TopicPartition

from schemas import encode
from streams.auth import issue_token
from streams.deadletter import dead_letter_record
from streams.runtime import Runtime
from streams.topics import log_end_offsets
from tests.fixtures.conversation_logs import inbound
from tests.fixtures.pipeline import produce_records
from tests.fixtures.runtime import module_runtime
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration

# Above the producer's largest request (1 MiB), so an accepted body can make an event the broker refuses.
BODY_LIMIT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def running(bootstrap_servers: str, postgres_server_url: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    with module_runtime(bootstrap_servers, postgres_server_url, tmp_path_factory.mktemp("hostile") / "baton",
                        max_request_bytes=BODY_LIMIT) as runtime:
        yield runtime


def client(runtime: Runtime, tenant: str, **claims: object) -> httpx.Client:
    token = issue_token(runtime.settings, tenant, **claims)
    return httpx.Client(base_url=runtime.api_url, timeout=30, headers={"Authorization": f"Bearer {token}"})


def log_size(runtime: Runtime, domain: str) -> int:
    settings = runtime.settings
    partitions = [TopicPartition(settings.topic(domain), p) for p in range(settings.topic_partitions)]
    return sum(asyncio.run(log_end_offsets(settings, partitions)).values())


def test_a_service_token_lists_and_redrives_only_its_own_tenants_dead_letters(running: Runtime) -> None:
    settings = running.settings
    topic = settings.topic("conversations")
    at = datetime(2026, 12, 1, 9, tzinfo=UTC)
    acme_message = inbound("acme", "34655000101", "wamid.ops.acme", at, text="hola")
    globex_message = inbound("globex", "34655000102", "wamid.ops.globex", at, text="secret of globex")
    acme_id, globex_id, unreadable_id = f"{topic}[0]:11", f"{topic}[1]:12", f"{topic}[0]:13"
    asyncio.run(produce_records(settings, settings.deadletter_topic, [(None, letter) for letter in [
        dead_letter_record(source_topic=topic, partition=0, offset=11, key=acme_message.stream_id.encode(),
                           value=encode(acme_message), reason="fold: boom", stage="fold:conversations"),
        dead_letter_record(source_topic=topic, partition=1, offset=12, key=globex_message.stream_id.encode(),
                           value=encode(globex_message), reason="fold: boom", stage="fold:conversations"),
        # Bytes that are no envelope at all: no tenant can be read from them.
        dead_letter_record(source_topic=topic, partition=0, offset=13, key=b"conversation:acme:x",
                           value=b"\xff\xfe not an event", reason="decode: not JSON", stage="fold:conversations"),
    ]]))

    with client(running, "acme", service=True) as acme_ops, client(running, "globex", service=True) as globex_ops:
        listed = {tenant: [letter["id"] for letter in ops.get("/v1/ops/deadletters").json()]
                  for tenant, ops in (("acme", acme_ops), ("globex", globex_ops))}
        assert listed == {"acme": [acme_id], "globex": [globex_id]}
        assert "secret of globex" not in acme_ops.get("/v1/ops/deadletters").text

        before = log_size(running, "conversations")
        for ops, foreign in ((globex_ops, acme_id), (acme_ops, globex_id), (acme_ops, unreadable_id),
                             (globex_ops, unreadable_id)):
            refused = ops.post("/v1/ops/deadletters/redrive", json={"ids": [foreign]})
            assert refused.status_code == 404 and refused.json()["detail"] == f"no dead letter {foreign}"
        assert log_size(running, "conversations") == before  # nothing of another tenant was published again

        redriven = acme_ops.post("/v1/ops/deadletters/redrive", json={"ids": [acme_id]})
        assert redriven.status_code == 200 and redriven.json() == {"redriven": [acme_id], "refused": []}
    with client(running, "acme") as acme, client(running, "globex") as globex:
        eventually(lambda: acme.get("/v1/conversations/34655000101").status_code == 200,
                   "acme's re-driven message folded and projected")
        assert globex.get("/v1/conversations/34655000102").status_code == 404  # globex's letter stayed dead


def test_an_event_larger_than_the_broker_takes_is_413_and_never_a_retry(running: Runtime) -> None:
    before = log_size(running, "outbound")
    with client(running, "acme") as acme:
        message = {"user_id": "u-large", "agent_id": "a1",
                   "message_data": {"type": "text", "body": "x" * (1536 * 1024)}}
        response = acme.post("/v1/outbound", json=message)
        assert response.status_code == 413, response.text
        assert "retry cannot succeed" in response.json()["detail"] and "retry-after" not in response.headers
        # Above the one limit of every route, the answer names the limit before anything is read.
        over = acme.put("/v1/flags", content=b"{" + b" " * BODY_LIMIT + b"}", headers={"Content-Type": "application/json"})
        assert over.status_code == 413 and over.json()["limit_bytes"] == BODY_LIMIT
    assert log_size(running, "outbound") == before


def intent(meta_levels: int) -> bytes:
    """An intent whose `meta` nests 2 × meta_levels deep (objects and lists), built as bytes."""
    meta = b'{"k": [' * meta_levels + b'"' + b"m" * 5 + b'"' + b"]}" * meta_levels
    return b'{"topic": "t", "depth": "deep", "time_per_day_min": 5, "meta": ' + meta + b"}"


def test_the_api_keeps_answering_while_pathological_requests_are_refused(running: Runtime) -> None:
    learner = issue_token(running.settings, "acme", subject="ada")
    tenant = issue_token(running.settings, "acme")
    json_type = {"Content-Type": "application/json"}
    pathological = [
        # The request of the issue: a 5 KB meta nested 900 deep took 80-114 s to answer 500, the API frozen.
        ("POST", "/v1/learning/intent.sync", learner, intent(450)),
        ("POST", "/v1/learning/intent.sync", learner, intent(25)),  # within the guard, deeper than storable
        ("POST", "/v1/events", tenant, b"[" * (3 * 1024 * 1024) + b"]" * 1024),
        ("POST", "/v1/outbound", tenant, b'{"user_id": ' + b"9" * 5000 + b"}"),
        ("POST", "/v1/learning/day.done", learner, b'{"notes": "\xc3\x28"}'),
        ("PUT", "/v1/flags", tenant, b"[" * (BODY_LIMIT + 1)),
        ("POST", "/v1/webhooks/whatsapp", tenant, b'{"entry": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ] * 3
    statuses: list[tuple[str, int]] = []
    answered: list[float] = []
    done = threading.Event()

    def send(method: str, path: str, token: str, body: bytes) -> None:
        with httpx.Client(base_url=running.api_url, timeout=60) as http:
            try:
                response = http.request(method, path, content=body,
                                        headers={**json_type, "Authorization": f"Bearer {token}"})
                statuses.append((path, response.status_code))
            except httpx.RemoteProtocolError:  # a 413 may close the connection while the body is still sent
                statuses.append((path, 413))

    def probe() -> None:
        with httpx.Client(base_url=running.api_url, timeout=10,
                          headers={"Authorization": f"Bearer {tenant}"}) as http:
            while not done.is_set():
                started = time.monotonic()
                assert http.get("/healthz").status_code == 200
                assert http.get("/v1/conversations").status_code == 200
                answered.append(time.monotonic() - started)

    with ThreadPoolExecutor(5) as pool:
        prober = pool.submit(probe)
        with ThreadPoolExecutor(4) as senders:
            list(senders.map(lambda request: send(*request), pathological))
        done.set()
        prober.result()

    assert len(statuses) == len(pathological)
    assert all(400 <= status < 500 for _, status in statuses), statuses
    assert answered, "no other request was answered while the pathological ones were refused"
    print(f"{len(pathological)} pathological requests refused ({sorted(set(s for _, s in statuses))}); meanwhile "
          f"{len(answered)} probes answered, slowest {max(answered) * 1000:.0f} ms")
