"""Topic names and explicit creation (the embedded broker must never auto-create)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from streams.registry import load_domains
from streams.settings import Settings
from streams.tansu import read_batches_in_order


@functools.lru_cache(maxsize=65_536)
def key_partition(key: bytes | None, partitions: int) -> int | None:
    """The partition Baton's producers put a key on: murmur2, as Kafka's Java client and aiokafka do."""
    return None if key is None else (murmur2(key) & 0x7FFFFFFF) % partitions


def misplaced(record: Any, partitions: int) -> bool:
    """True for a domain record (with `key` and `partition`) that a producer with another partitioner put on a
    partition its key does not belong to. The worker forwards it to its key's partition; every reader of the
    domain topics (worker, projector, replay) reads it there, never here."""
    owner = key_partition(record.key, partitions)
    return owner is not None and owner != record.partition


def changelog_topic(settings: Settings, table: str) -> str:
    """The changelog topic Faust writes for one of the worker's tables."""
    return f"{settings.app_id}-{table}-changelog"


def all_topics(settings: Settings) -> list[str]:
    """Every topic Baton uses: domain topics first, then dead letters, then the worker's table changelogs."""
    domains = load_domains(settings)
    return (
        [settings.topic(domain.name) for domain in domains]
        + [settings.deadletter_topic]
        + [changelog_topic(settings, table) for domain in domains for table in domain.tables]
    )


# The log is the source of truth (replay, table recovery): domain and dead-letter topics keep every record;
# changelogs keep the last state per key.
KEEP_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}
COMPACTED = {"cleanup.policy": "compact"}


def topic_configs(settings: Settings, name: str) -> dict[str, str]:
    """Per-topic configuration set at creation on Apache Kafka (the embedded broker keeps everything anyway)."""
    if settings.embedded:
        return {}
    return COMPACTED if name.endswith("-changelog") else KEEP_FOREVER


async def ensure_topics(settings: Settings) -> list[str]:
    """Create every topic with the configured partitions and retention; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        names = all_topics(settings)
        partitions = {settings.deadletter_topic: 1}
        response = await admin.create_topics(
            [
                NewTopic(name, partitions.get(name, settings.topic_partitions), settings.topic_replication,
                         topic_configs=topic_configs(settings, name))
                for name in names
            ]
        )
        for name, code, message in _topic_errors(response):
            if code not in (0, TopicAlreadyExistsError.errno):
                raise RuntimeError(f"cannot create topic {name}: error {code} {message}")
        counts = await _wait_until_led(admin, names)
        # Keys are placed by murmur2 modulo the partition count, and tables are co-partitioned with their topic:
        # a topic created earlier with another count would place keys where no reader expects them.
        if wrong := {name: n for name, n in counts.items() if n != partitions.get(name, settings.topic_partitions)}:
            raise RuntimeError("topics exist with another partition count than BATON_TOPIC_PARTITIONS="
                               f"{settings.topic_partitions}: " + ", ".join(f"{t} has {n}" for t, n in wrong.items()))
        return names
    finally:
        await admin.close()


async def _wait_until_led(admin: AIOKafkaAdminClient, names: list[str], wait_s: float = 30.0) -> dict[str, int]:
    """Each topic's partition count, once every partition of every topic has a leader in the metadata brokers
    answer with.

    Apache Kafka answers CreateTopics once the controller committed the topic; its brokers learn of it a moment
    later, and a consumer assigned before then sees no partitions.
    """
    deadline = time.monotonic() + wait_s
    while True:
        topics = await admin.describe_topics(names)
        unled = [t["topic"] for t in topics
                 if t["error_code"] != 0 or not t["partitions"] or any(p["leader"] < 0 for p in t["partitions"])]
        if not unled:
            return {t["topic"]: len(t["partitions"]) for t in topics}
        if time.monotonic() > deadline:
            raise RuntimeError(f"topics without a partition leader after {wait_s:.0f} s: {', '.join(unled)}")
        await asyncio.sleep(0.1)


def _topic_errors(response: object) -> list[tuple[str, int, str | None]]:
    return [(err[0], err[1], err[2] if len(err) > 2 else None) for err in response.topic_errors]  # type: ignore[attr-defined]


def log_consumer(settings: Settings, client_id: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer of Baton's log, not started: without a group and without auto-commit unless options say otherwise.
    Every reader Baton builds outside the Faust app comes from here, so on the embedded profile its fetches wait
    for a gap in offsets to fill (streams.tansu)."""
    read_batches_in_order(settings)
    return AIOKafkaConsumer(**{"bootstrap_servers": settings.kafka_bootstrap_servers, "group_id": None,
                               "enable_auto_commit": False, "client_id": client_id, **options})


async def topic_partitions(consumer: AIOKafkaConsumer, topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of `topics` (none for a topic that does not exist), from fresh cluster metadata.

    A started consumer's own metadata covers only what it subscribed to on Apache Kafka (the embedded broker
    answers with every topic), so ask the cluster for all of it.
    """
    cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001 - what consumer.topics() reads, with partitions
    return [TopicPartition(topic, p) for topic in topics for p in sorted(cluster.partitions_for_topic(topic) or ())]


async def log_end_offsets(settings: Settings, tps: Sequence[TopicPartition], wait_s: float = 10.0,
                          consumer: AIOKafkaConsumer | None = None) -> dict[TopicPartition, int]:
    """The offset after each partition's last record.

    The embedded broker's ListOffsets answers the base offset of the last record batch + 1, which is short
    of the end when that batch holds several records (DESIGN.md); the high watermark of a fetch response is
    exact. So fetch the last listed record and read the watermark the broker sends with it.

    `consumer`, a started consumer without a group, probes instead of a new one: who asks again and again keeps
    one, since a new consumer's first ListOffsets on Apache Kafka waits about 100 ms for metadata. It is left
    assigned to what it probed, paused, so it fetches nothing meanwhile: unassigning it would ask the cluster for
    the metadata of every topic there (aiokafka tracks none then), each time.
    """
    if consumer is not None:
        try:
            return await _probed_ends(consumer, tps, wait_s)
        finally:
            consumer.pause(*consumer.assignment())
    consumer = log_consumer(settings, f"{settings.app_id}-log-end")
    await consumer.start()
    try:
        return await _probed_ends(consumer, tps, wait_s)
    finally:
        await consumer.stop()


async def _probed_ends(consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition],
                       wait_s: float) -> dict[TopicPartition, int]:
    listed = await consumer.end_offsets(list(tps))
    probe = [tp for tp in tps if listed[tp] > 0]
    if not probe:
        return listed
    if consumer.assignment() != set(probe):
        consumer.assign(probe)
    for tp in probe:
        consumer.seek(tp, listed[tp] - 1)
    # A kept consumer still knows the watermark an earlier probe fetched: only a fetch after this seek counts.
    polled = {tp: consumer.last_poll_timestamp(tp) for tp in probe}
    consumer.resume(*probe)
    ends = dict(listed)
    pending = set(probe)
    deadline = time.monotonic() + wait_s
    while pending and time.monotonic() < deadline:
        await consumer.getmany(*pending, timeout_ms=200, max_records=1)
        for tp in list(pending):
            highwater = consumer.highwater(tp)
            if highwater is not None and consumer.last_poll_timestamp(tp) != polled[tp]:
                ends[tp] = max(listed[tp], highwater)
                pending.discard(tp)
    if pending:
        raise RuntimeError(f"no fetch answered for {sorted(pending)} within {wait_s:.0f} s")
    return ends
