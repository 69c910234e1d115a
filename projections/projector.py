"""The projector: every domain's topic and state changelog → PostgreSQL, offsets in the same transaction."""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psycopg
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from prometheus_client import Counter
from psycopg import AsyncConnection, AsyncCursor

from agents.batching import BadRecord, envelope_of
from projections import ProjectionError
from projections.archive import event_row, write_events
from projections.migrations import apply_migrations
from projections.readmodel import ReadModel, write_rows
from streams import metrics
from streams.deadletter import dead_letter_record
from streams.liveness import Heartbeat
from streams.process import tune_gc
from streams.publisher import producer_options
from streams.registry import Domain, domain_of_topic, load_domains, migration_sources
from streams.settings import Settings
from streams.topics import changelog_topic, ensure_topics, log_consumer, misplaced, topic_partitions

CONSUMER = "projector"
STAGE = "projector"
MAX_REASON_CHARS = 1000
# Tables derived from the archive (context search) are filled for this many archived events at once, or for what
# was archived this long ago: a statement over hundreds of events costs PostgreSQL about half as much per event as
# one per small batch. A stop in between leaves them to the derivation at start. The derivation runs on a
# connection of its own beside the projection (one at a time; the projection waits for it only when this many
# events wait behind it): a derivation that flushes a GIN index's pending list took 300 ms, which had held back
# every read model that long.
DERIVE_EVENTS = 1000
DERIVE_AFTER_S = 0.5
DERIVE_BACKLOG = 20 * DERIVE_EVENTS
# How the projector's two PostgreSQL sessions name themselves (pg_stat_activity.application_name).
PROJECTOR_APPLICATION, DERIVE_APPLICATION = "baton projector", "baton projector: derived read models"

log = logging.getLogger(__name__)
# What the projector wrote: with baton_projector_batch_seconds, its own rate (the bench prints it per run).
EVENTS_WRITTEN = Counter("baton_projector_events_total", "Events the projector archived (new rows of the events table).")
ROWS_WRITTEN = Counter("baton_projector_rows_total", "Read-model rows the projector upserted.")


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
    # Ids of the events the batch archived (or found archived), for read models derived from the archive.
    event_ids: tuple = ()


OnBatch = Callable[[BatchReport], Awaitable[None] | None]


def domain_topics(settings: Settings) -> list[str]:
    """Every domain topic."""
    return list(domain_of_topic(settings))


def state_changelogs(settings: Settings) -> dict[str, Domain]:
    """Each domain by the changelog topic of its state table."""
    return {changelog_topic(settings, d.state_table): d for d in load_domains(settings)}


