"""Log records per unit of work, per domain, on the embedded broker.

    .venv/bin/python -m bench.records [--units 200] [--keys 50,200] [--domains conversations,outbound,...]

Each domain's unit of work is driven through its API, --units units spread evenly over --keys keys (the streams its
fold keys state by), on a fresh runtime per key count (embedded Tansu and PostgreSQL, one worker, projector, API):
conversations: an inbound message answered (POST /v1/events; rules routing, log sender, no model). outbound: a
message queued and sent (POST /v1/outbound; preferences set beforehand). steps: a model step (summarize) of an
execution (POST /v1/executions) on a runtime of its own with a fake Anthropic, so its costs reach the costs domain.
learning: a day run and completed (day.run, day.done; intents synced beforehand), the agents being bench.learning's
fake, asked at every run. workflow: a phase gate passed (phases/complete; the
artifacts the gates want recorded beforehand).

Counted: records appended to every topic of the runtime (exact end offsets, streams.topics.log_end_offsets) between
two readings, each once every consumer has caught up (worker and projector lag 0 on every domain, streams.status),
the second once the API says every unit is done. Per unit: the domain's topic, its state table's changelog, its
effect ledger's changelog, and every other topic (other domains' topics and changelogs, other worker tables); under
the table, the event types on the domain topic and the other topics that grew, per unit.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr
from rich.table import Table

from bench.fake_anthropic import FakeAnthropic
from bench.learning import VersionedAgents
from bench.pipeline.common import ROOT, TENANT, console
from bench.pipeline.harness import warm_up
from bench.pipeline.ingest import ingest_to_projection
from streams.auth import issue_token
from streams.embedded import EmbeddedBroker, EmbeddedPostgres
from streams.registry import load_domains
from streams.runtime import Runtime
from streams.settings import Settings
from streams.status import collect_status
from streams.topics import changelog_topic, log_end_offsets, topic_partitions

Ends = dict[TopicPartition, int]
INTENT = {"topic": "Machine Learning", "depth": "informed", "end_goal": "Build production ML models",
          "time_per_day_min": 60, "user_tz": "UTC"}
ARTIFACTS = ("TASK.md", "CONTEXT.md", "PLAN.md", "CHANGES.md")  # what the intake, research, plan, review gates want
PHASES = 6


class _Type(msgspec.Struct):
    type: str


class Api:
    """The runtime's API with the tenant's token, at most 16 requests in flight."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime, self.settings = runtime, runtime.settings
        self.token = issue_token(runtime.settings, TENANT)
        self.http = httpx.AsyncClient(base_url=runtime.api_url, timeout=120,
                                      headers={"Authorization": f"Bearer {self.token}"})
        self.gate = asyncio.Semaphore(16)

    async def call(self, method: str, path: str, ok: int, *, subject: str | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {issue_token(self.settings, TENANT, subject=subject)}"} if subject else {}
        async with self.gate:
            response = await self.http.request(method, path, headers=headers, **kwargs)
        if response.status_code != ok:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
        return response.json()

    async def until_all(self, paths: list[str], done: Callable[[dict], bool], what: str, within_s: float = 300) -> None:
        """Poll GET on each path until done(body) holds for all of them."""
        deadline, pending = time.monotonic() + within_s, set(paths)
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} {what} not done within {within_s:.0f} s")
            self.runtime.check_alive()
            answers = await asyncio.gather(*(self.http.get(path) for path in pending))  # 404: not projected yet
            pending -= {path for path, answer in zip(pending, answers, strict=True)
                        if answer.status_code == 200 and done(answer.json())}
            await asyncio.sleep(0.2)


