"""The dead-letter record format shared by every stage, and reading the dead-letter topic."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Literal

import msgspec
from aiokafka import ConsumerRecord, TopicPartition

from streams.errors import StreamsError
from streams.settings import Settings
from streams.topics import log_consumer, log_end_offsets, topic_partitions

Encoding = Literal["utf-8", "base64"]


class DeadLetterError(StreamsError, ValueError):
    """Bytes on the dead-letter topic that are not a dead-letter record."""


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A record some stage could not process: where it was, why, and its original bytes."""

    source_topic: str
    partition: int
    offset: int
    key: str | None
    key_encoding: Encoding = "utf-8"
    value: str | None
    value_encoding: Encoding = "utf-8"
    reason: str
    stage: str
    failed_at: datetime

    def raw_key(self) -> bytes | None:
        """The original key bytes."""
        return _unwrap(self.key, self.key_encoding)

    def raw_value(self) -> bytes | None:
        """The original value bytes."""
        return _unwrap(self.value, self.value_encoding)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(DeadLetter)


def dead_letter_record(
    *, source_topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
    reason: str, stage: str, failed_at: datetime | None = None,
) -> bytes:
    """The dead-letter topic value for one failed record (bytes kept as UTF-8 text, else base64)."""
    key_text, key_encoding = _wrap(key)
    value_text, value_encoding = _wrap(value)
    return _encoder.encode(DeadLetter(
        source_topic=source_topic, partition=partition, offset=offset,
        key=key_text, key_encoding=key_encoding, value=value_text, value_encoding=value_encoding,
        reason=reason, stage=stage, failed_at=failed_at or datetime.now(UTC),
    ))


def parse_dead_letter(data: bytes) -> DeadLetter:
    """Inverse of dead_letter_record; DeadLetterError when the bytes are something else."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise DeadLetterError(f"not a dead-letter record: {exc}") from None


class _Owner(msgspec.Struct):
    tenant_id: str | None = None


_owner_decoder = msgspec.json.Decoder(_Owner)


def tenant_of(letter: DeadLetter) -> str | None:
    """The tenant a dead letter belongs to: the `tenant_id` its original record (an envelope, a state) names.

    None when the record cannot be read that far (not JSON, no tenant_id): such a letter belongs to no tenant, and
    only an operator reading the broker itself (`baton deadletter list`) sees it; no API token does.
    """
    try:
        value = letter.raw_value()
        owner = _owner_decoder.decode(value) if value else None
    except (DeadLetterError, msgspec.DecodeError, RecursionError):
        return None
    return owner.tenant_id if owner is not None and owner.tenant_id else None


async def list_dead_letters(settings: Settings, limit: int = 50, *, tenant_id: str | None = None,
                            scan: int | None = None) -> list[DeadLetter]:
    """The newest `limit` dead letters (of `tenant_id` only, when given), oldest first, among the newest `scan`
    (default: `limit`) records of each partition, read up to the current end."""
    scan = max(scan or limit, limit)
    consumer = log_consumer(settings, f"{settings.app_id}-deadletters")
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, [settings.deadletter_topic])
        if not tps:
            return []
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        ends = await log_end_offsets(settings, tps)
        for tp in tps:
            consumer.seek(tp, max(starts[tp], ends[tp] - scan))
        pending = {tp for tp in tps if ends[tp] > starts[tp]}
        letters: list[DeadLetter] = []
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            letters.extend(
                _letter_of(record, tp) for tp, records in batch.items() for record in records
                if record.offset < ends[tp]
            )
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        if tenant_id is not None:
            letters = [letter for letter in letters if tenant_of(letter) == tenant_id]
        if len(tps) > 1:
            letters.sort(key=lambda letter: letter.failed_at)
        return letters[-limit:]
    finally:
        await consumer.stop()


def _letter_of(record: ConsumerRecord, tp: TopicPartition) -> DeadLetter:
    try:
        return parse_dead_letter(record.value or b"")
    except DeadLetterError as exc:
        # Something else was written to the dead-letter topic: show it rather than hide it.
        key, key_encoding = _wrap(record.key)
        value, value_encoding = _wrap(record.value)
        return DeadLetter(source_topic=tp.topic, partition=tp.partition, offset=record.offset,
                          key=key, key_encoding=key_encoding, value=value, value_encoding=value_encoding,
                          reason=str(exc), stage="unknown",
                          failed_at=datetime.fromtimestamp(record.timestamp / 1000, UTC))


def _wrap(data: bytes | None) -> tuple[str | None, Encoding]:
    if data is None:
        return None, "utf-8"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def _unwrap(text: str | None, encoding: Encoding) -> bytes | None:
    if text is None:
        return None
    if encoding == "base64":
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error as exc:
            raise DeadLetterError(f"invalid base64 in dead letter: {exc}") from None
    return text.encode("utf-8")


def letter_id(letter: DeadLetter) -> str:
    """How a dead letter is named on the command line and in the console: `topic[partition]:offset`."""
    return f"{letter.source_topic}[{letter.partition}]:{letter.offset}"
