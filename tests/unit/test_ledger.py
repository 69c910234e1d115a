"""The effect ledger: requests started, one slot per effect batch and partition, restored from its table."""

from __future__ import annotations

import msgspec

from agents.streaming import LEDGER_SLOTS, Ledger
from streams.topics import key_partition

PARTITIONS = 4
STREAM = "conversation:acme:34600111222"  # the requests' stream: only the format before slots is keyed by it


def put(table: dict[bytes, bytes], key: bytes, value: bytes) -> None:
    """What the worker's log does to a table in memory (it also sends the change to the changelog)."""
    table[key] = value


def test_a_batch_is_one_record_on_its_own_partition_and_survives_a_restart():
    table: dict[bytes, bytes] = {}
    ledger = Ledger(table, PARTITIONS, put)
    ledger.record(2, ["a1", "a2", "a3"])
    ledger.record(2, ["b1"])
    ledger.record(3, ["c1"])
    assert len(table) == 3  # one record per batch and partition, not one per request or stream
    assert sorted(key_partition(key, PARTITIONS) for key in table) == [2, 2, 3]
    assert ledger.started(2, STREAM, "a2") and ledger.started(3, STREAM, "c1")
    assert not ledger.started(3, STREAM, "a2")  # each partition's requests only

    restarted = Ledger(table, PARTITIONS, put)  # a new worker restores the table from its changelog
    assert restarted.started(2, STREAM, "b1") and not restarted.started(2, STREAM, "zz")
    restarted.record(2, ["d1"])
    (slot,) = [msgspec.json.decode(value) for value in table.values() if b"d1" in value]
    assert slot == {"seq": 3, "ids": ["d1"]}  # the partition's batches are numbered on from where the table left


def test_a_slot_is_reused_after_ledger_slots_batches_and_forgets_what_it_held():
    table: dict[bytes, bytes] = {}
    ledger = Ledger(table, PARTITIONS, put)
    ledger.record(0, ["first"])
    for n in range(LEDGER_SLOTS - 1):
        ledger.record(0, [f"id{n}"])
    assert ledger.started(0, STREAM, "first") and len(table) == LEDGER_SLOTS
    ledger.record(0, ["late"])
    assert not ledger.started(0, STREAM, "first")
    assert ledger.started(0, STREAM, "late") and ledger.started(0, STREAM, "id0")
    assert len(table) == LEDGER_SLOTS


def test_slots_another_worker_wrote_are_read_once_the_partition_comes_back():
    table: dict[bytes, bytes] = {}
    mine, theirs = Ledger(table, PARTITIONS, put), Ledger(table, PARTITIONS, put)
    assert not mine.started(1, STREAM, "x")
    theirs.record(1, ["x"])  # the partition moved to another worker meanwhile
    mine.forget({1})
    assert mine.started(1, STREAM, "x")


def test_ids_of_the_format_before_slots_still_count_for_their_stream():
    stream = STREAM
    table = {stream.encode(): msgspec.json.encode(["old1", "old2"])}
    ledger = Ledger(table, PARTITIONS, put)
    partition = key_partition(stream.encode(), PARTITIONS)
    assert ledger.started(partition, stream, "old2")
    assert not ledger.started(partition, "conversation:acme:other", "old2")
    ledger.record(partition, ["new1"])  # slots and the streams' lists live side by side
    assert ledger.started(partition, stream, "old1") and ledger.started(partition, stream, "new1")
