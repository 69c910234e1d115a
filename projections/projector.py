"""The projector: every domain's topic and state changelog → PostgreSQL, offsets in the same transaction."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from psycopg import AsyncConnection, AsyncCursor

from agents.batching import BadRecord, envelope_of
from projections import ProjectionError
from projections.migrations import apply_migrations
from projections.writers import ReadModel, write_rows
from projections.writers.events import event_row, write_events
from streams import metrics
from streams.deadletter import dead_letter_record
from streams.domains import Domain, domain_of_topic, load_domains, migration_sources
from streams.liveness import Heartbeat
from streams.publisher import producer_options
from streams.settings import Settings
from streams.topics import changelog_topic, ensure_topics

CONSUMER = "projector"
STAGE = "projector"

log = logging.getLogger(__name__)


class RecordError(ProjectionError):
    """A record the projector cannot use; its message is the dead-letter reason."""


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one projected batch did."""

    records: int
    events: int
    rows: int
    dead_letters: int
    offsets: dict[tuple[str, int], int]


OnBatch = Callable[[BatchReport], Awaitable[None] | None]


def domain_topics(settings: Settings) -> list[str]:
    """Every domain topic."""
    return list(domain_of_topic(settings))


def state_changelogs(settings: Settings) -> dict[str, Domain]:
    """Each domain by the changelog topic of its state table."""
    return {changelog_topic(settings, d.state_table): d for d in load_domains(settings)}


async def assigned_consumer(settings: Settings, topics: Sequence[str], client_id: str) -> AIOKafkaConsumer:
    """A started consumer without a group, assigned every partition of `topics` (created beforehand)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", client_id=client_id, fetch_max_wait_ms=settings.fetch_wait_ms,
    )
    await consumer.start()
    try:
        tps = []
        for topic in topics:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                raise ProjectionError(f"topic {topic} does not exist")
            tps.extend(TopicPartition(topic, p) for p in sorted(partitions))
        consumer.assign(tps)
    except BaseException:
        await consumer.stop()
        raise
    return consumer


async def load_offsets(conn: AsyncConnection, consumer: str = CONSUMER) -> dict[tuple[str, int], int]:
    """The next offset to read per (topic, partition) stored for a consumer."""
    cur = await conn.execute(
        "SELECT topic, partition, next_offset FROM projector_offsets WHERE consumer = %s", (consumer,)
    )
    return {(topic, partition): offset for topic, partition, offset in await cur.fetchall()}


async def write_offsets(cur: AsyncCursor, offsets: dict[tuple[str, int], int], consumer: str = CONSUMER) -> None:
    """Upsert next offsets in one statement."""
    if not offsets:
        return
    topics, partitions = zip(*offsets)
    await cur.execute(
        "INSERT INTO projector_offsets (consumer, topic, partition, next_offset)"
        " SELECT %s, * FROM unnest(%s::text[], %s::integer[], %s::bigint[])"
        " ON CONFLICT (consumer, topic, partition)"
        " DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
        (consumer, list(topics), list(partitions), list(offsets.values())),
    )


async def run_projector(settings: Settings, stop: asyncio.Event | None = None, on_batch: OnBatch | None = None) -> None:
    """Project until `stop` is set: archive events, upsert read-model rows, store offsets, one transaction per batch."""
    stop = stop or asyncio.Event()
    await ensure_topics(settings)
    changelogs = state_changelogs(settings)
    async with await AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        await apply_migrations(conn, sources=migration_sources(settings))
        stored = await load_offsets(conn)
        consumer = await assigned_consumer(
            settings, [*domain_topics(settings), *changelogs], f"{settings.app_id}-projector"
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers, client_id=f"{settings.app_id}-projector",
            **producer_options(settings),
        )
        try:
            await producer.start()
            fresh = []
            for tp in consumer.assignment():
                if (tp.topic, tp.partition) in stored:
                    consumer.seek(tp, stored[(tp.topic, tp.partition)])
                else:
                    fresh.append(tp)
            if fresh:
                await consumer.seek_to_beginning(*fresh)
            log.info("projecting %d partitions, %d from stored offsets", len(consumer.assignment()), len(stored))
            heartbeat = Heartbeat("projector")
            while not stop.is_set():
                batch = await consumer.getmany(
                    timeout_ms=int(settings.projector_batch_within_s * 1000), max_records=settings.projector_batch_max
                )
                heartbeat.beat()
                if not batch:
                    continue
                with metrics.PROJECTOR_BATCH_SECONDS.time():
                    report = await _project(conn, producer, settings, batch, changelogs)
                metrics.PROJECTED.inc(report.records)
                metrics.set_lag("projector", {(tp.topic, tp.partition): hw - await consumer.position(tp)
                                              for tp in batch if (hw := consumer.highwater(tp)) is not None})
                if on_batch is not None and inspect.isawaitable(result := on_batch(report)):
                    await result
        finally:
            await consumer.stop()
            await producer.stop()


async def _project(
    conn: AsyncConnection, producer: AIOKafkaProducer, settings: Settings,
    batch: dict[TopicPartition, list[ConsumerRecord]], changelogs: dict[str, Domain],
) -> BatchReport:
    events: list[tuple] = []
    rows: dict[ReadModel, list[tuple]] = {}
    dead: list[tuple[ConsumerRecord, str]] = []
    offsets: dict[tuple[str, int], int] = {}
    for tp, records in batch.items():
        offsets[(tp.topic, tp.partition)] = records[-1].offset + 1
        domain = changelogs.get(tp.topic)
        for record in records:
            try:
                if domain is None:
                    events.append(event_row(envelope_of(record), tp.topic, tp.partition, record.offset))
                elif record.value is not None:  # a tombstone deletes nothing from the history
                    for model, row in domain.rows_of(_state_of(domain, record)):
                        rows.setdefault(model, []).append(row)
            except (RecordError, BadRecord) as exc:
                dead.append((record, str(exc)))
    if dead:
        metrics.observe_dead_letters(STAGE, (reason for _, reason in dead))
        # Dead letters are acknowledged before the offsets that skip their records are committed.
        futures = [
            await producer.send(settings.deadletter_topic, key=record.key, value=dead_letter_record(
                source_topic=record.topic, partition=record.partition, offset=record.offset,
                key=record.key, value=record.value, reason=reason, stage=STAGE,
            ))
            for record, reason in dead
        ]
        await asyncio.gather(*futures)
    async with conn.transaction(), conn.cursor() as cur:
        inserted = await write_events(cur, events)
        upserted = sum([await write_rows(cur, model, model_rows) for model, model_rows in rows.items()])
        await write_offsets(cur, offsets)
    return BatchReport(sum(map(len, batch.values())), inserted, upserted, len(dead), offsets)


def _state_of(domain: Domain, record: ConsumerRecord) -> object:
    try:
        return domain.state_codec.decode(record.value)
    except (msgspec.DecodeError, ValueError) as exc:
        raise RecordError(f"decode {domain.name} state: {exc}") from None


def main(settings: Settings) -> None:
    """`baton projector`: project until SIGINT or SIGTERM, then stop cleanly."""

    async def until_signalled() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_projector(settings, stop)

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    metrics.serve(settings.metrics_port)
    asyncio.run(until_signalled())