def spread(units: int, keys: int) -> list[int]:
    """Units per key, as even as they go."""
    return [units // keys + (k < units % keys) for k in range(keys)]


async def conversations(api: Api, units: int, keys: int) -> None:
    result = await ingest_to_projection(api.runtime, api.token, units, keys, uuid.uuid4().hex[:8])
    if result.replied_s is None:
        raise RuntimeError(f"{result.sent} of {units} messages answered")


async def outbound_setup(api: Api, keys: int) -> None:
    prefs = {"timezone": "UTC", "quiet_hours": {"start": "00:00", "end": "00:00"}, "daily_limit": 10_000}
    await asyncio.gather(*(api.call("PUT", f"/v1/users/ob-{k}/preferences", 202,
                                    json={**prefs, "contact": f"3462{k:07d}"}) for k in range(keys)))


async def outbound(api: Api, units: int, keys: int) -> None:
    queued = await asyncio.gather(*(api.call("POST", "/v1/outbound", 202, json={
        "user_id": f"ob-{i % keys}", "agent_id": "bench", "message_data": {"type": "text", "text": f"update {i}"}})
        for i in range(units)))
    await api.until_all([f"/v1/outbound/messages/{q['message_id']}" for q in queued],
                        lambda body: body["status"] == "sent", "outbound messages sent")


def succeeded(body: dict) -> bool:
    if body["status"] in ("failed", "cancelled"):
        raise RuntimeError(f"execution {body['execution_id']} {body['status']}")
    return body["status"] == "succeeded"


async def steps(api: Api, units: int, keys: int) -> None:
    text = "The parcel is late and the customer asks where it is."
    started = await asyncio.gather(*(api.call("POST", "/v1/executions", 202, json={
        "execution_id": f"ex-{k}", "agent_id": "bench", "user_id": f"user-{k}",
        "steps": [{"step_id": f"s{j}", "intent": "summarize", "input": text} for j in range(n)]})
        for k, n in enumerate(spread(units, keys))))
    await api.until_all([f"/v1/executions/{s['execution_id']}" for s in started], succeeded, "executions")


async def learning_setup(api: Api, keys: int) -> None:
    await asyncio.gather(*(api.call("POST", "/v1/learning/intent.sync", 200, subject=f"ln-{k}", json=INTENT)
                           for k in range(keys)))


async def learning(api: Api, units: int, keys: int) -> None:
    async def learner(k: int, days: int) -> None:  # day.run answers once its plan is archived
        for d in range(days):
            plan = await api.call("POST", "/v1/learning/day.run", 200, subject=f"ln-{k}",
                                  json={"week": 1 + d // 7, "day": 1 + d % 7})
            if plan["degraded_mode"]:
                raise RuntimeError(f"learner ln-{k}: a degraded plan (fake agents not reached?)")
            await api.call("POST", "/v1/learning/day.done", 200, subject=f"ln-{k}",
                           json={"session_id": plan["session_id"], "completion_time_min": 30, "confidence": 7})

    await asyncio.gather(*(learner(k, n) for k, n in enumerate(spread(units, keys))))


async def workflow_setup(api: Api, keys: int) -> None:
    async def task(code: str) -> None:
        await api.call("POST", "/v1/tasks", 201, json={"task_code": code, "title": f"Task {code}"})
        await api.call("POST", f"/v1/tasks/{code}/start", 200, json={})
        for name in ARTIFACTS:
            await api.call("POST", f"/v1/tasks/{code}/artifacts", 202,
                           json={"name": name, "content_hash": "b" * 64, "size": 3})

    await asyncio.gather(*(task(f"TSK-{k + 1}") for k in range(keys)))


async def workflow(api: Api, units: int, keys: int) -> None:
    async def task(code: str, transitions: int) -> None:  # each answered once the fold's decision is projected
        for _ in range(transitions):
            await api.call("POST", f"/v1/tasks/{code}/phases/complete", 200, json={})

    await asyncio.gather(*(task(f"TSK-{k + 1}", n) for k, n in enumerate(spread(units, keys))))


@dataclass(frozen=True)
class Workload:
    domain: str
    unit: str
    drive: Callable[[Api, int, int], Awaitable[None]]
    setup: Callable[[Api, int], Awaitable[None]] | None = None
    model: bool = False  # on the runtime with the fake Anthropic


WORKLOADS = (
    Workload("conversations", "inbound message answered", conversations),
    Workload("outbound", "message queued and sent", outbound, outbound_setup),
    Workload("steps", "model step executed", steps, model=True),
    Workload("learning", "day run and completed", learning, learning_setup),
    Workload("workflow", "phase gate passed", workflow, workflow_setup),
)


async def log_ends(settings: Settings) -> Ends:
    """The end offset of every partition of the runtime's topics (its prefix, or its app id for the worker's)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, client_id="bench-records")
    await consumer.start()
    try:
        names = [t for t in await consumer.topics() if t.startswith((settings.topic_prefix, f"{settings.app_id}-"))]
        tps = await topic_partitions(consumer, names)
    finally:
        await consumer.stop()
    return await log_end_offsets(settings, tps)


async def settle(settings: Settings, within_s: float = 300) -> None:
    """Wait until the worker group and the projector have caught up on every domain topic."""
    deadline = time.monotonic() + within_s
    while lagging := {d.domain: (d.worker_lag, d.projector_lag) for d in (await collect_status(settings)).domains
                      if d.worker_lag or d.projector_lag}:
        if time.monotonic() > deadline:
            raise RuntimeError(f"still lagging (worker, projector) after {within_s:.0f} s: {lagging}")
        await asyncio.sleep(0.2)


async def event_types(settings: Settings, topic: str, before: Ends, after: Ends) -> Counter[str]:
    """The `type` of every record appended to topic between the two readings."""
    tps = [tp for tp in after if tp.topic == topic and after[tp] > before.get(tp, 0)]
    found: Counter[str] = Counter()
    if not tps:
        return found
    decoder = msgspec.json.Decoder(_Type)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, before.get(tp, 0))
        pending, deadline = set(tps), time.monotonic() + 60
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"records of {sorted(pending)} not read within 60 s")
            for tp, records in (await consumer.getmany(*pending, timeout_ms=1000)).items():
                found.update(decoder.decode(r.value).type for r in records if r.offset < after[tp])
                if records and records[-1].offset >= after[tp] - 1:
                    pending.discard(tp)
    finally:
        await consumer.stop()
    return found


@dataclass
class Row:
    workload: Workload
    units: int
    keys: int
    columns: dict[str, int]  # domain, changelog, ledger, other: records added
    other: Counter[str]  # records added per other topic (its name without the runtime's prefix)
    types: Counter[str]
    has_ledger: bool


async def measure(api: Api, workload: Workload, units: int, keys: int) -> Row:
    settings = api.settings
    if workload.setup:
        await workload.setup(api, keys)
    await settle(settings)
    before = await log_ends(settings)
    await workload.drive(api, units, keys)
    await settle(settings)
    after = await log_ends(settings)
    domain = next(d for d in load_domains(settings) if d.name == workload.domain)
    labels = {settings.topic(domain.name): "domain", changelog_topic(settings, domain.state_table): "changelog"}
    if domain.ledger_table:
        labels[changelog_topic(settings, domain.ledger_table)] = "ledger"
    columns = dict.fromkeys(("domain", "changelog", "ledger", "other"), 0)
    other: Counter[str] = Counter()
    for tp, end in after.items():
        added = end - before.get(tp, 0)
        columns[labels.get(tp.topic, "other")] += added
        if tp.topic not in labels and added:
            other[tp.topic.removeprefix(settings.topic_prefix).removeprefix(f"{settings.app_id}-")] += added
    types = await event_types(settings, settings.topic(domain.name), before, after)
    return Row(workload, units, keys, columns, other, types, domain.ledger_table is not None)


async def run_group(broker: EmbeddedBroker, postgres: EmbeddedPostgres, workloads: list[Workload], units: int,
                    keys: int, tag: str, tmp: Path, extra: dict[str, Any]) -> list[Row]:
    """One fresh runtime (its own topics, group and database), warmed up by one answered message; its rows."""
    settings = Settings(
        kafka_bootstrap_servers=broker.bootstrap_servers, broker_profile="embedded",
        database_url=postgres.fresh_database(f"records_{tag}"), app_id=f"bench-records-{tag}",
        topic_prefix=f"bench-records-{tag}.", tenants_file=ROOT / "examples" / "tenants.toml",
        data_dir=tmp / tag, api_port=0, log_level="warn", **extra)
    rows = []
    with Runtime(settings).start() as runtime:
        api = Api(runtime)
        try:
            with console.status(f"{tag}: warming up…"):
                await warm_up(runtime, api.token)
            for workload in workloads:
                with console.status(f"{tag}: {units} × {workload.unit} over {keys} keys…"):
                    started = time.perf_counter()
                    rows.append(await measure(api, workload, units, keys))
                console.print(f"[dim]{tag}: {workload.domain} measured in {time.perf_counter() - started:.1f} s; "
                              f"logs under {runtime.log_dir}[/dim]", highlight=False)
        finally:
            await api.http.aclose()
    return rows


def per_unit(counts: Counter[str], units: int) -> str:
    return ", ".join(f"{name} {n / units:.2f}" for name, n in counts.most_common()) or "none"


def print_rows(rows: list[Row], partitions: int) -> None:
    table = Table(title=f"Log records per unit of work (embedded Tansu, {partitions} partitions, 1 worker)")
    for col in ("domain", "unit", "units", "keys", "domain topic", "state changelog", "ledger changelog",
                "other topics", "total"):
        table.add_column(col, justify="left" if col in ("domain", "unit") else "right")
    for row in rows:
        c, n = row.columns, row.units
        ledger = f"{c['ledger'] / n:.2f}" if row.has_ledger else "-"
        table.add_row(row.workload.domain, row.workload.unit, str(n), str(row.keys), f"{c['domain'] / n:.2f}",
                      f"{c['changelog'] / n:.2f}", ledger, f"{c['other'] / n:.2f}", f"{sum(c.values()) / n:.2f}")
    console.print(table)
    for row in rows:
        console.print(f"{row.workload.domain}, {row.keys} keys: domain topic per unit: "
                      f"{per_unit(row.types, row.units)}; other topics per unit: {per_unit(row.other, row.units)}",
                      highlight=False)


async def main_async(args: argparse.Namespace, tmp: Path) -> list[Row]:
    chosen = [w for w in WORKLOADS if w.domain in args.domains.split(",")]
    run = uuid.uuid4().hex[:6]
    broker = EmbeddedBroker().start(tmp / "broker.log")
    postgres = EmbeddedPostgres(tmp / "pgdata").start()
    rows: list[Row] = []
    agents = VersionedAgents()
    try:
        with FakeAnthropic(reply="A short summary.") as fake:
            # The worker, a child process, reads its learning settings here: every agent asked at every run.
            os.environ.update({"BATON_LEARNING_AGENTS": agents.env, "BATON_LEARNING_FRESHNESS_S": "",
                               "BATON_LEARNING_DEFAULT_FRESHNESS_S": "0"})
            model = {"anthropic_api_key": SecretStr("sk-bench"), "anthropic_base_url": fake.base_url}
            for keys in (int(k) for k in args.keys.split(",")):
                for with_model in (False, True):
                    group = [w for w in chosen if w.model == with_model]
                    if group:
                        rows += await run_group(broker, postgres, group, args.units, keys,
                                                f"{run}-k{keys}{'m' if with_model else ''}", tmp,
                                                model if with_model else {})
    finally:
        agents.close()
        postgres.stop()
        broker.stop()
    order = {w.domain: i for i, w in enumerate(WORKLOADS)}
    return sorted(rows, key=lambda r: (order[r.workload.domain], r.keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=200, help="units of work per domain and key count")
    parser.add_argument("--keys", default="50,200", help="comma-separated key counts, one row each")
    parser.add_argument("--domains", default=",".join(w.domain for w in WORKLOADS))
    args = parser.parse_args()
    if any(args.units > PHASES * int(k) for k in args.keys.split(",")) and "workflow" in args.domains:
        parser.error(f"workflow: a task has {PHASES} phases, so --units must be at most {PHASES} × each --keys")
    tmp = Path(tempfile.mkdtemp(prefix="bench-records-"))
    try:
        rows = asyncio.run(main_async(args, tmp))
    except BaseException:
        console.print(f"logs kept under {tmp}", highlight=False)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    print_rows(rows, Settings().topic_partitions)


if __name__ == "__main__":
    main()
