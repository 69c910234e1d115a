"""The Faust app: broker profile, topics and tables; agents register themselves on it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType

import faust
from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as faust_kafka
from faust.types import TP
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent

from streams.settings import Settings
from streams.tansu import read_batches_in_order
from streams.topics import changelog_topic, log_end_offsets


class _ConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: faust_kafka.Transport):
        consumer = super()._create_worker_consumer(transport)
        # Faust hard-codes a 1500 ms fetch wait; Tansu answers a parked fetch only when it expires.
        consumer._fetch_max_wait_ms = self.app.settings.fetch_wait_ms
        return consumer

    async def on_thread_stop(self) -> None:
        # With the broker gone, aiokafka's Fetcher.close() re-raises the cancellation of a fetch in its retry
        # backoff; escaping the thread, it keeps mode from reporting the shutdown and Worker.stop() waits forever.
        try:
            await super().on_thread_stop()
        except asyncio.CancelledError:
            pass

    async def _highwaters(self, partitions):
        # Table recovery reads each changelog up to its highwater. Tansu's ListOffsets answers the last record
        # batch's base offset + 1, short of the end when that batch holds several records: read the exact ends
        # from a fetch instead, so changelogs can be written in batches too.
        if not self.app.settings.embedded:
            return await super()._highwaters(partitions)
        ends = await log_end_offsets(self.app.settings, [TopicPartition(tp.topic, tp.partition) for tp in partitions])
        return {TP(tp.topic, tp.partition): end for tp, end in ends.items()}

    async def _fetch_records(self, consumer, active_partitions, timeout=None, max_records=None):
        # Faust hands over its live set of active partitions, which recovery may empty meanwhile, and
        # aiokafka reads an empty set as "every partition": records of paused partitions would come back
        # with their position advanced, and Faust drops them as inactive. Fetch for a snapshot instead.
        active = frozenset(active_partitions) if active_partitions is not None else None
        if active is not None and not active:
            return {}
        return await super()._fetch_records(consumer, active, timeout=timeout, max_records=max_records)


class _Consumer(faust_kafka.Consumer):
    """Faust's consumer; it starts never-committed partitions at the log start and commits only past processed records."""

    _log_start: Mapping[TP, int] = MappingProxyType({})

    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def perform_seek(self) -> None:
        await super().perform_seek()
        # A partition without a committed offset starts at the log start (auto_offset_reset="earliest").
        # Seek it there too: Faust's own seek skips it, so records it dropped before this point
        # (see _fetch_records) would otherwise never be fetched again.
        changelogs = self.app.tables.changelog_topics
        fresh = [tp for tp in self.assignment() if tp.topic not in changelogs and self._committed_offset[tp] is None]
        self._log_start = dict(await self.earliest_offsets(*fresh)) if fresh else {}
        if self._log_start:
            # On the consumer's own thread: a seek from here races its fetch (aiokafka's fetcher is not
            # thread-safe; a worker crashed with a KeyError in fetched_records).
            await self._thread.seek_wait(self._log_start)

    async def _commit_tps(self, tps, start_new_transaction: bool) -> bool:
        # Agents may keep table writes in memory (coalesced per key); they must reach the changelog before the
        # offsets of the records they include are committed. The hooks are synchronous and the offsets are taken
        # right after them, so no agent batch can be acked in between.
        for hook in self.app.before_commit:
            hook()
        return await super()._commit_tps(tps, start_new_transaction)

    async def _commit_offsets(self, offsets, start_new_transaction: bool = True) -> bool:
        # What the hooks above wrote may still be on its way: the offsets are committed once the broker has it.
        await self.app.other_writes_sent()
        return await super()._commit_offsets(offsets, start_new_transaction=start_new_transaction)

    def _new_offset(self, tp: TP) -> int | None:
        # Faust commits the first run of acked offsets even when the record at the commit position
        # was never acked (it tolerates a gap of one, and any gap before the first commit), so a
        # record dropped before processing would be skipped for good. Wait for it instead: at
        # worst it is redelivered after a restart.
        acked = self._acked[tp]
        start = self._committed_offset[tp]
        if start is None:
            start = self._log_start.get(tp)
        if acked and start is not None and min(acked) > start and not self._gap[tp].overlaps(start):
            return None
        return super()._new_offset(tp)


