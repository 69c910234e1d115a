"""Producers on another Kafka client: librdkafka (confluent-kafka) with its default partitioner, which puts most
keys on another partition than Baton's murmur2, publishing to a runtime of two workers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Producer

from schemas import encode
from streams.deadletter import list_dead_letters
from streams.publisher import Publisher
from streams.runtime import Runtime
from streams.settings import Settings
from streams.topics import key_partition
from tests.conftest import fresh_database, settings_for
from tests.fixtures.conversation_logs import inbound
from tests.fixtures.pipeline import replay_verify
from tests.fixtures.waiting import eventually

CONTACTS = 20
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def two_workers(bootstrap_servers: str, postgres_server_url: str, tmp_path: Path) -> Iterator[Runtime]:
    with fresh_database(postgres_server_url) as url, Runtime(
            settings_for(bootstrap_servers, url, tmp_path / "baton", api_port=0), workers=2).start() as runtime:
        yield runtime


def librdkafka_send(settings: Settings, records: list[tuple[bytes, bytes]]) -> dict[bytes, int]:
    """Produce with confluent-kafka's defaults; the partition each key landed on."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    landed: dict[bytes, int] = {}

    def delivered(error, message) -> None:  # noqa: ANN001 - librdkafka's callback
        assert error is None, error
        landed[message.key()] = message.partition()

    for key, value in records:
        producer.produce(settings.topic("conversations"), value=value, key=key, on_delivery=delivered)
    assert producer.flush(30) == 0
    return landed


def sessions(settings: Settings) -> list[tuple[str, int]]:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute("SELECT contact, messages_received FROM conversation_sessions ORDER BY contact").fetchall()


def test_records_on_the_wrong_partition_are_rerouted_and_folded_once_in_order(two_workers: Runtime) -> None:
    settings = two_workers.settings
    contacts = [f"3488{c:07d}" for c in range(CONTACTS)]
    messages = {c: [inbound("acme", c, f"wamid.foreign.{c}.{n}", START + timedelta(minutes=n)) for n in range(3)]
                for c in contacts}
    first = [(m[0].stream_id.encode(), encode(m[0])) for m in messages.values()]
    landed = librdkafka_send(settings, first)
    misplaced = [key for key, partition in landed.items() if partition != key_partition(key, settings.topic_partitions)]
    assert misplaced, "librdkafka's default partitioner placed every key as murmur2 does: nothing to re-route"

    async def publish_rest() -> None:
        async with Publisher(settings) as publisher:
            await publisher.publish([e for m in messages.values() for e in m[1:]])

    eventually(lambda: sessions(settings) == [(c, 1) for c in contacts], "every first message folded")
    asyncio.run(publish_rest())
    librdkafka_send(settings, first[:5])  # redelivered by the foreign producer: applied ids, skipped
    expected = [(c, 3) for c in contacts]
    eventually(lambda: sessions(settings) == expected, "three messages per contact, one state each", within_s=120)
    with psycopg.connect(settings.database_url) as conn:
        dialogue = dict(conn.execute(
            "SELECT contact, (SELECT array_agg(t->>'whatsapp_message_id' ORDER BY (t->>'seq')::int) FROM jsonb_array_elements(dialogue) t"
            " WHERE t->>'role' = 'contact') FROM conversation_sessions").fetchall())
    # Each folded once, on the key's own partition, in the order the partition holds them.
    assert all(dialogue[c] == [f"wamid.foreign.{c}.{n}" for n in range(3)] for c in contacts), dialogue
    logs = "".join(two_workers.log_path(role).read_text() for role in ("worker-1", "worker-2"))
    assert "re-routed" in logs and "conversations record(s)" in logs
    report = replay_verify(settings)
    assert report.returncode == 0, report.stdout + report.stderr


def test_bad_records_from_a_foreign_client_are_dead_lettered_with_their_reason(two_workers: Runtime) -> None:
    settings = two_workers.settings
    forged = inbound("acme", "34880000999", "wamid.forged", START)
    forged_bytes = json.loads(encode(forged))
    forged_bytes["stream_id"] = "conversation:globex:34880000999"  # another tenant's stream
    librdkafka_send(settings, [
        (b"conversation:acme:34880000998", b"{not json"),
        (b"conversation:globex:34880000999", json.dumps(forged_bytes).encode()),
    ])

    def letters():
        found = {d.key: d.reason for d in asyncio.run(list_dead_letters(settings)) if d.stage.startswith("fold")}
        return found if len(found) == 2 else None

    reasons = eventually(letters, "both records dead-lettered by the worker")
    assert reasons["conversation:acme:34880000998"].startswith("decode: ")
    assert reasons["conversation:globex:34880000999"] == (
        "stream_id 'conversation:globex:34880000999' is not the payload's stream 'conversation:acme:34880000999'")
    assert sessions(settings) == []
