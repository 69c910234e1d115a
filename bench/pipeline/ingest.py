"""(1) ingest → projection: N events through POST /v1/events until they are visible and answered."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import httpx
import psycopg
from aiokafka import TopicPartition

from bench.pipeline.common import TENANT, TEXTS, console, workers_name
from bench.pipeline.harness import BenchBroker, CpuMeter, derive_backends
from streams.runtime import Runtime
from streams.settings import Settings
from streams.topics import changelog_topic, log_end_offsets

if TYPE_CHECKING:
    from bench.pipeline.run import Bench


async def totals(conn: psycopg.AsyncConnection, prefix: str) -> tuple[int, int]:
    cur = await conn.execute(
        "SELECT coalesce(sum(messages_received), 0), coalesce(sum(replies_sent), 0)"
        " FROM conversation_sessions WHERE tenant_id = %s AND contact LIKE %s", (TENANT, prefix + "%"))
    received, sent = await cur.fetchone()
    return int(received), int(sent)


@dataclass
class IngestResult:
    events: int
    contacts: int
    requests: int
    ingest_s: float
    visible_s: float | None
    replied_s: float | None
    received: int
    sent: int


async def ingest_to_projection(runtime: Runtime, token: str, n: int, contacts: int, run: str,
                               batch: int = 500, concurrency: int = 4, prefix: str = "3461") -> IngestResult:
    start_at = datetime.now(UTC) - timedelta(hours=2)
    bodies = []
    for first in range(0, n, batch):
        events = []
        for i in range(first, min(n, first + batch)):
            c, k = i % contacts, i // contacts
            events.append({
                "type": "conversation.message.received",
                "occurred_at": (start_at + timedelta(seconds=k)).isoformat(),
                "payload": {"contact": f"{prefix}{c:07d}", "whatsapp_message_id": f"wamid.{run}.in.{i}",
                            "message_type": "text", "text": TEXTS[(c + k) % 3]},
                "source_id": f"{run}.in.{i}",
            })
        bodies.append(json.dumps({"events": events}).encode())

    deadline_s = max(90.0, n / 100)
    state = {"visible": None, "replied": None, "received": 0, "sent": 0}
    start = time.perf_counter()

    async def watch() -> None:
        async with await psycopg.AsyncConnection.connect(runtime.settings.database_url, autocommit=True) as conn:
            while time.perf_counter() - start < deadline_s:
                state["received"], state["sent"] = await totals(conn, prefix)
                now = time.perf_counter() - start
                if state["visible"] is None and state["received"] >= n:
                    state["visible"] = now
                if state["replied"] is None and state["sent"] >= n:
                    state["replied"] = now
                    return
                await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=runtime.api_url, timeout=60, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"}) as client:
        async def post(body: bytes) -> None:
            async with gate:
                response = await client.post("/v1/events", content=body)
                if response.status_code != 202:
                    raise RuntimeError(f"POST /v1/events: {response.status_code} {response.text[:300]}")
        await asyncio.gather(*(post(body) for body in bodies))
    ingest_s = time.perf_counter() - start
    await watcher
    return IngestResult(n, contacts, len(bodies), ingest_s, state["visible"], state["replied"],
                        state["received"], state["sent"])


ALONE = "conversations alone"  # a runtime that registers the conversations domain alone (policies always is)


@dataclass
class BatonRun:
    """(1) on one runtime: its broker, worker count, result, CPU per component and log records it added."""

    broker: str  # BROKERS' name: Tansu or Kafka
    workers: int
    ingest: IngestResult
    cpu: tuple[float, dict[str, float]]
    records: int
    alone: bool = False  # the conversations domain alone registered, not all six
    jit: float = 0.0  # of the broker's CPU, what its JIT compiler threads used

    @property
    def setup(self) -> str:
        """Worker count, and whether the conversations domain alone was registered."""
        return workers_name(self.workers) + (f", {ALONE}" if self.alone else "")

    @property
    def name(self) -> str:
        return f"{self.broker}, {self.setup}"


async def log_records(settings: Settings) -> dict[str, int]:
    """Records on the domain topic and the two table changelogs (exact end offsets, batches or not)."""
    names = {"domain": settings.topic("conversations"), "sessions changelog": changelog_topic(settings, "sessions"),
             "effects ledger changelog": changelog_topic(settings, "conversations-ledger")}
    tps = {label: [TopicPartition(topic, p) for p in range(settings.topic_partitions)] for label, topic in names.items()}
    ends = await log_end_offsets(settings, [tp for found in tps.values() for tp in found])
    return {label: sum(ends[tp] for tp in found) for label, found in tps.items()}


def amplification(before: dict[str, int], after: dict[str, int], messages: int) -> str:
    parts = [f"{label} {(after[label] - before.get(label, 0)) / messages:.1f}" for label in after]
    return f"log records per inbound message: {', '.join(parts)}; total {records_added(before, after) / messages:.1f}"


def records_added(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(after[label] - before.get(label, 0) for label in after)


async def ingest_step(bench: Bench, runtime: Runtime, token: str, broker: BenchBroker, roles: dict[int, str],
                      count: int, tag: str, key: str, alone: bool = False, comparison: bool = False) -> None:
    """(1) on one runtime; its result, CPU per component and amplification go into bench (a run of the six-domain
    comparison into bench.six_domain_runs alone)."""
    n = bench.n
    with console.status(f"1. ingesting {n} events over HTTP ({tag})…"):
        records_before = await log_records(runtime.settings)
        meter = CpuMeter(roles, broker, bench.postmaster,
                         await derive_backends(runtime.settings.database_url)).start()
        ingest = await ingest_to_projection(runtime, token, n, bench.contacts, f"{bench.run_id}{key}")
        cpu = meter.stop()
        records_after = await log_records(runtime.settings)
    run = BatonRun(broker.name, count, ingest, cpu, records_added(records_before, records_after), alone, meter.jit)
    console.print(f"[dim]1. ({tag}) done at {time.perf_counter() - bench.t_all:.0f} s[/dim]")
    if comparison:
        bench.six_domain_runs.append(run)
        return
    bench.cpu_rows[broker.name][f"1. ingest, {run.setup}"] = cpu
    bench.notes.append(f"1. ({tag}) " + amplification(records_before, records_after, n))
    if broker.profile == "kafka":
        bench.notes.append(f"1. ({tag}) the broker's JIT compiler threads used {meter.jit:.2f} s of its "
                           f"{cpu[1].get(broker.component, 0.0):.2f} s CPU")
    bench.baton_runs.append(run)
