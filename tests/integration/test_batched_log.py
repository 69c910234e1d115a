"""Multi-record batches on domain topics and changelogs: ends read exactly, and a worker killed while they fly
loses nothing."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from datetime import UTC, datetime

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.embedded import child_env
from streams.publisher import Publisher, producer_options
from streams.runtime import Runtime
from streams.settings import Settings, settings_env
from streams.topics import changelog_topic, ensure_topics, log_end_offsets
from tests.fixtures.pipeline import acme_messages, acme_sessions
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration


async def listed_ends(settings: Settings, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await consumer.start()
    try:
        return await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


async def test_log_end_offsets_count_every_record_of_multi_record_batches(settings: Settings) -> None:
    await ensure_topics(settings)
    topic = settings.topic("conversations")
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, **producer_options(settings))
    await producer.start()
    try:
        futures = [await producer.send(topic, b"x%d" % i, key=b"k", partition=0) for i in range(25)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
    exact = await log_end_offsets(settings, tps)
    assert exact == {tps[0]: 25, **{tp: 0 for tp in tps[1:]}}
    if settings.embedded:  # what the helper exists for: ListOffsets stops at the last batch's base offset + 1
        assert (await listed_ends(settings, tps))[tps[0]] < 25


def test_worker_killed_while_batched_emissions_are_in_flight_loses_nothing(runtime: Runtime) -> None:
    settings = runtime.settings
    contacts, per_contact = 40, 10
    envelopes = acme_messages(contacts, per_contact, datetime(2026, 11, 2, 9, 0, tzinfo=UTC))

    async def publish(chunk) -> None:
        async with Publisher(settings) as publisher:  # one call: the producer groups the records in batches
            await publisher.publish(chunk)

    asyncio.run(publish(envelopes[: len(envelopes) // 2]))
    eventually(lambda: sum(v[0] for v in acme_sessions(settings).values()) >= 20, "some messages folded")
    runtime.kill("worker", signal.SIGKILL)
    asyncio.run(publish(envelopes[len(envelopes) // 2:]))
    runtime.spawn("worker")

    def settled():
        sessions = acme_sessions(settings)
        done = len(sessions) == contacts and all(v[2] + v[3] == per_contact for v in sessions.values())
        return sessions if done else None

    sessions = eventually(settled, "every message answered after the restart", within_s=180)
    for contact, (received, requested, sent, failed, turns) in sessions.items():
        assert (received, requested, sent + failed, turns) == (per_contact, per_contact, per_contact, 2 * per_contact), contact

    domain = [TopicPartition(settings.topic("conversations"), p) for p in range(settings.topic_partitions)]
    changelog = [TopicPartition(changelog_topic(settings, "sessions"), p) for p in range(settings.topic_partitions)]
    exact = asyncio.run(log_end_offsets(settings, domain + changelog))
    listed = asyncio.run(listed_ends(settings, domain + changelog))
    if settings.embedded:
        # The domain topic and the changelog the restarted worker recovered its table from really hold
        # multi-record batches, whose last records ListOffsets does not count: recovery read up to the exact ends.
        assert sum(exact[tp] for tp in domain) > sum(listed[tp] for tp in domain)
        assert sum(exact[tp] for tp in changelog) > sum(listed[tp] for tp in changelog)
    with psycopg.connect(settings.database_url) as conn:
        (archived,) = conn.execute("SELECT count(*) FROM events WHERE type = 'conversation.message.received'").fetchone()
    assert archived == contacts * per_contact

    verify = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "--verify"],
                            env=child_env(COLUMNS="200", **settings_env(settings)),
                            capture_output=True, text=True, timeout=300, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