async def assigned_consumer(settings: Settings, topics: Sequence[str], client_id: str,
                            **options: Any) -> AIOKafkaConsumer:
    """A started consumer without a group, assigned every partition of `topics` (created beforehand); options
    replace AIOKafkaConsumer's."""
    consumer = log_consumer(settings, client_id, **{"auto_offset_reset": "earliest",
                                                   "fetch_max_wait_ms": settings.fetch_wait_ms, **options})
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topics)
        if missing := set(topics) - {tp.topic for tp in tps}:
            raise ProjectionError(f"topic {', '.join(sorted(missing))} does not exist")
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
    derived = derived_models(settings)
    async with await AsyncConnection.connect(settings.database_url, autocommit=True,
                                             application_name=PROJECTOR_APPLICATION) as conn, \
            await AsyncConnection.connect(settings.database_url, autocommit=True,
                                          application_name=DERIVE_APPLICATION) as derive_conn:
        await apply_migrations(conn, sources=migration_sources(settings))
        await derive(conn, derived, None)  # whatever a stop between a batch and its derivation left out
        stored = await load_offsets(conn)
        consumer = await assigned_consumer(
            settings, [*domain_topics(settings), *changelogs], f"{settings.app_id}-projector",
            fetch_min_bytes=settings.projector_fetch_min_bytes,
            fetch_max_wait_ms=int(settings.projector_batch_within_s * 1000),
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
            underived: list = []
            oldest_underived = 0.0
            deriving: asyncio.Task | None = None
            while not stop.is_set():
                batch = await consumer.getmany(
                    timeout_ms=int(settings.projector_batch_within_s * 1000), max_records=settings.projector_batch_max
                )
                heartbeat.beat()
                if deriving is not None and (deriving.done() or len(underived) >= DERIVE_BACKLOG):
                    await deriving  # raises what failed it
                    deriving = None
                if deriving is None and underived and (len(underived) >= DERIVE_EVENTS
                                                       or time.monotonic() - oldest_underived >= DERIVE_AFTER_S):
                    deriving = asyncio.create_task(derive(derive_conn, derived, underived))
                    underived = []
                if not batch:
                    continue
                with metrics.PROJECTOR_BATCH_SECONDS.time():
                    report = await _project(conn, producer, settings, batch, changelogs)
                if report.event_ids and not underived:
                    oldest_underived = time.monotonic()
                underived.extend(report.event_ids)
                metrics.PROJECTED.inc(report.records)
                EVENTS_WRITTEN.inc(report.events)
                ROWS_WRITTEN.inc(report.rows)
                metrics.set_lag("projector", {(tp.topic, tp.partition): hw - await consumer.position(tp)
                                              for tp in batch if (hw := consumer.highwater(tp)) is not None})
                if on_batch is not None and inspect.isawaitable(result := on_batch(report)):
                    await result
            if deriving is not None:
                await deriving
                deriving = None
            await derive(conn, derived, underived)
        finally:
            if deriving is not None:
                deriving.cancel()
                await asyncio.gather(deriving, return_exceptions=True)
            await consumer.stop()
            await producer.stop()


@dataclass(slots=True)
class _Item:
    """One consumed record and what it writes: an events row (domain topics) or read-model rows (changelogs)."""

    record: ConsumerRecord
    event: tuple | None = None
    rows: list[tuple[ReadModel, tuple]] = field(default_factory=list)


# SQLSTATE classes of a value PostgreSQL refuses: data exception (NUL, number or date out of range, bad JSON),
# integrity constraint violation, program limit exceeded (JSON too deep, a key too large for its index).
_REFUSED_CLASSES = {"22", "23", "54"}


def is_record_fault(exc: BaseException) -> bool:
    """Whether a failed write was refused for what a record holds (then retried without it), not for the database."""
    if isinstance(exc, psycopg.Error):
        if exc.sqlstate is None:  # refused before it was sent: a value psycopg cannot adapt
            return isinstance(exc, psycopg.DataError | psycopg.ProgrammingError)
        return exc.sqlstate[:2] in _REFUSED_CLASSES
    return isinstance(exc, ValueError | TypeError | OverflowError)


async def _project(
    conn: AsyncConnection, producer: AIOKafkaProducer, settings: Settings,
    batch: dict[TopicPartition, list[ConsumerRecord]], changelogs: dict[str, Domain],
) -> BatchReport:
    items: list[_Item] = []
    dead: list[tuple[ConsumerRecord, str]] = []
    offsets: dict[tuple[str, int], int] = {}
    for tp, records in batch.items():
        offsets[(tp.topic, tp.partition)] = records[-1].offset + 1
        domain = changelogs.get(tp.topic)
        for record in records:
            item = _Item(record)  # a dead record stays as an item that writes nothing but its offset
            items.append(item)
            if domain is None and misplaced(record, settings.topic_partitions):
                continue  # archived from its key's own partition, where the worker forwards it
            try:
                if domain is None:
                    item.event = event_row(envelope_of(record), tp.topic, tp.partition, record.offset)
                elif record.value is not None:  # a tombstone deletes nothing from the history
                    item.rows = [(model, row) for model, row in domain.rows_of(_state_of(domain, record))]
            except (RecordError, BadRecord) as exc:
                dead.append((record, str(exc)))
            except Exception as exc:  # noqa: BLE001 - one state a row function cannot handle stops nothing else
                item.event, item.rows = None, []
                dead.append((record, f"project: {_reason(exc)}"))
    # Dead letters are acknowledged before the offsets that skip their records are committed.
    await _dead_letter(producer, settings, dead)
    inserted, upserted, refused = await _write(conn, producer, settings, items)
    return BatchReport(len(items), inserted, upserted, len(dead) + refused, offsets,
                       tuple(item.event[0] for item in items if item.event is not None))


def derived_models(settings: Settings) -> list[ReadModel]:
    """Every domain's read models derived from the events archive."""
    return [model for d in load_domains(settings) for model in d.read_models if model.derive is not None]


async def derive(conn: AsyncConnection, models: Sequence[ReadModel], event_ids: Sequence | None,
                 schema: str = "public") -> int:
    """Fill the derived read models for these archived events (None: every one they lack), one transaction each."""
    if event_ids is not None and not event_ids:
        return 0
    added = 0
    for model in models:
        assert model.derive is not None
        async with conn.transaction(), conn.cursor() as cur:
            added += await model.derive(cur, schema, event_ids)
    return added


async def _write(
    conn: AsyncConnection, producer: AIOKafkaProducer, settings: Settings, items: list[_Item],
) -> tuple[int, int, int]:
    """Write items and their offsets in one transaction; when PostgreSQL refuses a value, halve the items (in log
    order, so offsets only move forward) until the refused records stand alone, dead-letter each of those and
    commit its offset after the dead letter is acknowledged. Returns events inserted, rows upserted, dead letters."""
    try:
        return (*await _commit(conn, items), 0)
    except Exception as exc:
        if not is_record_fault(exc):
            raise
        if len(items) > 1:
            half = len(items) // 2
            first = await _write(conn, producer, settings, items[:half])
            second = await _write(conn, producer, settings, items[half:])
            return first[0] + second[0], first[1] + second[1], first[2] + second[2]
        record = items[0].record
        await _dead_letter(producer, settings, [(record, f"write: {_reason(exc)}")])
        await _commit(conn, [_Item(record)])
        return 0, 0, 1


async def _commit(conn: AsyncConnection, items: list[_Item]) -> tuple[int, int]:
    """One transaction: the items' events and rows, and the next offset of each partition they come from."""
    events = [item.event for item in items if item.event is not None]
    rows: dict[ReadModel, list[tuple]] = {}
    offsets: dict[tuple[str, int], int] = {}
    for item in items:
        for model, row in item.rows:
            rows.setdefault(model, []).append(row)
        offsets[(item.record.topic, item.record.partition)] = item.record.offset + 1
    async with conn.transaction(), conn.cursor() as cur:
        inserted = await write_events(cur, events)
        upserted = sum([await write_rows(cur, model, model_rows) for model, model_rows in rows.items()])
        await write_offsets(cur, offsets)
    return inserted, upserted


async def _dead_letter(producer: AIOKafkaProducer, settings: Settings,
                       dead: list[tuple[ConsumerRecord, str]]) -> None:
    """Publish dead letters and return once the broker has acknowledged every one."""
    if not dead:
        return
    metrics.observe_dead_letters(STAGE, (reason for _, reason in dead))
    for record, reason in dead:
        log.warning("dead-lettered %s[%d]:%d: %s", record.topic, record.partition, record.offset, reason)
    futures = [
        await producer.send(settings.deadletter_topic, key=record.key, value=dead_letter_record(
            source_topic=record.topic, partition=record.partition, offset=record.offset,
            key=record.key, value=record.value, reason=reason, stage=STAGE,
        ))
        for record, reason in dead
    ]
    await asyncio.gather(*futures)


def _reason(exc: BaseException) -> str:
    """An exception as a one-line dead-letter reason of bounded length."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:MAX_REASON_CHARS]


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
    tune_process(settings)
    uvloop.run(until_signalled())


def tune_process(settings: Settings) -> None:
    """Before `baton projector` projects: every domain loaded, then the start-up heap frozen (tune_gc)."""
    load_domains(settings)
    tune_gc()
