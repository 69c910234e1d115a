"""The Python publisher: batches envelopes onto their domain topics and waits for broker acks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Self

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from schemas import (
    Envelope,
    SchemaError,
    check_storable,
    encode,
    registration,
    registration_of,
    stream_id_for,
)
from streams.errors import StreamsError
from streams.policies import PolicyReader
from streams.settings import Settings


class PublishError(StreamsError, RuntimeError):
    """The broker did not acknowledge every event of a publish call."""


class EventTooLarge(StreamsError, ValueError):
    """An event larger than the producer or the broker takes: no retry can succeed (the API answers 413).

    Deliberately not a PublishError, which callers answer with "retry"; events before it may have been sent.
    """


_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)


class InvalidEnvelope(StreamsError, ValueError):
    """An envelope whose stream id or type does not follow from its payload; nothing was published."""


def producer_options(settings: Settings) -> dict[str, object]:
    """Producer settings for domain and dead-letter topics: records sent while a request is in flight go
    together in the next one (group commit). Readers of these topics never trust ListOffsets on the embedded
    broker (streams.topics.log_end_offsets), table recovery included (streams.app)."""
    timeout = {"request_timeout_ms": int(settings.publish_timeout_s * 1000)}
    if settings.embedded:
        return {"acks": 1, "linger_ms": 0, **timeout}
    return {"acks": "all", "enable_idempotence": True, "linger_ms": 5, **timeout}


class Publisher:
    """Async publisher: `await publish(envelopes)` returns once the broker has them all."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=f"{settings.app_id}-publisher",
            **producer_options(settings),
        )
        self.policies = PolicyReader(settings)

    async def start(self) -> Self:
        await self._producer.start()
        return self

    async def stop(self) -> None:
        await self.policies.stop()
        await self._producer.stop()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def publish(self, envelopes: Sequence[Envelope]) -> list[uuid.UUID]:
        """Send every envelope keyed by its stream id and wait for all acks; nothing is sent if one is invalid.

        An envelope holding a value the read models cannot store raises schemas.UnstorableEvent (naming the field).
        """
        for envelope in envelopes:
            check_storable(envelope)
            try:
                expected = stream_id_for(envelope.tenant_id, envelope.payload)
                own_type = registration_of(envelope.payload).type
            except SchemaError as exc:
                raise InvalidEnvelope(f"event {envelope.event_id}: {exc}") from None
            if (envelope.stream_id, envelope.type) != (expected, own_type):
                raise InvalidEnvelope(f"event {envelope.event_id}: stream_id {envelope.stream_id!r} and type"
                                      f" {envelope.type!r} must be {expected!r} and {own_type!r}")
        envelopes = await self.policies.stamp(envelopes)
        try:
            futures = [
                await self._producer.send(
                    self.settings.topic(registration(envelope.type).domain),
                    value=encode(envelope),
                    key=envelope.stream_id.encode(),
                )
                for envelope in envelopes
            ]
        except _TOO_LARGE as exc:
            raise EventTooLarge(f"an event is larger than the broker accepts: {exc}") from None
        results = await asyncio.gather(*futures, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if too_large := [r for r in failures if isinstance(r, _TOO_LARGE)]:
            raise EventTooLarge(f"{len(too_large)} of {len(envelopes)} events are larger than the broker accepts:"
                                f" {too_large[0]!r}")
        if failures:
            raise PublishError(f"{len(failures)} of {len(envelopes)} events not acknowledged: {failures[0]!r}")
        return [envelope.event_id for envelope in envelopes]
