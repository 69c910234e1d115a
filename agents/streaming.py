"""Thin Faust agents for any registered domain: its fold over its state table, and its effect worker with a ledger."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import faust
import msgspec
from aiokafka import AIOKafkaProducer

from agents.batching import Record, UnwrittenStates, fold_batch
from schemas import DecodeError, Envelope, decode, encode, registration
from streams import metrics
from streams.app import domain_topic, raw_table
from streams.deadletter import dead_letter_record
from streams.policies import PolicyReader
from streams.publisher import producer_options
from streams.registry import Domain
from streams.settings import Settings
from streams.topics import key_partition, misplaced

log_ = logging.getLogger(__name__)
_logs: dict[int, WorkerLog] = {}  # one per app, shared by its agents
# The worker log's batch size (aiokafka's default is 16 KiB), under the broker's 1 MiB message limit. aiokafka holds
# one batch per partition until it is sent, so every further batch of a partition costs one more request in turn:
# with states of a few KiB, a flush of a thousand states went out as hundreds of one-partition produce requests.
BATCH_BYTES = 1_000_000


class WorkerLog:
    """Sends events and dead letters, each envelope to its own domain's topic under its key, and table changes to
    their changelogs.

    Its own producer batches whatever is sent while a request is in flight, without Faust's per-record send path.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self.policies = PolicyReader(settings)  # stamps what the worker's timers publish; folds resolve stamps
        self._changes: list[tuple[str, bytes, bytes]] = []  # table changes not handed to the producer yet
        self._sending: asyncio.Future[None] | None = None
        self._send_failure: BaseException | None = None

    def write(self, table: faust.Table, key: bytes, value: bytes) -> None:
        """Set a table's key now and send the change to the table's changelog after every change written before it
        (the changelog is restored in its order: the last change of a key wins)."""
        table.data[key] = value
        self._changes.append((table.changelog_topic.get_topic_name(), key, value))
        if self._sending is None or self._sending.done():
            self._sending = asyncio.ensure_future(self._send_changes())

    async def _send_changes(self) -> None:
        # One batch at a time, in order: whatever was written while a batch was in flight goes out as the next.
        try:
            while self._changes:
                changes, self._changes = self._changes, []
                await self._send_to_topics(changes)
        except BaseException as exc:
            self._send_failure = exc
            raise

    async def changes_sent(self) -> None:
        """Wait until the broker has every table change written so far; raise if one could not be sent (offsets
        must then not be committed: the worker stops and its records are redelivered)."""
        while self._sending is not None and not self._sending.done():
            await asyncio.wait([self._sending])
        if self._send_failure is not None:
            raise self._send_failure

    async def producer(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                # Each call sends a whole batch before it waits, so lingering would only delay it (the publisher
                # lingers 5 ms on Apache Kafka to group what concurrent requests send).
                producer = AIOKafkaProducer(bootstrap_servers=self.settings.kafka_bootstrap_servers,
                                            client_id=f"{self.settings.app_id}-worker-log",
                                            **{**producer_options(self.settings), "linger_ms": 0,
                                               "max_batch_size": BATCH_BYTES})
                await producer.start()
                self._producer = producer
        return self._producer

    async def send_all(self, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> list[Record]:
        """Send (key, value) pairs, each to its key's partition (any, without a key), and wait until the broker has
        them; returns them where the broker stored them.

        Each partition's records go out as batches built in place: aiokafka's send() takes several coroutines per
        record (12.5 µs of CPU per record against 6).
        """
        records = list(records)
        if not records:
            return []
        producer = await self.producer()
        partitions = len(await producer.partitions_for(topic))
        by_partition: dict[int, list[int]] = {}
        for i, (key, _) in enumerate(records):
            partition = key_partition(key, partitions)
            by_partition.setdefault(random.randrange(partitions) if partition is None else partition, []).append(i)
        sent: list[tuple[asyncio.Future, list[int]]] = []  # a batch's delivery, and the records it holds in order
        for partition, indexes in by_partition.items():
            batch, held = producer.create_batch(), []
            for i in indexes:
                key, value = records[i]
                if batch.append(key=key, value=value, timestamp=None) is None:  # full: the record starts the next
                    sent.append((await producer.send_batch(batch, topic, partition=partition), held))
                    batch, held = producer.create_batch(), []
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise ValueError(f"a record of {len(value)} bytes does not fit a batch for {topic}")
                held.append(i)
            sent.append((await producer.send_batch(batch, topic, partition=partition), held))
        stored: list[Record | None] = [None] * len(records)
        for delivery, held in sent:
            at = await delivery
            for n, i in enumerate(held):
                stored[i] = Record(topic, at.partition, at.offset + n, *records[i])
        return stored  # type: ignore[return-value]  # every index is in one batch

    async def _send_to_topics(self, records: Iterable[tuple[str, bytes | None, bytes]]) -> None:
        """Send (topic, key, value) records, each topic's with one send_all, and wait until the broker has them."""
        by_topic: dict[str, list[tuple[bytes | None, bytes]]] = {}
        for topic, key, value in records:
            by_topic.setdefault(topic, []).append((key, value))
        await asyncio.gather(*(self.send_all(topic, pairs) for topic, pairs in by_topic.items()))

    async def forward(self, records: Sequence[Record]) -> None:
        """Send records, unchanged, to the partition their key belongs on, and wait until the broker has them."""
        await self._send_to_topics((record.topic, record.key, record.value or b"") for record in records)

    async def publish(self, envelopes: Sequence[Envelope]) -> list[tuple[Envelope, Record]]:
        """Send envelopes to their domains' topics under their stream ids; returns each, stamped, with its record."""
        envelopes = await self.policies.stamp(envelopes)
        metrics.observe_llm_calls(envelopes)
        by_topic: dict[str, list[Envelope]] = {}
        for envelope in envelopes:
            by_topic.setdefault(self.settings.topic(registration(envelope.type).domain), []).append(envelope)
        stored = await asyncio.gather(*(self.send_all(topic, [(e.stream_id.encode(), encode(e)) for e in sent])
                                        for topic, sent in by_topic.items()))
        return [pair for sent, records in zip(by_topic.values(), stored, strict=True)
                for pair in zip(sent, records, strict=True)]

    async def dead_letter(self, dead: Sequence[tuple[Record, str]], stage: str) -> None:
        metrics.observe_dead_letters(stage, (reason for _, reason in dead))
        await self.send_all(self.settings.deadletter_topic, (
            (record.key, dead_letter_record(
                source_topic=record.topic, partition=record.partition, offset=record.offset,
                key=record.key, value=record.value, reason=reason, stage=stage))
            for record, reason in dead
        ))


class _Policy(msgspec.Struct):
    policy: str | None = None


_policy_decoder = msgspec.json.Decoder(_Policy)


def _policy_of(record: Record) -> str | None:
    """The policy a record is stamped with, read before the batch is folded so the book can catch up first."""
    try:
        return _policy_decoder.decode(record.value or b"").policy
    except msgspec.DecodeError:
        return None  # the fold dead-letters it


class _Actor(msgspec.Struct):
    actor: str | None = None


_actor_decoder = msgspec.json.Decoder(_Actor)


def _actor(record: Record) -> str:
    try:
        return _actor_decoder.decode(record.value or b"").actor or "unknown"
    except msgspec.DecodeError:
        return "undecodable"


def worker_log(app: faust.App, settings: Settings) -> WorkerLog:
    """The app's one producer of events, dead letters and table changes, shared by every agent and timer of the
    worker; the app waits for its table changes before it commits offsets or gives partitions away."""
    if id(app) not in _logs:
        _logs[id(app)] = log = WorkerLog(settings)
        app.before_offsets_commit.append(log.changes_sent)
    return _logs[id(app)]


def register_domain(app: faust.App, settings: Settings, domain: Domain,
                    on_fold: Callable[[int], None] | None = None) -> EffectRunner | None:
    """Attach the domain's fold agent and tables to the app, and its effect runner when it has effects.

    on_fold(n) observes each folded batch of n records.
    """
    topic = domain_topic(app, settings, domain.name)
    log = worker_log(app, settings)
    folder = domain.folder_under(settings, log.policies.book)
    effects = EffectRunner(app, settings, domain, topic, log, folder.unlogged) if domain.effects is not None else None
    states = raw_table(app, settings, domain.state_table)
    codec = domain.state_codec
    requests = effects.effects.effect_types if effects is not None else frozenset()
    # States folded but not yet in the table (coalesced per key), written when due and always before an offset
    # commit: a crash loses only states of uncommitted records, which are redelivered and folded again.
    unwritten: UnwrittenStates[Any] = UnwrittenStates()
    # The last state this agent wrote per key, with the bytes it wrote: the in-memory table hands the
    # same bytes object back, so it is decoded again only after recovery or a rebalance.
    decoded: dict[bytes, tuple[bytes, Any]] = {}

    def load_state(key: str) -> Any:
        if (state := unwritten.get(key)) is not None:
            return state
        raw_key = key.encode()
        data = states.get(raw_key)
        if not data:
            return None
        cached = decoded.get(raw_key)
        return cached[1] if cached is not None and cached[0] is data else codec.decode(data)

    def write(key: str, state: Any) -> None:
        data, raw_key = codec.encode(state), key.encode()
        log.write(states, raw_key, data)
        decoded[raw_key] = (data, state)

    def write_unwritten() -> None:
        for key, state in unwritten.drain():
            write(key, state)

    app.before_commit.append(write_unwritten)

    @app.on_partitions_revoked.connect
    async def forget_revoked(_app: faust.App, revoked: set, **_kwargs: Any) -> None:
        # Another worker folds these partitions from their changelog and uncommitted records now.
        unwritten.forget({tp.partition for tp in revoked if tp.topic == topic.get_topic_name()})

    @app.timer(settings.state_flush_interval_s)
    async def flush_states() -> None:
        for key, state in unwritten.tick():
            write(key, state)

    @app.agent(topic, concurrency=1, name=f"{domain.name}.fold")
    async def fold_agent(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.worker_batch_max, settings.worker_batch_within_s):
            read: list[tuple[Record, Any]] = []  # each record on its key's partition, with its message
            wrong: list[Record] = []
            for event in events:
                record = _record(event)
                if misplaced(record, settings.topic_partitions):
                    wrong.append(record)
                else:
                    read.append((record, event.message))
            if wrong:
                await reroute(wrong)
            records = [record for record, _ in read]
            await log.policies.knows(_policy_of(r) for r in records)
            result = fold_batch(records, load_state, folder, unwritten)
            # Emissions are acknowledged before the state that includes them is written, so a
            # crash in between re-emits the same ids (deduplicated downstream) instead of losing them.
            emitted = await log.publish(result.emitted)
            await log.dead_letter(result.dead, f"fold:{domain.name}")
            partitions = {r.key: r.partition for r in records}
            awaiting = {e.stream_id for e in result.emitted if e.type in requests}
            awaiting.update(e.stream_id for _, e in result.requests)
            last = {key: i for i, (key, _) in enumerate(result.writes)}
            for i, (key, state) in enumerate(result.writes):
                if last[key] != i or unwritten.keep(key, partitions.get(key.encode(), -1), state, key in awaiting):
                    write(key, state)  # a state an event ended goes to the changelog as is, and a state now due
            if effects is not None:
                await effects.hand_over(read, emitted, result.requests)
            metrics.FOLDED.labels(domain.name).inc(len(events))
            if on_fold is not None:
                on_fold(len(events))

    async def reroute(wrong: list[Record]) -> None:
        # Per-key order and a single writer per state hold only on the key's own partition: a record elsewhere
        # is forwarded there (same bytes, same event id) before this batch is acknowledged, and folded there,
        # in order with the key's other events; a redelivery of it is an applied id the fold skips.
        await log.forward(wrong)
        actors = Counter(_actor(record) for record in wrong)
        for actor, count in actors.items():
            metrics.REROUTED.labels(domain.name, actor).inc(count)
        log_.warning("re-routed %d %s record(s) found on partitions their keys do not belong to, by producer: %s",
                     len(wrong), domain.name, ", ".join(f"{actor} ({n})" for actor, n in sorted(actors.items())))

    return effects


# Batches per partition whose started requests the ledger remembers: a redelivered or re-emitted copy of a request
# is recognised within this many effect batches of its partition (a crash re-reads only what followed the last commit).
LEDGER_SLOTS = 1024


class LedgerSlot(msgspec.Struct):
    """The non-repeatable requests one effect batch started on one partition, the seq-th batch there."""

    seq: int
    ids: list[str]


# A list is a ledger value of the format before slots, keyed by stream id: the ids started on that stream.
_slot_decoder = msgspec.json.Decoder(LedgerSlot | list[str])


class Ledger:
    """Which non-repeatable effect requests have started, per partition of the domain topic.

    Each batch writes one table record per partition it started requests on (a slot, reused every LEDGER_SLOTS
    batches), under a key that the table's partitioner puts on that very partition, so the changelog partition
    restored with a topic partition holds its ledger. What another worker wrote is read again after a rebalance.
    """

    def __init__(self, table: faust.Table, partitions: int,
                 write: Callable[[faust.Table, bytes, bytes], None]) -> None:
        self.table = table
        self.partitions = partitions
        self._write = write
        self._started: dict[int, dict[str, bytes]] = {}  # per partition: request id → the slot key holding it
        self._slots: dict[int, dict[bytes, list[str]]] = {}
        self._seq: dict[int, int] = {}
        self._keys: dict[tuple[int, int], bytes] = {}

    def started(self, partition: int, stream_id: str, event_id: str) -> bool:
        self._load(partition)
        if event_id in self._started[partition]:
            return True
        before_slots = self.table.get(stream_id.encode())
        return before_slots is not None and event_id in _slot_decoder.decode(before_slots)  # type: ignore[operator]

    def record(self, partition: int, ids: list[str]) -> None:
        """Write that these requests start now (the caller waits until the change is sent before running them)."""
        self._load(partition)
        seq = self._seq[partition] + 1
        key = self._slot_key(partition, seq % LEDGER_SLOTS)
        started = self._started[partition]
        for old in self._slots[partition].pop(key, []):
            if started.get(old) == key:
                del started[old]
        self._write(self.table, key, msgspec.json.encode(LedgerSlot(seq, ids)))
        self._slots[partition][key] = ids
        started.update(dict.fromkeys(ids, key))
        self._seq[partition] = seq

    def forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            for index in (self._started, self._slots, self._seq):
                index.pop(partition, None)

    def _load(self, partition: int) -> None:
        if partition in self._seq:
            return
        slots: dict[bytes, list[str]] = {}
        seq = 0
        for key, value in self.table.items():
            if key_partition(key, self.partitions) != partition or not value:
                continue
            if isinstance(slot := _slot_decoder.decode(value), LedgerSlot):
                slots[key], seq = slot.ids, max(seq, slot.seq)
        self._slots[partition] = slots
        self._started[partition] = {event_id: key for key, ids in slots.items() for event_id in ids}
        self._seq[partition] = seq

    def _slot_key(self, partition: int, slot: int) -> bytes:
        key = self._keys.get((partition, slot))
        if key is None:
            key = next(k for salt in range(1_000_000) if key_partition(
                k := f"ledger:{partition}:{slot}:{salt}".encode(), self.partitions) == partition)
            self._keys[(partition, slot)] = key
        return key


# Effect batches the fold agent may hand over before it waits for the effects to catch up (backpressure).
EFFECT_BATCHES_AHEAD = 4


class EffectRunner:
    """A domain's effects, run beside its fold, in log order: each record of the domain topic is read once, by the fold
    agent, which hands over the effect requests among a batch's records and those its fold emitted onto the topic.

    An emitted request runs as soon as the broker has it, not once it is read back: its copy read later from the log
    is then only released. A request the fold made without logging it (Folder.unlogged) runs as handed over, and its
    outcomes name the record it was made from as their cause. A request's message (for an unlogged one, that
    record's) keeps one reference until its effect has run, so its offset is committed only then: a crash
    redelivers every request not yet run (to the fold agent, which hands it over again). A rebalance waits for
    every request handed over before it gives partitions away.
    """

    def __init__(self, app: faust.App, settings: Settings, domain: Domain, topic: faust.TopicT, log: WorkerLog,
                 unlogged: frozenset[str] = frozenset()) -> None:
        self.app, self.settings, self.domain, self.log = app, settings, domain, log
        self.effects = domain.effects(settings)  # type: ignore[misc]
        self.unlogged = unlogged  # request types the fold hands over without logging them (Folder.unlogged)
        ledger_table = raw_table(app, settings, domain.ledger_table)
        self.ledger = Ledger(ledger_table, settings.topic_partitions, log.write)  # type: ignore[arg-type]
        self.topic_name = topic.get_topic_name()
        # Per request: its record, its envelope, the message to release once it has run (None: emitted, not read
        # yet) and whether it runs (False: a read-back copy of a request that ran as it was emitted).
        self._batches: asyncio.Queue[list[tuple[Record, Envelope, Any, bool]]] = asyncio.Queue(EFFECT_BATCHES_AHEAD)
        self._emitted: dict[uuid.UUID, int] = {}  # request id -> partition: handed over as emitted, not read back

        @app.on_partitions_revoked.connect
        async def forget_revoked(_app: faust.App, revoked: set, **_kwargs: Any) -> None:
            # An emitted request holds no message Faust would wait for: finish every run handed over before another
            # worker reads these partitions (and their ledgers); it starts requests on them now, and their slots
            # are read again once assigned back.
            await self._batches.join()
            lost = {tp.partition for tp in revoked if tp.topic == self.topic_name}
            self.ledger.forget(lost)
            for request in [r for r, partition in self._emitted.items() if partition in lost]:
                del self._emitted[request]

        @app.task
        async def run_handed_over() -> None:
            while True:
                await self.run_next()

    async def hand_over(self, read: Sequence[tuple[Record, Any]], emitted: Sequence[tuple[Envelope, Record]] = (),
                        unlogged: Sequence[tuple[Record, Envelope]] = ()) -> None:
        """Queue the effect requests among a batch's records (each on its key's partition, with its message), those
        its fold made without logging them (with the record whose fold made each), then those its fold emitted and
        the broker has (the fold agent acks the batch once this returns)."""
        requests: dict[uuid.UUID, tuple[Record, Envelope, Any, bool]] = {}
        for record, message in read:
            envelope = _effect_request(record, self.effects.effect_types)
            # A record redelivered within one batch is one request: its send must not look interrupted.
            if envelope is None or envelope.event_id in requests:
                continue
            message.incref()
            ran = self._emitted.pop(envelope.event_id, None) is not None
            requests[envelope.event_id] = (record, envelope, message, not ran)
        if unlogged:
            # The record that made an unlogged request is committed only once the request has run: a crash before
            # redelivers it, and the fold hands the request over again from its state (or makes it again).
            messages = {(record.partition, record.offset): message for record, message in read}
            for record, envelope in unlogged:
                if envelope.event_id not in requests:
                    message = messages[(record.partition, record.offset)]
                    message.incref()
                    requests[envelope.event_id] = (record, envelope, message, True)
        for envelope, record in emitted:
            if (record.topic == self.topic_name and envelope.type in self.effects.effect_types
                    and envelope.event_id not in requests):
                self._emitted[envelope.event_id] = record.partition
                requests[envelope.event_id] = (record, envelope, None, True)
        if requests:
            await self._batches.put(list(requests.values()))

    async def run_next(self) -> None:
        """Run the next handed-over batch, with every other one waiting behind it (one ledger write and one send of
        outcomes for all), then release their messages for commit."""
        batches = [await self._batches.get()]
        while not self._batches.empty():
            batches.append(self._batches.get_nowait())
        batch = [request for handed in batches for request in handed]
        # A request handed over twice before it runs (re-handed from its state after a rebalance redelivered its
        # record while the first copy waited here) runs once: the ledger knows only the runs before this one.
        runs: dict[uuid.UUID, tuple[Record, Envelope]] = {}
        for record, envelope, _, runnable in batch:
            if runnable:
                runs.setdefault(envelope.event_id, (record, envelope))
        try:
            await self.run(list(runs.values()))
            for _, _, message, _ in batch:
                if message is not None and message.ack(self.app.consumer):
                    self.app.sensors.on_message_out(message.tp, message.offset, message)
        finally:
            for _ in batches:
                self._batches.task_done()

    async def _timed(self, envelope: Envelope) -> list[Envelope]:
        with metrics.EFFECT_SECONDS.labels(self.domain.name, envelope.type).time():
            return await self.effects.run(envelope)

    async def run(self, requests: list[tuple[Record, Envelope]]) -> None:
        effects, ledger, name = self.effects, self.ledger, self.domain.name
        starting: dict[int, list[str]] = {}
        todo: list[tuple[Record, Envelope]] = []
        outputs: list[Envelope] = []
        for record, envelope in requests:
            if envelope.type in effects.not_repeatable:
                if ledger.started(record.partition, envelope.stream_id, envelope.event_id.hex):
                    # Started before a crash, redelivered or emitted again: never run again. The result carries the
                    # same event id as the original outcome, so whichever reached the log first wins.
                    outputs.extend(self._outcomes(envelope, effects.unknown_outcome(envelope)))
                    metrics.EFFECTS.labels(name, envelope.type, "unknown").inc()
                    continue
                starting.setdefault(record.partition, []).append(envelope.event_id.hex)
            todo.append((record, envelope))
        if starting:
            # Repeatable effects just run again after a crash; a non-repeatable one is recorded before it runs.
            for partition, ids in starting.items():
                ledger.record(partition, ids)
            await self.log.changes_sent()
        results = await asyncio.gather(*(self._timed(env) for _, env in todo), return_exceptions=True)
        failed: list[tuple[Record, str]] = []
        for (record, envelope), result in zip(todo, results, strict=True):
            if isinstance(result, BaseException):
                failed.append((record, f"effect: {type(result).__name__}: {result}"))
            else:
                outputs.extend(self._outcomes(envelope, result))
            metrics.EFFECTS.labels(name, envelope.type, "error" if isinstance(result, BaseException) else "ok").inc()
        await self.log.publish(outputs)
        await self.log.dead_letter(failed, f"effects:{name}")

    def _outcomes(self, request: Envelope, events: list[Envelope]) -> list[Envelope]:
        if request.type not in self.unlogged:
            return events
        # The request is not on the log: its outcomes name the logged event it was made from as their cause.
        return [msgspec.structs.replace(e, causation_id=request.causation_id) for e in events]


def _record(event: faust.EventT) -> Record:
    message = event.message
    return Record(message.topic, message.partition, message.offset, message.key, message.value)


class _TypeOnly(msgspec.Struct):
    type: str


_type_decoder = msgspec.json.Decoder(_TypeOnly)


def _effect_request(record: Record, effect_types: frozenset[str]) -> Envelope | None:
    if record.value is None:
        return None
    try:
        # Most records are no effect request: read their type alone before decoding the whole envelope.
        if _type_decoder.decode(record.value).type not in effect_types:
            return None
        return decode(record.value)
    except (DecodeError, msgspec.DecodeError):
        return None  # the fold agent dead-letters undecodable records
