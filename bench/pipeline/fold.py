"""(3) the real worker's fold rate over pre-loaded records, and (4) the two Faust baselines over the same."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.pipeline.common import TENANT, TEXTS, console
from bench.pipeline.harness import BenchBroker, CpuMeter, run_child
from bench.pipeline.ingest import amplification, log_records
from schemas import Envelope, encode, source_event_id
from schemas.conversations import MessageReceived, conversation_stream_id
from streams.embedded import child_env
from streams.publisher import Publisher, producer_options
from streams.settings import Settings, settings_env
from streams.topics import (
    changelog_topic,
    ensure_topics,
    log_end_offsets,
    topic_partitions,
)

if TYPE_CHECKING:
    from bench.pipeline.run import Bench


@dataclass
class FoldRates:
    """(3) and (4) on one broker: the fold worker's reports and the two baselines' (None where skipped)."""

    broker: str
    fold: dict | None = None
    naive: dict | None = None
    bare: dict | None = None


def message_envelopes(n: int, contacts: int, prefix: str, run: str) -> list[Envelope]:
    """n message.received envelopes, round-robin over contacts, one second apart per contact."""
    start = datetime.now(UTC) - timedelta(hours=1)
    out = []
    for i in range(n):
        c, k = i % contacts, i // contacts
        contact, wamid = f"{prefix}{c:07d}", f"wamid.{run}.{i}"
        event_id = source_event_id(TENANT, "whatsapp", wamid)
        at = start + timedelta(seconds=k)
        out.append(Envelope(
            event_id=event_id, type="conversation.message.received", schema_version=1, tenant_id=TENANT,
            stream_id=conversation_stream_id(TENANT, contact), occurred_at=at, recorded_at=at,
            correlation_id=event_id, actor="bench",
            payload=MessageReceived(contact=contact, whatsapp_message_id=wamid, message_type="text",
                                    text=TEXTS[(c + k) % 3]),
        ))
    return out


async def redundant_writes(settings: Settings, table: str) -> tuple[int, int, int]:
    """Records on a table's changelog, those equal to the key's previous value, and first writes of `{}`."""
    from aiokafka import AIOKafkaConsumer

    topic = changelog_topic(settings, table)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, [topic])
        consumer.assign(tps)
        ends = await log_end_offsets(settings, tps)
        await consumer.seek_to_beginning(*tps)
        last: dict[bytes, bytes] = {}
        records = same = empty = 0
        deadline = time.perf_counter() + 60
        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in tps])

        while time.perf_counter() < deadline and await behind():
            for batch in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                for record in batch:
                    records += 1
                    same += last.get(record.key) == record.value
                    empty += record.key not in last and record.value == b"{}"
                    last[record.key] = record.value
        return records, same, empty
    finally:
        await consumer.stop()


async def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    finally:
        await admin.close()


async def preload(settings: Settings, envelopes: list[Envelope], raw_topics: list[str]) -> float:
    """The envelopes onto the conversations topic (Publisher) and, raw, onto each of raw_topics."""
    start = time.perf_counter()
    async with Publisher(settings) as publisher:
        await publisher.publish(envelopes)
    if raw_topics:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, **producer_options(settings))
        await producer.start()
        try:
            records = [(e.stream_id.encode(), encode(e)) for e in envelopes]
            for topic in raw_topics:
                futures = [await producer.send(topic, key=key, value=value) for key, value in records]
                await asyncio.gather(*futures)
        finally:
            await producer.stop()
    return time.perf_counter() - start


async def fold_rate(settings: Settings, n: int, log_dir: Path, profile: str | None, out_dir: Path,
                    meter: CpuMeter) -> tuple[dict, tuple[float, dict[str, float]] | None]:
    """The fold worker child's reports, and CPU per component from its first batch to its last report."""
    env = child_env(**settings_env(settings), BENCH_EXPECT=str(n), BENCH_IDLE_S="3")
    if profile == "cprofile":
        env["BENCH_PROFILE"] = str(out_dir / "fold_worker.prof")
    spy: dict[str, asyncio.subprocess.Process] = {}
    cpu: list[tuple[float, dict[str, float]]] = []

    async def on_line(line: dict) -> None:
        if line.get("phase") == "started":
            meter.roles = {line["pid"]: "fold worker"}
            meter.start()
            if profile == "py-spy":
                spy["p"] = await asyncio.create_subprocess_exec(
                    str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(line["pid"]), "-r", "200",
                    *(["--native"] if os.environ.get("BENCH_SPY_NATIVE") else []),
                    "--format", "raw", "-o", str(out_dir / "fold_worker.spy.txt"),
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        elif line.get("phase") == "all":
            cpu.append(meter.stop())

    lines = await run_child(["-m", "bench.fold_worker"], env, log_dir / "fold_worker.log", "all",
                            timeout=60 + n / 100, on_line=on_line)
    if "p" in spy:
        await asyncio.wait_for(spy["p"].wait(), 30)
    return {line["phase"]: line for line in lines}, (cpu[0] if cpu else None)


async def baseline(mode: str, bootstrap: str, topic: str, n: int, partitions: int, log_dir: Path,
                   loglevel: str = "info") -> dict:
    lines = await run_child(["-m", "bench.faust_baselines", mode, bootstrap, topic, str(n), str(partitions)],
                            child_env(BENCH_LOGLEVEL=loglevel), log_dir / f"baseline_{mode}.log", mode, timeout=60 + n / 200)
    return lines[-1]


async def fold_step(bench: Bench, base: Settings, broker: BenchBroker, broker_logs: Path) -> None:
    """(3) and (4) on one broker, over the same records pre-loaded on its own topics; into bench.folds."""
    args, skip, run_id, fold_n = bench.args, bench.skip, bench.run_id, bench.fold_n
    rates = FoldRates(broker.name)
    fold_settings = base.model_copy(update={
        "app_id": f"bench-fold-{run_id}", "topic_prefix": f"bench-fold-{run_id}.",
        "data_dir": bench.tmp / f"fold-{broker.profile}"})
    await ensure_topics(fold_settings)
    raw_topics = [] if "baselines" in skip else [f"bench-naive-{run_id}", f"bench-bare-{run_id}"]
    await create_topics(base.kafka_bootstrap_servers, raw_topics, args.partitions)
    envelopes = message_envelopes(fold_n, args.contacts or max(1, fold_n // 5), "3462", run_id)
    with console.status(f"pre-loading {fold_n} records onto {1 + len(raw_topics)} topics "
                        f"({broker.name})…"):
        preload_s = await preload(fold_settings, envelopes, raw_topics)
    console.print(f"[dim]{broker.name}: pre-loaded {fold_n} records × {1 + len(raw_topics)} topics "
                  f"in {preload_s:.1f} s ({fold_n * (1 + len(raw_topics)) / preload_s:,.0f} rec/s, "
                  f"one record per batch)[/dim]")
    if "fold" not in skip:
        with console.status(f"3. the Baton worker folding the pre-loaded records ({broker.name})…"):
            rates.fold = await fold_figures(bench, fold_settings, broker, broker_logs)
        console.print(f"[dim]3. ({broker.name}) done at {time.perf_counter() - bench.t_all:.0f} s[/dim]")
    if "baselines" not in skip:
        with console.status(f"4. naive Faust agent ({broker.name})…"):
            rates.naive = await baseline("naive", base.kafka_bootstrap_servers, raw_topics[0],
                                         fold_n, args.partitions, broker_logs, args.baseline_loglevel)
        with console.status(f"4. bare Faust stream iteration ({broker.name})…"):
            rates.bare = await baseline("bare", base.kafka_bootstrap_servers, raw_topics[1],
                                        fold_n, args.partitions, broker_logs, args.baseline_loglevel)
    bench.folds.append(rates)


async def fold_figures(bench: Bench, fold_settings: Settings, broker: BenchBroker, broker_logs: Path) -> dict:
    """(3): the fold worker's reports; its CPU per component, log records per message and redundant changelog
    writes go into bench."""
    fold_n = bench.fold_n
    fold, fold_cpu = await fold_rate(fold_settings, fold_n, broker_logs, bench.profile,
                                     broker_logs, CpuMeter({}, broker, bench.postmaster))
    if fold_cpu:
        bench.cpu_rows[broker.name]["3. fold worker, first batch → idle"] = fold_cpu
    bench.notes.append(f"3. ({broker.name}) "
                       + amplification({}, await log_records(fold_settings), fold_n))
    for table_name in ("sessions", "conversations-ledger"):
        records, same, empty = await redundant_writes(fold_settings, table_name)
        bench.notes.append(f"3. ({broker.name}) {table_name} changelog: {records:,} records; "
                           f"{same:,} ({100 * same / max(records, 1):.0f}%) identical to the key's "
                           f"previous value, {empty:,} ({100 * empty / max(records, 1):.0f}%) "
                           f"first writes of an empty {{}}")
    return fold
