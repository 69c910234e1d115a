"""Operations (issue 19): worker lag gauges, the trace's order and indentation, role history in `baton status`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from projections.trace.views import _hops
from streams import metrics
from streams.settings import Settings
from streams.status import Status, role_health
from streams.worker import committed_lag
from tests.fixtures.supervisor import Clock, FakeRuntime

DOMAIN, CHANGELOG = "baton.conversations", "baton-conversations-changelog"


class FakeConsumer:
    """What committed_lag reads of Faust's consumer: assignment, fetch high watermarks, committed offsets."""

    def __init__(self, highwater: dict[TopicPartition, int], committed: dict[TopicPartition, int | None]) -> None:
        self._highwater, self._committed_offset = highwater, committed

    def assignment(self) -> set[TopicPartition]:
        return set(self._highwater)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._highwater[tp]


def test_worker_lag_counts_only_committed_partitions_and_is_zero_when_caught_up() -> None:
    domain0, domain1, changelog = TopicPartition(DOMAIN, 0), TopicPartition(DOMAIN, 1), TopicPartition(CHANGELOG, 0)
    # Faust's committed offset is the next record to process, as Kafka's; a changelog is never committed.
    idle = FakeConsumer({domain0: 12, domain1: 0, changelog: 2}, {domain0: 12, domain1: None, changelog: None})
    assert committed_lag(idle, {CHANGELOG}) == {(DOMAIN, 0): 0, (DOMAIN, 1): 0}
    behind = FakeConsumer({domain0: 15, domain1: 3, changelog: 2}, {domain0: 12, domain1: None})
    assert committed_lag(behind, {CHANGELOG}) == {(DOMAIN, 0): 3, (DOMAIN, 1): 3}


def _lag_samples(consumer: str) -> dict[tuple[str, str], float]:
    return {(s.labels["topic"], s.labels["partition"]): s.value for family in REGISTRY.collect()
            if family.name == "baton_consumer_lag" for s in family.samples if s.labels["consumer"] == consumer}


def test_a_complete_lag_reading_drops_the_series_of_partitions_no_longer_assigned() -> None:
    consumer = f"worker-{uuid.uuid4().hex[:6]}"
    metrics.set_lag(consumer, {("t", 0): 2, ("t", 1): 1, ("t-changelog", 0): 1}, complete=True)
    metrics.set_lag(consumer, {("t", 0): 0}, complete=True)
    assert _lag_samples(consumer) == {("t", "0"): 0}
    metrics.set_lag(consumer, {("t", 1): 4})  # a partial reading (the projector's batch) keeps the others
    assert _lag_samples(consumer) == {("t", "0"): 0, ("t", "1"): 4}


# --- the trace -------------------------------------------------------------------------------------------------

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
CONV, COSTS = "t.conversations", "t.costs"


def _row(name: str, at: datetime, cause: str | None, topic: str, partition: int, offset: int,
         recorded: datetime | None = None) -> tuple:
    # A random id per row: the order must not depend on ids.
    return (name, at, cause, topic, partition, offset, recorded or at)


def _trace(*rows: tuple) -> list[tuple[str, int]]:
    ids = {row[0]: uuid.uuid4() for row in rows}
    correlation = uuid.uuid4()
    found = {ids[name]: (ids[name], name, "conversation:acme:1", "test", at, recorded, ids.get(cause), correlation,
                         {}, topic, partition, offset)
             for name, at, cause, topic, partition, offset, recorded in rows}
    return [(hop.type, hop.depth) for hop in _hops(found)]


def test_events_with_equal_times_follow_the_log_and_only_causal_children_are_indented() -> None:
    t1, t2 = T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)
    hops = _trace(
        _row("reply.sent", t2, "reply.requested", CONV, 0, 6),
        _row("llm.call.recorded", t1, "routing.requested", COSTS, 1, 0, recorded=t1),
        _row("reply.requested", t1, "routing.requested", CONV, 0, 5),
        _row("message.routed", t1, "routing.requested", CONV, 0, 4),
        _row("routing.requested", T0, "message.received", CONV, 0, 2),
        _row("session.started", T0, "message.received", CONV, 0, 1),
        _row("message.received", T0, None, CONV, 0, 0),
        _row("status.updated", t2, None, CONV, 0, 7),
    )
    assert hops == [
        ("message.received", 0), ("session.started", 1), ("routing.requested", 1),
        # Same event time, one partition: the log's order (routed was written before reply requested).
        ("message.routed", 2), ("reply.requested", 2), ("llm.call.recorded", 2),
        ("reply.sent", 3),
        ("status.updated", 0),  # linked by a message id, caused by nothing in the chain
    ]