class _Transport(faust_kafka.Transport):
    Consumer = _Consumer


class _FlowControl(FlowControlEvent):
    def resume(self) -> None:
        # Faust resumes flow once more after seeking stream partitions, while records already flow
        # into agent buffers; clearing them then drops records that are never fetched again.
        # Buffers are cleared when flow is suspended for a rebalance, and on a real resume.
        if not self.is_active():
            super().resume()


class _Stream(faust.Stream):
    async def wait_for_stopped(self, *coros: object, timeout: float | None = None) -> bool:
        # Stream.take_events waits for its buffer to fill, for at most `within` (10 ms), over and over, idle or not,
        # and mode's wait makes three tasks each time to watch for a stop as well. take_events checks should_stop
        # after every wait, so a plain timed wait on the buffer sees a stop as soon. Other waits go to mode's.
        if timeout is not None and len(coros) == 1 and isinstance(event := coros[0], asyncio.Event):
            try:
                async with asyncio.timeout(float(timeout)):
                    await event.wait()
            except TimeoutError:
                pass
            return self.should_stop
        return await super().wait_for_stopped(*coros, timeout=timeout)  # type: ignore[arg-type]


class BatonApp(faust.App):
    """A Faust app whose consumer honours the configured fetch wait, never drops buffered records and recovers
    tables up to their changelogs' exact ends."""

    def __init__(self, settings: Settings, **kwargs) -> None:
        super().__init__(settings.app_id, **kwargs)
        self.settings = settings
        # Synchronous callables run before every offset commit (see _Consumer._commit_tps).
        self.before_commit: list[Callable[[], None]] = []
        # Awaited before offsets are committed and before partitions are given away: writes sent by other producers
        # than Faust's (table changes through the worker's own) must be on the broker by then.
        self.before_offsets_commit: list[Callable[[], Awaitable[None]]] = []

    async def other_writes_sent(self) -> None:
        for flushed in self.before_offsets_commit:
            await flushed()

    async def _producer_flush(self, logger) -> None:
        await super()._producer_flush(logger)
        await self.other_writes_sent()

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self)

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return _FlowControl(loop=self.loop)


def create_app(settings: Settings) -> faust.App:
    """A Faust app configured for the broker profile (DESIGN.md: embedded broker facts)."""
    read_batches_in_order(settings)
    embedded = {
        "producer_linger": 0.0,
        "producer_acks": 1,
        "broker_session_timeout": 6.0,
        "broker_heartbeat_interval": 1.0,
        "broker_rebalance_timeout": 10.0,
    }
    kafka = {
        "producer_linger": 0.005,
        "producer_acks": -1,
        # A killed worker's partitions move to a survivor after about 10 s (Faust's default waits 60 s).
        "broker_session_timeout": 10.0,
        "broker_heartbeat_interval": 1.0,
        "broker_rebalance_timeout": 20.0,
    }
    return BatonApp(
        settings,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store="memory://",
        processing_guarantee="at_least_once",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        table_standby_replicas=0,
        datadir=str(settings.worker_data_dir or settings.data_dir / "worker"),
        Stream=_Stream,
        **(embedded if settings.embedded else kafka),
    )


def domain_topic(app: faust.App, settings: Settings, domain: str) -> faust.TopicT:
    """A domain topic with raw bytes keys and values (the codec decodes them)."""
    return app.topic(
        settings.topic(domain),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
    )


def raw_table(app: faust.App, settings: Settings, name: str) -> faust.Table:
    """A table of encoded bytes keyed by the stream id's bytes, co-partitioned with the domain topics."""
    # Raw bytes keys: the changelog key must equal the source record's key for partitioning.
    table = app.Table(
        name,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.topic_partitions,
        use_partitioner=True,
    )
    assert table.changelog_topic.get_topic_name() == changelog_topic(settings, name)
    return table
