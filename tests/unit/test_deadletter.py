"""The shared dead-letter record format."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import msgspec
import pytest

import schemas.conversations  # noqa: F401  registers the conversation event types
from agents.batching import BadRecord, Record, envelope_of
from streams.deadletter import DeadLetterError, dead_letter_record, parse_dead_letter


def test_text_record_round_trips_readably():
    at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    data = dead_letter_record(source_topic="baton.conversations", partition=1, offset=7, key=b"conversation:acme:1",
                              value=b'{"oops": 1}', reason="decode: invalid envelope", stage="projector", failed_at=at)
    document = msgspec.json.decode(data)
    assert document["value"] == '{"oops": 1}' and document["value_encoding"] == "utf-8"
    letter = parse_dead_letter(data)
    assert (letter.source_topic, letter.partition, letter.offset, letter.stage) == ("baton.conversations", 1, 7, "projector")
    assert letter.failed_at == at
    assert letter.reason == "decode: invalid envelope"
    assert letter.raw_key() == b"conversation:acme:1" and letter.raw_value() == b'{"oops": 1}'


def test_binary_and_missing_bytes_survive():
    data = dead_letter_record(source_topic="t", partition=0, offset=0, key=None, value=b"\xff\x00\xfe",
                              reason="r", stage="fold:conversations")
    letter = parse_dead_letter(data)
    assert letter.value_encoding == "base64"
    assert letter.raw_value() == b"\xff\x00\xfe" and letter.raw_key() is None
    assert (letter.reason, letter.stage) == ("r", "fold:conversations")


def _dead_letter_of(value: bytes) -> str:
    """The reason the worker dead-letters a record with this value under it, as read back from the topic."""
    record = Record("baton.conversations", 0, 5, b"conversation:acme:x", value)
    with pytest.raises(BadRecord) as caught:
        envelope_of(record)
    data = dead_letter_record(source_topic=record.topic, partition=record.partition, offset=record.offset,
                              key=record.key, value=record.value, reason=str(caught.value), stage="fold:conversations")
    letter = parse_dead_letter(data)
    assert letter.raw_value() == value
    return letter.reason


def test_record_without_an_envelope_is_dead_lettered_for_the_missing_field():
    # What tests/integration/test_pipeline.py produces: a bare {"type": ...} object.
    assert _dead_letter_of(json.dumps({"type": "conversation.bogus"}).encode()) == (
        "decode: invalid envelope: Object missing required field `event_id`")


def test_envelope_of_an_unknown_type_is_dead_lettered_naming_the_type():
    at = "2026-03-02T09:00:00Z"
    event_id = str(uuid.UUID(int=1))
    envelope = {"event_id": event_id, "type": "conversation.bogus", "schema_version": 1, "tenant_id": "acme",
                "stream_id": "conversation:acme:x", "occurred_at": at, "recorded_at": at,
                "correlation_id": event_id, "actor": "test", "payload": {}}
    assert _dead_letter_of(json.dumps(envelope).encode()) == "decode: unknown event type 'conversation.bogus'"


def test_other_bytes_are_not_dead_letters():
    with pytest.raises(DeadLetterError):
        parse_dead_letter(b"not json")