def test_an_effect_stamped_before_its_cause_is_not_indented_under_anything() -> None:
    # A producer's clock ahead of the router's: the routing decision's event time is earlier than the message's.
    hops = _trace(
        _row("message.received", T0 + timedelta(minutes=5), None, CONV, 0, 0),
        _row("routing.requested", T0 + timedelta(minutes=5), "message.received", CONV, 0, 1),
        _row("message.routed", T0, "routing.requested", CONV, 0, 2),
        _row("reply.requested", T0, "message.routed", CONV, 0, 3),
    )
    assert hops == [("message.routed", 0), ("reply.requested", 1), ("message.received", 0), ("routing.requested", 1)]


def test_equal_times_keep_causes_before_effects_across_partitions() -> None:
    # An effect written to another topic before its cause's partition got further: its cause still comes first.
    hops = _trace(
        _row("queued", T0, "routed", "t.outbound", 0, 0),
        _row("routed", T0, "received", CONV, 1, 8),
        _row("received", T0, None, CONV, 1, 7),
        _row("unrelated", T0, None, CONV, 1, 9),
    )
    assert [name for name, _ in hops].index("routed") < [name for name, _ in hops].index("queued")
    assert hops[0] == ("received", 0) and ("routed", 1) in hops and ("unrelated", 0) in hops


# --- roles in `baton status` ------------------------------------------------------------------------------------

@pytest.fixture
def supervised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeRuntime, Clock]:
    monkeypatch.setattr("streams.status._alive", lambda pid: True)  # fake children have no real process
    clock = Clock()
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1", database_url="postgresql://unused",
                        data_dir=tmp_path / "baton")
    runtime = FakeRuntime(settings, clock=clock)
    for role in runtime.roles:
        runtime.spawn(role)
    return runtime, clock


def _roles(settings: Settings) -> dict:
    found = asyncio.run(role_health(settings, api_detail="this process"))
    return {r.role: r for r in found}


def test_status_shows_a_role_restarting_then_its_restart_count_and_last_exit(supervised) -> None:
    runtime, clock = supervised
    settings = runtime.settings
    worker = _roles(settings)["worker"]
    assert (worker.state, worker.up, worker.restarts, worker.last_exit_code) == ("up", True, 0, None)

    runtime.processes["worker"].die(-signal.SIGKILL)
    runtime.supervise()
    down = _roles(settings)["worker"]
    assert (down.state, down.up, down.restarts, down.last_exit_code) == ("restarting", False, 0, -9)
    assert down.last_exit_at is not None and "restart 1 due at" in down.detail and "backoff 1 s" in down.detail
    assert Status(roles=list(_roles(settings).values())).problems(1000) == [f"worker is restarting: {down.detail}"]

    clock.advance(1)
    runtime.supervise()
    back = _roles(settings)["worker"]
    assert (back.state, back.up, back.restarts, back.last_exit_code) == ("up", True, 1, -9)
    assert back.last_exit_at == down.last_exit_at
    assert f"pid {runtime.processes['worker'].pid}" in back.detail and "exited with code -9" in back.detail
    assert json.loads((settings.data_dir / "pids.json").read_text())["worker"] == runtime.processes["worker"].pid

    runtime.processes["worker"].die(1)
    runtime.supervise()
    clock.advance(2)
    runtime.supervise()
    again = _roles(settings)["worker"]
    assert (again.restarts, again.last_exit_code) == (2, 1)
    assert _roles(settings)["projector"].restarts == 0


def test_a_role_left_restarting_by_a_dead_supervisor_is_down(supervised, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime, _ = supervised
    runtime.processes["projector"].die(3)
    runtime.supervise()
    monkeypatch.setattr("streams.status._alive", lambda pid: pid != os.getpid())  # the supervisor is gone
    projector = _roles(runtime.settings)["projector"]
    assert (projector.state, projector.up) == ("down", False)


def test_the_api_asking_for_status_is_up_without_calling_itself(supervised, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime, _ = supervised

    def no_http(*args: object, **kwargs: object) -> None:
        raise AssertionError("the API called itself")

    monkeypatch.setattr(httpx, "get", no_http)
    monkeypatch.setattr(httpx.AsyncClient, "get", no_http)
    api = _roles(runtime.settings)["api"]
    assert (api.up, api.state, api.detail) == (True, "up", "this process")
