"""A live reader of the embedded broker never reads past a gap in a partition's offsets (streams/tansu.py): the
records before it are returned, the next fetch asks for the gap again, and only a gap that outlasts the patience
is read past."""

from __future__ import annotations

import struct

import pytest
from aiokafka.consumer.fetcher import READ_UNCOMMITTED
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from streams import tansu

TP = TopicPartition("baton.conversations", 1)


def batch(base: int, count: int) -> bytes:
    """One record batch holding offsets base .. base + count - 1, as a fetch response carries it."""
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    for delta in range(count):
        builder.append(delta, timestamp=None, key=b"contact", value=f"record {base + delta}".encode(), headers=[])
    data = builder.build()
    struct.pack_into(">q", data, 0, base)  # the broker's base offset (outside the batch's CRC)
    return bytes(data)


def fetched(fetch_offset: int, *batches: bytes) -> tuple[list[int], int]:
    """The offsets a fetch at fetch_offset returns, and where the next fetch starts."""
    records = tansu._RecordsUpToGap(TP, MemoryRecords(b"".join(batches)), [], fetch_offset, None, None, True,
                                    READ_UNCOMMITTED)
    return [record.offset for record in records], records.next_fetch_offset


@pytest.fixture(autouse=True)
def no_gaps_seen(monkeypatch):
    monkeypatch.setattr(tansu, "_gaps_seen", {})


def test_a_fetch_stops_before_a_batch_that_starts_past_a_gap() -> None:
    # Offsets 3092-3095 are not readable yet; 3096 is.
    assert fetched(3090, batch(3090, 2), batch(3096, 1)) == ([3090, 3091], 3092)
    assert fetched(3092, batch(3096, 1)) == ([], 3092)


def test_the_gap_is_read_once_it_is_filled() -> None:
    fetched(3090, batch(3090, 2), batch(3096, 1))
    assert fetched(3092, batch(3092, 4), batch(3096, 1)) == ([3092, 3093, 3094, 3095, 3096], 3097)
    assert tansu._gaps_seen == {}


def test_a_fetch_starting_inside_a_batch_is_no_gap() -> None:
    assert fetched(3093, batch(3092, 4), batch(3096, 1)) == ([3093, 3094, 3095, 3096], 3097)


def test_a_gap_that_outlasts_the_patience_is_read_past(monkeypatch) -> None:
    clock = iter([100.0, 100.0 + tansu.GAP_PATIENCE_S + 0.1])
    monkeypatch.setattr(tansu.time, "monotonic", lambda: next(clock))
    assert fetched(3092, batch(3096, 1)) == ([], 3092)
    assert fetched(3092, batch(3096, 1)) == ([3096], 3097)
    assert tansu._gaps_seen == {}
