"""Scale-out: two `baton worker` processes in one consumer group split the partitions; one survives the other."""

from __future__ import annotations

import asyncio
import re
import signal
from datetime import UTC, datetime

import pytest

from schemas import Envelope
from streams.publisher import Publisher
from streams.runtime import Runtime
from streams.settings import Settings
from tests.fixtures.pipeline import acme_messages, acme_sessions, replay_verify
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration

PARTITIONS = 4


def assigned(runtime: Runtime, role: str) -> set[int] | None:
    """Partitions of the conversations topic in the last assignment the worker logged (None before any)."""
    log = runtime.log_path(role).read_text(errors="replace")
    if "Setting newly assigned partitions" not in log:
        return None
    table = log.rsplit("Setting newly assigned partitions", 1)[1].split("Executing _on_partitions_assigned", 1)[0]
    topic = re.escape(runtime.settings.topic("conversations"))
    row = re.search(rf"\| {topic}\s*\| \{{([^}}]*)\}}\s*\|", table)
    partitions: set[int] = set()
    for part in row.group(1).split(",") if row else ():
        low, _, high = part.strip().partition("-")
        partitions.update(range(int(low), int(high or low) + 1))
    return partitions


def test_two_workers_split_partitions_and_the_survivor_takes_over(settings: Settings) -> None:
    contacts, per_contact = 20, 12
    envelopes = acme_messages(contacts, per_contact, datetime(2026, 11, 2, 9, 0, tzinfo=UTC))
    four = settings.model_copy(update={"topic_partitions": PARTITIONS, "api_port": 0})

    async def publish(chunk: list[Envelope]) -> None:
        async with Publisher(four) as publisher:
            await publisher.publish(chunk)

    with Runtime(four, workers=2).start() as runtime:
        assert {"worker-1", "worker-2"} <= set(runtime.processes)

        def split() -> tuple[set[int], set[int]] | None:
            one, two = assigned(runtime, "worker-1"), assigned(runtime, "worker-2")
            return (one, two) if one and two and one.isdisjoint(two) and one | two == set(range(PARTITIONS)) else None

        first, second = eventually(split, "both workers holding a share of the partitions", within_s=90)

        half = len(envelopes) // 2
        asyncio.run(publish(envelopes[:half]))
        eventually(lambda: sum(v[0] for v in acme_sessions(runtime.settings).values()) >= 40, "some messages folded")
        runtime.kill("worker-1", signal.SIGKILL)
        asyncio.run(publish(envelopes[half:]))
        asyncio.run(publish(envelopes[: half // 2]))  # redelivered records

        def settled():
            sessions = acme_sessions(runtime.settings)
            done = len(sessions) == contacts and all(v[2] + v[3] == per_contact for v in sessions.values())
            return sessions if done else None

        sessions = eventually(settled, "every message answered by the surviving worker", within_s=120)
        for contact, (received, requested, sent, failed, turns) in sessions.items():
            assert (received, requested, sent + failed, turns) == (per_contact, per_contact, per_contact, 2 * per_contact), contact
        assert "worker-1" not in runtime.processes  # nothing restarted it: worker-2 took its partitions over
        assert runtime.processes["worker-2"].poll() is None
        assert assigned(runtime, "worker-2") == set(range(PARTITIONS)), (first, second)

        report = replay_verify(runtime.settings)
        assert report.returncode == 0, report.stdout + report.stderr
