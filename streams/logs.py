"""A domain's log read from the broker outside the worker: every decodable event up to the end offsets seen at
start, for the what-if simulations (`baton outbound simulate`, `baton workflow simulate`)."""

from __future__ import annotations

from collections import Counter

from aiokafka import TopicPartition

from agents.batching import BadRecord, envelope_of
from projections.projector import assigned_consumer
from schemas import Envelope
from streams.settings import Settings
from streams.topics import ensure_topics, log_end_offsets, misplaced


async def read_domain_log(settings: Settings, domain: str) -> list[Envelope]:
    """Every decodable event of `domain`'s topic up to its end at start, in log order per partition (so per
    stream). A record on a partition its key does not belong to is read where the worker forwarded it, as replay
    reads it; an undecodable one is skipped (the fold agent dead-letters it)."""
    await ensure_topics(settings)
    topic = settings.topic(domain)
    consumer = await assigned_consumer(settings, [topic], f"{settings.app_id}-{domain}-simulate")
    try:
        tps = sorted(consumer.assignment(), key=lambda tp: tp.partition)
        partitions = Counter(tp.topic for tp in tps)  # the topic's own count
        ends = await log_end_offsets(settings, tps)
        await consumer.seek_to_beginning(*tps)
        envelopes: list[Envelope] = []
        pending: set[TopicPartition] = {tp for tp in tps if ends[tp] > 0}
        for tp in list(pending):
            if await consumer.position(tp) >= ends[tp]:
                pending.discard(tp)
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1000, max_records=10_000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp] or misplaced(record, partitions[tp.topic]):
                        continue
                    try:
                        envelopes.append(envelope_of(record))
                    except BadRecord:
                        continue
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return envelopes
    finally:
        await consumer.stop()
