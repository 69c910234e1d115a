"""Multi-record batches on domain topics and changelogs: ends read exactly, and a worker killed while they fly
loses nothing."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.streaming import BATCH_BYTES, WorkerLog
from projections.projector import assigned_consumer
from streams.app import create_app, raw_table
from streams.embedded import child_env
from streams.publisher import Publisher, producer_options
from streams.runtime import Runtime
from streams.settings import Settings, settings_env
from streams.topics import changelog_topic, ensure_topics, key_partition, log_end_offsets
from tests.fixtures.effects import conversations_domain, read_topics
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
    tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, **producer_options(settings))
    # A reader that asks again and again (the policy reader) probes with one consumer it keeps.
    kept = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None)
    await asyncio.gather(producer.start(), kept.start())
    try:
        for total in (25, 50):
            futures = [await producer.send(topic, b"x%d" % i, key=b"k", partition=0) for i in range(25)]
            await asyncio.gather(*futures)
            exact = {tps[0]: total, **{tp: 0 for tp in tps[1:]}}
            assert await log_end_offsets(settings, tps) == exact
            assert await log_end_offsets(settings, tps, consumer=kept) == exact
            # Kept for the next probe, fetching nothing meanwhile; on Apache Kafka its metadata stays that of the
            # topic it probes (unassigned, aiokafka would ask for every topic of the cluster at each probe).
            assert kept.paused() == kept.assignment() == {tps[0]}
            if not settings.embedded:  # the embedded broker answers every metadata request with every topic
                assert kept._client.cluster.topics() == {topic}  # noqa: SLF001
    finally:
        await asyncio.gather(producer.stop(), kept.stop())
    if settings.embedded:  # what the helper exists for: ListOffsets stops at the last batch's base offset + 1
        assert (await listed_ends(settings, tps))[tps[0]] < 50


async def test_the_worker_log_says_where_each_record_of_its_batches_was_stored(settings: Settings) -> None:
    await ensure_topics(settings)
    topic = settings.topic("conversations")
    # More than one batch per partition, keys on every partition, and keyless records.
    size = BATCH_BYTES // 25
    sent = [(f"conversation:acme:{i % 40}".encode(), b"%04d" % i + b"." * size) for i in range(200)]
    per_partition = Counter(key_partition(key, settings.topic_partitions) for key, _ in sent)
    assert len(per_partition) == settings.topic_partitions and min(per_partition.values()) * size > BATCH_BYTES
    sent += [(None, b"keyless %d" % i) for i in range(10)]
    log = WorkerLog(settings)
    try:
        stored = await log.send_all(topic, sent)
    finally:
        await (await log.producer()).stop()
    assert [(r.key, r.value) for r in stored] == sent
    assert all(r.partition == key_partition(r.key, settings.topic_partitions) for r in stored if r.key)
    assert len({(r.partition, r.offset) for r in stored}) == len(sent)
    on_log = {(r.partition, r.offset): (r.key, r.value) for r in await read_topics(settings, [topic])}
    assert on_log == {(r.partition, r.offset): (r.key, r.value) for r in stored}


async def test_table_changes_reach_the_changelog_in_the_order_they_were_made(settings: Settings) -> None:
    await ensure_topics(settings)
    name = conversations_domain(settings).state_table
    table = raw_table(create_app(settings), settings, name)
    log = WorkerLog(settings)
    keys = [b"conversation:acme:%d" % i for i in range(8)]
    try:
        for n in range(300):  # written faster than sent: several changes of a key go out in one batch
            log.write(table, keys[n % len(keys)], b"%d" % n)
            if n % 50 == 0:
                await asyncio.sleep(0)
        await log.changes_sent()
    finally:
        await (await log.producer()).stop()
    assert table.data[keys[3]] == b"299"  # the table holds each key's last change at once
    changes: dict[bytes, list[int]] = {}
    for record in await read_topics(settings, [changelog_topic(settings, name)]):
        assert record.partition == key_partition(record.key, settings.topic_partitions)
        changes.setdefault(record.key, []).append(int(record.value))
    assert changes == {key: list(range(i, 300, len(keys))) for i, key in enumerate(keys)}


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
    exact = asyncio.run(log_end_offsets(settings, domain))
    listed = asyncio.run(listed_ends(settings, domain))
    if settings.embedded:
        # The domain topic really holds multi-record batches (ListOffsets does not count their last records).
        assert sum(exact[tp] for tp in domain) > sum(listed[tp] for tp in domain)
    with psycopg.connect(settings.database_url) as conn:
        (archived,) = conn.execute("SELECT count(*) FROM events WHERE type = 'conversation.message.received'").fetchone()
    assert archived == contacts * per_contact

    verify = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "--verify"],
                            env=child_env(COLUMNS="200", **settings_env(settings)),
                            capture_output=True, text=True, timeout=300, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def append_in_one_batch_per_partition(settings: Settings, topic: str,
                                            records: dict[int, dict[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, linger_ms=200)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key, partition=partition)
                   for partition, values in records.items() for key, value in values.items()]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def test_a_restarted_worker_recovers_every_record_of_a_changelogs_last_batch(runtime: Runtime) -> None:
    settings = runtime.settings
    contacts = 16
    messages = acme_messages(contacts, 2, datetime(2026, 11, 3, 9, 0, tzinfo=UTC))
    first, second = messages[:contacts], messages[contacts:]  # each contact's first message, then its second

    async def publish(envelopes) -> None:
        async with Publisher(settings) as publisher:
            await publisher.publish(envelopes)

    def answered(n: int):
        sessions = acme_sessions(settings)
        return sessions if len(sessions) == contacts and all(v[2] + v[3] == n for v in sessions.values()) else None

    asyncio.run(publish(first))
    eventually(lambda: answered(1), "the first messages answered")
    runtime.kill("worker", signal.SIGTERM)

    # The changelog now ends, on every partition, in one batch of states the worker never wrote: each contact's
    # last state with 100 more messages received. A table recovered short of a batch's end misses some of them.
    changelog = changelog_topic(settings, "sessions")
    tps = [TopicPartition(changelog, p) for p in range(settings.topic_partitions)]

    def bumped(value: bytes) -> bytes:
        state = json.loads(value)
        return json.dumps({**state, "messages_received": state["messages_received"] + 100}).encode()

    latest: dict[int, dict[bytes, bytes]] = {}  # per partition, each key's last state
    for record in asyncio.run(read_topics(settings, [changelog])):
        latest.setdefault(record.partition, {})[record.key] = record.value
    asyncio.run(append_in_one_batch_per_partition(settings, changelog, {
        partition: {key: bumped(value) for key, value in values.items()} for partition, values in latest.items()}))
    if settings.embedded:  # the embedded broker's ListOffsets misses records of those batches
        exact, listed = asyncio.run(log_end_offsets(settings, tps)), asyncio.run(listed_ends(settings, tps))
        assert sum(exact.values()) > sum(listed.values())

    runtime.spawn("worker")
    asyncio.run(publish(second))
    sessions = eventually(lambda: answered(2), "the second messages answered")
    assert {contact: received for contact, (received, *_) in sessions.items()} == dict.fromkeys(sessions, 102)


async def test_a_live_reader_gets_every_record_of_a_partition_several_producers_append_to(settings: Settings) -> None:
    # Tansu 0.6.0 can show a reader a batch before an earlier batch of the same partition is readable (the API and
    # the worker both append to a domain topic); the reader must not read on past the gap (streams/tansu.py).
    await ensure_topics(settings)
    topic = settings.topic("conversations")
    tp = TopicPartition(topic, 0)
    producers = [AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, **producer_options(settings))
                 for _ in range(3)]
    await asyncio.gather(*(p.start() for p in producers))
    reader = await assigned_consumer(settings, [topic], "live-reader", fetch_max_wait_ms=5)
    sends = ((4, 1_200), (1, 2_400), (3, 1_200))  # (records per batch, batches) per producer
    total = sum(size * count for size, count in sends)
    offsets: list[int] = []

    async def append(producer: AIOKafkaProducer, size: int, count: int) -> None:
        for _ in range(count):
            await asyncio.gather(*[await producer.send(topic, b"x" * 200, key=b"k", partition=0) for _ in range(size)])

    async def read() -> None:
        while not offsets or offsets[-1] < total - 1:
            for records in (await reader.getmany(tp, timeout_ms=1_000)).values():
                offsets.extend(r.offset for r in records)

    try:
        await asyncio.wait_for(asyncio.gather(read(), *(append(p, size, count) for p, (size, count)
                                                          in zip(producers, sends, strict=True))), 120)
    finally:
        await asyncio.gather(reader.stop(), *(p.stop() for p in producers))
    assert sorted(set(range(total)) - set(offsets)) == []  # none skipped
    assert offsets == list(range(total))
