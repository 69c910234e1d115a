"""The shared dead-letter record format."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

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
    assert letter.raw_key() == b"conversation:acme:1" and letter.raw_value() == b'{"oops": 1}'


def test_binary_and_missing_bytes_survive():
    data = dead_letter_record(source_topic="t", partition=0, offset=0, key=None, value=b"\xff\x00\xfe",
                              reason="r", stage="fold:conversations")
    letter = parse_dead_letter(data)
    assert letter.value_encoding == "base64"
    assert letter.raw_value() == b"\xff\x00\xfe" and letter.raw_key() is None


def test_other_bytes_are_not_dead_letters():
    with pytest.raises(DeadLetterError):
        parse_dead_letter(b"not json")
