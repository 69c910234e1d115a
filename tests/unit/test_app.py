"""The worker's Faust app never loses a record it has fetched: buffers survive a redundant resume,
and offsets are committed only up to the first record not yet processed."""

from __future__ import annotations

import pytest
from faust.types import TP
from mode.utils.queues import FlowControlQueue

from streams.app import create_app
from streams.settings import Settings

TOPIC = TP("baton.conversations", 0)


@pytest.fixture
def app():
    return create_app(Settings())


def test_records_buffered_while_flowing_survive_a_second_resume(app) -> None:
    buffer = FlowControlQueue(flow_control=app.flow_control, clear_on_resume=True)
    app.flow_control.resume()
    buffer.put_nowait("record 56")
    app.flow_control.resume()  # Faust's recovery resumes again after seeking stream partitions
    assert buffer.qsize() == 1


def test_buffers_are_cleared_when_flow_resumes_after_a_rebalance(app) -> None:
    buffer = FlowControlQueue(flow_control=app.flow_control, clear_on_resume=True)
    app.flow_control.resume()
    buffer.put_nowait("record of the previous assignment")
    app.flow_control.suspend()
    app.flow_control.resume()
    assert buffer.qsize() == 0


def new_offset(app, acked: list[int], committed: int | None = None, log_start: int | None = None) -> int | None:
    consumer = app.consumer
    consumer._acked[TOPIC] = list(acked)
    consumer._acked_index[TOPIC] = set(acked)
    consumer._committed_offset[TOPIC] = committed
    consumer._log_start = {TOPIC: log_start} if log_start is not None else {}
    return consumer._new_offset(TOPIC)


def test_commit_stops_before_a_record_not_yet_processed(app) -> None:
    assert new_offset(app, [11, 12, 13], committed=10) is None
    assert new_offset(app, [10, 11, 13], committed=10) == 12


def test_first_commit_stops_before_an_unprocessed_first_record(app) -> None:
    assert new_offset(app, [1, 2, 3], log_start=0) is None
    assert new_offset(app, [0, 1, 2, 3], log_start=0) == 4


def test_offsets_missing_from_the_log_do_not_hold_the_commit_back(app) -> None:
    app.consumer._gap[TOPIC].addi(10, 11)  # offset 10 does not exist (e.g. a transaction marker)
    assert new_offset(app, [11, 12], committed=10) == 13


async def test_no_records_are_handed_out_when_no_partition_is_active(app) -> None:
    # aiokafka would read an empty partition set as "all partitions" and advance their positions.
    assert await app.consumer._thread._fetch_records(consumer=None, active_partitions=set()) == {}
