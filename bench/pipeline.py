"""End-to-end figures on the embedded broker and on local Apache Kafka, in one run, beside the Redis-lock peer.

    .venv/bin/python -m bench.pipeline [--brokers embedded,kafka] [--events N] [--rate 500 | --rates 100,500]
        [--seconds 20] [--workers 1,2] [--latency-workers N] [--peer/--no-peer] [--peer-runs 1]
        [--profile py-spy|cprofile] [--skip ingest,latency,fold,baselines,peer]

Parts 1-4 run once per broker of --brokers (default both), one broker after the other, with the same workload
and the same embedded PostgreSQL: `embedded` is the Tansu broker (streams/embedded.py); `kafka` is one node of
local Apache Kafka (streams/local_kafka.py) with Kafka's own server heap and GC flags (SERVER_JVM), Baton on it
with broker_profile "kafka" and env "development" (the dev secrets, as `baton dev --broker kafka`). Where Kafka
cannot start (no java or mvn, Maven Central unreachable…) one line says the kafka broker was skipped and why,
and the rest goes on.

1. ingest → projection: N conversation.message.received events through POST /v1/events (batches of
   500) until sum(messages_received) = N in PostgreSQL, and until sum(replies_sent) = N; once per worker
   count of --workers (default 1), each on a fresh runtime (`Runtime(settings, workers=count)`: its own
   app id, topic prefix and database, the same broker and PostgreSQL);
2. latency: signed WhatsApp webhook deliveries sent open-loop at each rate of --rates (default --rate) for
   --seconds, each timed from its scheduled send time until it is visible: in the read model (one SQL
   probe for every delivery) and through GET /v1/conversations/{contact} (a sample, with a bounded GET
   budget); on the runtime with --latency-workers workers (default the first of --workers);
3. the real worker's fold rate (fold + effects agents, bench/fold_worker.py) over N pre-loaded records;
4. the naive Faust agent and the bare stream iteration (bench/faust_baselines.py) over the same records;
5. the Redis-lock peer (../shared/peers/redis_locks_peer.py, run where it lies, never copied) over the same
   N messages and contacts as (1), once, after Baton's services have stopped, when Redis (127.0.0.1:6379) and
   PostgreSQL (127.0.0.1:5432, database `test`, user postgres) answer (../shared/peers/services.sh starts
   them); otherwise one line says it was skipped. Its Python is a venv made once at .bench-peer-venv (redis[hiredis], psycopg[binary], psutil,
   uvloop, orjson from PyPI). --no-peer or --skip peer leaves it out.

Everything Baton runs is on the brokers and the one embedded PostgreSQL started here; every request goes to
127.0.0.1 and every loop is bounded in count and time. The worker(s) and API are the real `baton` roles; the
projector runs as bench/projector_probe.py (the real projector, batches timed).
Also printed, per broker: log records per inbound message, CPU per component (from /proc; worker-1..worker-N
each by pid, children included; the broker as "broker (tansu)" or "broker (kafka)", the JVM by pid), with
--profile py-spy the worker(s), projector and API sampled during (1) and the fold worker during (3); at the
end one table of Baton (one row per broker and worker count) against the peer: answered messages/s, CPU ms
per answered message (all of each system's processes), log records and broker CPU per answered message,
Baton ÷ peer; where the CPU goes per component; and issue 5's aims beside the figures, per broker.

Experiments (not the defaults): BATON_FETCH_WAIT_MS and other settings in the environment,
BENCH_GC=default (the fold worker in (3) without the worker's GC tuning),
--baseline-loglevel error (Faust's spinner puts the root logger at DEBUG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from schemas import Envelope, encode, source_event_id
from schemas.conversations import MessageReceived, conversation_stream_id
from streams.auth import issue_token
from streams.demo import message_delivery
from streams.embedded import EmbeddedBroker, EmbeddedPostgres, child_env, free_port
from streams.local_kafka import KAFKA_VERSION, SERVER_JVM, LocalKafka, LocalKafkaError
from streams.publisher import Publisher, producer_options
from streams.runtime import Runtime
from streams.settings import Settings, settings_env
from streams.tenants import load_tenants
from streams.topics import changelog_topic, ensure_topics, log_end_offsets, topic_partitions
from streams.whatsapp import sign

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ("hola, ¿horario?", "¿cuánto cuesta el té matcha?", "no funciona mi cafetera")
TENANT = "acme"
console = Console(width=150)


# ---------------------------------------------------------------- brokers

BROKERS = {"embedded": "Tansu", "kafka": "Kafka"}  # --brokers (the settings' broker_profile) → name in the tables


@dataclass
class BenchBroker:
    """One broker the per-broker parts (1-4) run on: the embedded Tansu, or one node of local Apache Kafka with
    Kafka's own server JVM flags (SERVER_JVM)."""

    profile: str  # "embedded" or "kafka", the settings' broker_profile
    bootstrap_servers: str
    pids: set[int]  # the processes whose CPU is the broker's
    stop: Callable[[], None]

    @property
    def name(self) -> str:
        return BROKERS[self.profile]

    @property
    def title(self) -> str:
        return "embedded Tansu" if self.profile == "embedded" else f"Apache Kafka {KAFKA_VERSION} (1 node, SERVER_JVM)"

    @property
    def component(self) -> str:
        """Its CpuMeter group."""
        return broker_component(self.name)

    def settings(self) -> dict[str, object]:
        """Baton's settings for this broker. Any broker but the embedded one counts as production, which refuses
        the development secrets: on Kafka env is development, as `baton dev --broker kafka` runs."""
        if self.profile == "embedded":
            return {"kafka_bootstrap_servers": self.bootstrap_servers, "broker_profile": "embedded"}
        return {"kafka_bootstrap_servers": self.bootstrap_servers, "broker_profile": "kafka", "env": "development"}

    @classmethod
    def start(cls, profile: str, directory: Path) -> BenchBroker:
        """Start it with its log (Tansu) or its nodes' directory (Kafka) under directory; LocalKafkaError when
        local Apache Kafka cannot run here (java or mvn missing, registry unreachable…)."""
        if profile == "embedded":
            tansu = EmbeddedBroker().start(directory / "broker.log")
            return cls(profile, tansu.bootstrap_servers, {tansu.process.pid}, tansu.stop)
        kafka = LocalKafka(directory / "kafka", jvm_options=SERVER_JVM).start()
        return cls(profile, kafka.bootstrap_servers, set(kafka.pids.values()), kafka.stop)


def broker_component(name: str) -> str:
    """The CPU component of a broker: "broker (tansu)" or "broker (kafka)"."""
    return f"broker ({name.lower()})"


# ---------------------------------------------------------------- CPU accounting (/proc)

CLK = os.sysconf("SC_CLK_TCK")


def _proc_cpu() -> dict[int, tuple[str, int, float]]:
    """pid -> (comm, ppid, user+system CPU seconds) for every process."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        found[int(entry)] = (comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK)
    return found


def _machine_busy() -> float:
    """CPU seconds the whole machine has spent not idle since boot."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLK  # minus idle and iowait


class CpuMeter:
    """CPU seconds per component of this bench between start() and stop(), and the rest of the machine's.

    Only this bench's processes count: its own descendants (children by role), its broker (the Tansu process
    or the Kafka JVM(s), named by broker.component), and its PostgreSQL (the postmaster daemonizes, so it is
    found by pid with its children). Processes that exit before stop() are not counted.
    """

    def __init__(self, roles: dict[int, str], broker: BenchBroker, postmaster_pid: int) -> None:
        self.roles, self.broker, self.postmaster_pid = roles, broker, postmaster_pid
        self.before: dict[int, tuple[str, int, float]] = {}
        self.wall = self.busy = 0.0

    def group(self, pid: int, procs: dict[int, tuple[str, int, float]]) -> str | None:
        comm, ppid, _ = procs[pid]
        if pid == self.postmaster_pid or ppid == self.postmaster_pid:
            return "postgresql"
        ancestors, cursor = [], pid
        while cursor in procs and cursor not in (0, 1):
            ancestors.append(cursor)
            if cursor == os.getpid():
                break
            cursor = procs[cursor][1]
        if cursor != os.getpid():
            return None
        if pid == os.getpid():
            return "bench (load + probes)"
        if pid in self.broker.pids:
            return self.broker.component
        for ancestor in ancestors:
            if ancestor in self.roles:
                return self.roles[ancestor]
        if comm.startswith("py-spy"):
            return "py-spy"
        return "other child"

    def start(self) -> CpuMeter:
        self.before, self.wall, self.busy = _proc_cpu(), time.perf_counter(), _machine_busy()
        return self

    def stop(self) -> tuple[float, dict[str, float]]:
        after, wall, busy = _proc_cpu(), time.perf_counter() - self.wall, _machine_busy() - self.busy
        used: dict[str, float] = defaultdict(float)
        for pid, (comm, _, cpu) in after.items():
            name = self.group(pid, after)
            if name:
                before = self.before.get(pid)
                used[name] += cpu - (before[2] if before and before[0] == comm else 0.0)
        used["everything else on the machine"] = max(0.0, busy - sum(used.values()))
        return wall, dict(used)


# ---------------------------------------------------------------- helpers

def code_version() -> str:
    """HEAD's short hash, and the product files changed in the work tree (measured as they are)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "agents", "streams", "projections", "schemas"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10, check=False).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted {', '.join(changed)}" if changed else "")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def rate(n: float, seconds: float) -> str:
    return f"{n / seconds:,.0f}" if seconds > 0 else "-"


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


async def totals(conn: psycopg.AsyncConnection, prefix: str) -> tuple[int, int]:
    cur = await conn.execute(
        "SELECT coalesce(sum(messages_received), 0), coalesce(sum(replies_sent), 0)"
        " FROM conversation_sessions WHERE tenant_id = %s AND contact LIKE %s", (TENANT, prefix + "%"))
    received, sent = await cur.fetchone()
    return int(received), int(sent)


# ---------------------------------------------------------------- 0. warm-up

async def warm_up(runtime: Runtime, token: str, within_s: float = 90.0) -> float:
    """One webhook message answered end to end: worker joined, projector and API serving."""
    tenant = load_tenants(runtime.settings.tenants_file).by_id[TENANT]
    start = time.perf_counter()
    body = json.dumps(message_delivery(tenant, "34690000000", "Warm", f"wamid.warm.{uuid.uuid4().hex}",
                                       "hola", int(time.time()))).encode()
    secret = runtime.settings.whatsapp_app_secret.get_secret_value()
    async with httpx.AsyncClient(base_url=runtime.api_url, timeout=10,
                                 headers={"Authorization": f"Bearer {token}"}) as client:
        response = await client.post("/v1/webhooks/whatsapp", content=body, headers={
            "Content-Type": "application/json", "X-Hub-Signature-256": sign(secret, body)})
        response.raise_for_status()
        while time.perf_counter() - start < within_s:
            runtime.check_alive()
            found = await client.get("/v1/conversations/34690000000")
            if found.status_code == 200 and found.json()["replies_sent"] >= 1:
                return time.perf_counter() - start
            await asyncio.sleep(0.1)
    raise RuntimeError(f"warm-up message not answered within {within_s:.0f} s; see {runtime.log_dir}")


# ---------------------------------------------------------------- 1. ingest → projection

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
                               batch: int = 500, concurrency: int = 4) -> IngestResult:
    prefix = "3461"
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


# ---------------------------------------------------------------- 2. latency, open loop

@dataclass
class Delivery:
    index: int
    contact: str
    nth: int  # this is the contact's nth message of the run
    event_id: str
    body: bytes
    signature: str
    sampled: bool
    scheduled: float = 0.0
    answered: float | None = None
    status: int = 0
    visible_sql: float | None = None
    replied_sql: float | None = None
    visible_api: float | None = None
    posted: asyncio.Event | None = None


@dataclass
class LatencyResult:
    deliveries: list[Delivery]
    rate: int
    seconds: float
    send_s: float
    late: int
    contacts: int
    sample_every: int
    gets: int
    get_budget: int
    sql_probes: int
    drain_s: float
    get_errors: int = 0
    max_inflight: int = 0
    workers: int = 1
    broker: str = ""


class Limiter:
    """At most `per_s` starts per second, spread evenly."""

    def __init__(self, per_s: float) -> None:
        self.interval, self.next = 1.0 / per_s, 0.0

    async def wait(self) -> None:
        now = time.perf_counter()
        slot = max(now, self.next)
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


async def latency(runtime: Runtime, token: str, per_s: int, seconds: float, contacts: int, run: str,
                  get_budget: int = 200, sampled_per_s: int = 50, drain_s: float = 20.0,
                  max_inflight: int = 64, prefix: str = "3469", workers: int = 1, broker: str = "") -> LatencyResult:
    """Open loop: delivery i is due at start + i/per_s whatever happened to earlier ones, and its latency
    counts from then. At most max_inflight POSTs are open at once; a due delivery waits its turn in a FIFO
    (that wait is part of its latency). Everything stops drain_s after the last delivery was due.
    Contacts are prefix + 7 digits: each run in one database needs its own prefix (visibility counts a
    contact's messages)."""
    settings = runtime.settings
    tenant = load_tenants(settings.tenants_file).by_id[TENANT]
    secret = settings.whatsapp_app_secret.get_secret_value()
    total = int(per_s * seconds)
    sample_every = max(1, per_s // sampled_per_s)
    base_ts = int(time.time())
    deliveries = []
    for i in range(total):
        contact, wamid = f"{prefix}{1 + i % contacts:07d}", f"wamid.{run}.lat.{i}"
        body = json.dumps(message_delivery(tenant, contact, f"C{i % contacts}", wamid, TEXTS[i % 3],
                                           base_ts + i // per_s)).encode()
        deliveries.append(Delivery(
            index=i, contact=contact, nth=i // contacts + 1,
            event_id=str(source_event_id(TENANT, "whatsapp", wamid)), body=body, signature=sign(secret, body),
            sampled=i % sample_every == 0, posted=asyncio.Event(),
        ))

    counters: Counter = Counter()
    answered: list[Delivery] = []
    # One single-connection client per open POST: httpcore scans every connection of a pool on each
    # request (with a getpeername per connection), which made one 64-connection pool the bottleneck.
    free: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()
    posters = [httpx.AsyncClient(base_url=runtime.api_url, timeout=30, limits=httpx.Limits(max_connections=1))
               for _ in range(max_inflight)]
    for client in posters:
        free.put_nowait(client)
    start = time.perf_counter() + 0.05
    hard_stop = start + seconds + drain_s

    async with contextlib.AsyncExitStack() as stack, \
            httpx.AsyncClient(base_url=runtime.api_url, timeout=30, limits=httpx.Limits(max_connections=8),
                              headers={"Authorization": f"Bearer {token}"}) as getter, \
            await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        for client in posters:
            await stack.enter_async_context(client)

        async def post(d: Delivery) -> None:
            client = await free.get()
            try:
                response = await client.post("/v1/webhooks/whatsapp", content=d.body, headers={
                    "Content-Type": "application/json", "X-Hub-Signature-256": d.signature})
                d.status = response.status_code
            except httpx.HTTPError:
                d.status = -1
            finally:
                free.put_nowait(client)
            d.answered = time.perf_counter()
            answered.append(d)
            d.posted.set()

        limiter = Limiter(get_budget)
        get_gate = asyncio.Semaphore(8)

        async def probe_api(d: Delivery) -> None:
            await d.posted.wait()
            if d.status != 200:
                return
            while time.perf_counter() < hard_stop:
                await limiter.wait()
                try:
                    async with get_gate:
                        response = await getter.get(f"/v1/conversations/{d.contact}")
                except httpx.HTTPError:
                    counters["get_errors"] += 1
                    continue
                counters["gets"] += 1
                if response.status_code == 200 and any(
                        t["event_id"] == d.event_id for t in response.json()["dialogue"]):
                    d.visible_api = time.perf_counter()
                    return
                await asyncio.sleep(0.01)

        async def probe_sql() -> None:
            """One query per round over every contact with an answered delivery not yet visible and replied."""
            waiting: dict[str, list[Delivery]] = defaultdict(list)
            taken = 0
            while time.perf_counter() < hard_stop:
                for d in answered[taken:]:
                    if d.status == 200:
                        waiting[d.contact].append(d)
                taken = len(answered)
                if not waiting:
                    if taken == len(deliveries):
                        return
                    await asyncio.sleep(0.02)
                    continue
                cur = await conn.execute(
                    "SELECT contact, sum(messages_received), sum(replies_sent) FROM conversation_sessions"
                    " WHERE tenant_id = %s AND contact = ANY(%s) GROUP BY contact", (TENANT, list(waiting)))
                rows = await cur.fetchall()
                now = time.perf_counter()
                counters["sql"] += 1
                for contact, received, sent in rows:
                    left = []
                    for d in waiting[contact]:
                        if d.visible_sql is None and received >= d.nth:
                            d.visible_sql = now
                        if d.replied_sql is None and sent >= d.nth:
                            d.replied_sql = now
                        if d.replied_sql is None:
                            left.append(d)
                    if left:
                        waiting[contact] = left
                    else:
                        del waiting[contact]
                await asyncio.sleep(0.02)

        sql_task = asyncio.create_task(probe_sql())
        api_tasks = [asyncio.create_task(probe_api(d)) for d in deliveries if d.sampled]
        posts = []
        late = 0
        for d in deliveries:
            d.scheduled = start + d.index / per_s
            delay = d.scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.01:
                late += 1
            posts.append(asyncio.create_task(post(d)))
        send_s = time.perf_counter() - start
        drain_start = time.perf_counter()
        tasks = [*posts, sql_task, *api_tasks]
        _, pending = await asyncio.wait(tasks, timeout=max(0.1, hard_stop - time.perf_counter()))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        drained = time.perf_counter() - drain_start

    return LatencyResult(deliveries, per_s, seconds, send_s, late, contacts, sample_every, counters["gets"],
                         get_budget, counters["sql"], drained, counters["get_errors"], max_inflight, workers,
                         broker)


# ---------------------------------------------------------------- 3 + 4. fold rate and baselines

async def log_records(settings: Settings) -> dict[str, int]:
    """Records on the domain topic and the two table changelogs (exact end offsets, batches or not)."""
    names = {"domain": settings.topic("conversations"), "sessions changelog": changelog_topic(settings, "sessions"),
             "effects ledger changelog": changelog_topic(settings, "conversations-ledger")}
    tps = {label: [TopicPartition(topic, p) for p in range(settings.topic_partitions)] for label, topic in names.items()}
    ends = await log_end_offsets(settings, [tp for found in tps.values() for tp in found])
    return {label: sum(ends[tp] for tp in found) for label, found in tps.items()}


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


def amplification(before: dict[str, int], after: dict[str, int], messages: int) -> str:
    parts = [f"{label} {(after[label] - before.get(label, 0)) / messages:.1f}" for label in after]
    return f"log records per inbound message: {', '.join(parts)}; total {records_added(before, after) / messages:.1f}"


def records_added(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(after[label] - before.get(label, 0) for label in after)


async def group_members(settings: Settings) -> tuple[str, int] | None:
    """State and member count of the workers' consumer group (its id is the app id); None if not described."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        for response in await admin.describe_consumer_groups([settings.app_id]):
            for group in response.groups:  # (error_code, group_id, state, protocol_type, protocol, members, ...)
                if group[1] == settings.app_id:
                    return group[2], len(group[5])
        return None
    except Exception:  # noqa: BLE001 - a broker without DescribeGroups: the bench goes on without the check
        return None
    finally:
        await admin.close()


async def wait_for_group(settings: Settings, workers: int, within_s: float = 30.0) -> str:
    """Wait (bounded) until the group is Stable with one member per worker, so (1) is not cut by a rebalance."""
    start = time.perf_counter()
    found = None
    while time.perf_counter() - start < within_s:
        found = await group_members(settings)
        if found is None:
            return "consumer group not described by the broker; not checked"
        if found == ("Stable", workers):
            return f"consumer group Stable with {workers} member(s) after {time.perf_counter() - start:.1f} s"
        await asyncio.sleep(0.5)
    return f"consumer group still {found} after {within_s:.0f} s (expected Stable with {workers} member(s))"


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


async def read_json_lines(process: asyncio.subprocess.Process, until: str | None, timeout: float,
                          on_line=None) -> list[dict]:
    """JSON lines from a child's stdout until one has phase == until (or the child ends)."""
    lines: list[dict] = []
    deadline = time.perf_counter() + timeout
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise TimeoutError(f"child did not report {until!r} within {timeout:.0f} s (got {lines})")
        raw = await asyncio.wait_for(process.stdout.readline(), timeout=left)
        if not raw:
            if until is None:
                return lines
            raise RuntimeError(f"child exited before reporting {until!r} (got {lines}); see its log")
        text = raw.decode(errors="replace")
        at = max(text.find('{"phase"'), text.find('{"mode"'))
        if at < 0:
            continue  # the worker's own output (structlog lines, cursor escapes)
        line = json.loads(text[at:].strip())
        lines.append(line)
        if on_line:
            await on_line(line)
        if until is None or line.get("phase", line.get("mode")) == until:
            return lines


def spawn(args: list[str], env: dict[str, str] | None, log: Path | None) -> subprocess.Popen:
    """A child process writing to log (appended), or to nowhere."""
    if log is None:
        return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, cwd=ROOT)
    with log.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=ROOT)


def open_log(log: Path):
    return log.open("ab")


async def run_child(args: list[str], env: dict[str, str], log: Path, until: str | None, timeout: float,
                    on_line=None) -> list[dict]:
    with open_log(log) as err:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=err,
            stdin=asyncio.subprocess.DEVNULL, cwd=ROOT)
        try:
            return await read_json_lines(process, until, timeout, on_line)
        finally:
            if process.returncode is None:
                try:
                    await asyncio.wait_for(process.wait(), 5)
                except TimeoutError:
                    process.kill()
                    await process.wait()


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


# ---------------------------------------------------------------- 5. the Redis-lock peer

PEER = ROOT.parent / "shared" / "peers" / "redis_locks_peer.py"  # run where it lies, never copied
PEER_VENV = ROOT / ".bench-peer-venv"
PEER_PACKAGES = ("redis[hiredis]", "psycopg[binary]", "psutil", "uvloop", "orjson")
PEER_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
PEER_NOT_OURS = ("postgres (others' backends)",)  # in the peer's CPU report, but other clients' work


def peer_unavailable() -> str | None:
    """Why the peer cannot run here (its script, Redis or PostgreSQL missing), or None when it can."""
    if not PEER.exists():
        return f"{PEER} not found"
    for name, port in (("Redis", 6379), ("PostgreSQL", 5432)):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
                if name == "Redis":
                    sock.settimeout(1.0)
                    sock.sendall(b"PING\r\n")
                    answer = sock.recv(64)
                    if not answer.startswith(b"+PONG"):
                        return f"Redis at 127.0.0.1:6379 answered {answer[:40]!r} to PING"
        except OSError as exc:
            return f"{name} at 127.0.0.1:{port} does not answer ({exc})"
    try:
        psycopg.connect(PEER_DSN, connect_timeout=3).close()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()
        return f"PostgreSQL {PEER_DSN!r} refused: {first[0] if first else type(exc).__name__}"
    return None


def peer_python(log: Path) -> tuple[Path | None, str]:
    """The peer venv's Python, made once and then reused, and what was done; (None, why) on failure."""
    python = PEER_VENV / "bin" / "python"
    check = [str(python), "-c", "import redis, hiredis, psycopg, psutil, uvloop, orjson"]

    def usable() -> bool:
        return python.exists() and subprocess.run(check, capture_output=True, timeout=60, check=False).returncode == 0

    def tail() -> str:
        text = log.read_text(errors="replace").strip() if log.exists() else ""
        return text[-300:].replace("\n", " | ")

    try:
        if usable():
            return python, f"peer venv {PEER_VENV} (cached)"
        with log.open("ab") as out:
            for step in ([sys.executable, "-m", "venv", str(PEER_VENV)],
                         [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          *PEER_PACKAGES]):
                done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      timeout=600, check=False)
                if done.returncode != 0:
                    return None, f"`{' '.join(step[1:4])} …` exited with {done.returncode}: {tail()}"
        (PEER_VENV / ".gitignore").write_text("*\n")  # never part of the repository (as venv writes from 3.13)
        if usable():
            return python, f"peer venv {PEER_VENV} created ({' '.join(PEER_PACKAGES)})"
        return None, f"{PEER_VENV} still cannot import the peer's packages: {tail()}"
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"could not prepare {PEER_VENV}: {exc}"


@dataclass
class PeerResult:
    runs: list[dict]
    exit_code: int | None
    seconds: float
    error: str | None = None

    @property
    def chosen(self) -> dict | None:
        """The run with the median answered messages/s (the upper one of two, as the peer's own summary)."""
        ordered = sorted(self.runs, key=lambda r: r["e2e_msgs_per_s"])
        return ordered[len(ordered) // 2] if ordered else None


def peer_cpu(result: dict) -> dict[str, float]:
    """The peer's own CPU seconds per component: driver, workers, Redis, its PostgreSQL backends and the
    server's background processes (not other clients' backends, which it reports too)."""
    return {k: v for k, v in result["cpu"].items() if not k.startswith("_") and k not in PEER_NOT_OURS}


async def run_peer(python: Path, messages: int, contacts: int, runs: int, log_dir: Path) -> PeerResult:
    """The peer over the same messages and contacts as (1); its RESULT lines; bounded in time (its whole
    process group is stopped at the bound)."""
    wait_s = max(60.0, messages / 50)
    timeout = 30 + runs * (wait_s + 120)
    args = [str(python), str(PEER), "--messages", str(messages), "--contacts", str(contacts), "--runs", str(runs),
            "--pg-dsn", PEER_DSN, "--timeout", f"{wait_s:.0f}", "--log-dir", str(log_dir / "peer")]
    results: list[dict] = []
    error = None
    start = time.perf_counter()
    with (log_dir / "peer.log").open("ab") as log:
        log.write(f"$ {' '.join(args)}\n".encode())
        process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=log, stdin=asyncio.subprocess.DEVNULL, cwd=ROOT,
            start_new_session=True)
        try:
            deadline = start + timeout
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise TimeoutError
                raw = await asyncio.wait_for(process.stdout.readline(), timeout=left)
                if not raw:
                    break
                log.write(raw)
                if raw.startswith(b"RESULT "):
                    try:
                        results.append(json.loads(raw[len(b"RESULT "):]))
                    except ValueError as exc:
                        error = f"unreadable RESULT line ({exc})"
            await asyncio.wait_for(process.wait(), timeout=max(1.0, deadline - time.perf_counter()))
        except TimeoutError:
            error = f"not done within {timeout:.0f} s; stopped"
        finally:
            # The peer and its workers form the process group this bench started; whatever is left of it
            # (a worker that outlived its driver would hold stdout open) is stopped.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
    return PeerResult(results, process.returncode, time.perf_counter() - start, error)


# ---------------------------------------------------------------- profiles

# Ordered: the first rule whose every marker occurs in a busy stack names the sample's category.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fold_batch: decode_state (table bytes → state)", ("fold_batch", "decode_state")),
    ("fold_batch: envelope decode", ("fold_batch", "codec.py")),
    ("fold_batch: pure fold and the rest", ("fold_batch",)),
    ("encode_state (state → table bytes)", ("encode_state",)),
    ("effects: Effects.run (rules, responders, sender)", ("Effects.run",)),
    ("effects: envelope decode of every record", ("_decode_effect",)),
    ("produce: aiokafka producer + sender", ("aiokafka/producer",)),
    ("produce: faust send path (Topic.send, changelog, FutureMessage)", ("faust/topics.py",)),
    ("produce: faust send path (Topic.send, changelog, FutureMessage)", ("faust/channels.py",)),
    ("produce: faust send path (Topic.send, changelog, FutureMessage)", ("send_changelog",)),
    ("produce: faust send path (Topic.send, changelog, FutureMessage)", ("faust/transport/producer.py",)),
    ("consume: fetch, deliver, ack (aiokafka/faust consumer, streams)", ("aiokafka/consumer",)),
    ("consume: fetch, deliver, ack (aiokafka/faust consumer, streams)", ("faust/transport/consumer.py",)),
    ("consume: fetch, deliver, ack (aiokafka/faust consumer, streams)", ("faust/transport/conductor.py",)),
    ("consume: fetch, deliver, ack (aiokafka/faust consumer, streams)", ("faust/streams.py",)),
    ("consume: fetch, deliver, ack (aiokafka/faust consumer, streams)", ("faust/agents/",)),
    ("network: aiokafka client/connection, asyncio transports", ("aiokafka/",)),
    ("network: aiokafka client/connection, asyncio transports", ("selector_events.py",)),
    ("table: faust table get/set, sensors", ("faust/tables/",)),
    ("table: faust table get/set, sensors", ("faust/sensors/",)),
    ("projector: psycopg", ("psycopg/",)),
    ("projector: row builders", ("writers/conversations.py",)),
    ("api: uvicorn/fastapi/starlette", ("uvicorn/",)),
    ("api: uvicorn/fastapi/starlette", ("starlette/",)),
    ("api: uvicorn/fastapi/starlette", ("fastapi/",)),
    ("logging", ("logging/",)),
    ("logging", ("structlog/",)),
    ("asyncio loop and everything else", ()),
)

IDLE = ("EpollSelector.select", "Condition.wait", "select (selectors", "_wait_for_tstate_lock")


def spy_top(path: Path, limit: int = 25) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]], Counter]:
    """py-spy raw (collapsed) stacks → busy samples, top self frames, top inclusive frames, categories."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    categories: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        frames = [f for f in stack.split(";") if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames or frames[-1].startswith(IDLE):
            continue  # waiting, not working: percentages are of busy samples
        total += samples
        joined = ";".join(frames)
        categories[next(name for name, markers in CATEGORIES if all(m in joined for m in markers))] += samples
        own[_short(frames[-1])] += samples
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += samples
    return total, own.most_common(limit), inclusive.most_common(limit), categories


def _short(frame: str) -> str:
    """'fn (/long/path/site-packages/pkg/mod.py:12)' → 'fn (pkg/mod.py:12)'."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", str(ROOT) + "/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where})" if where else name


def cprofile_top(path: Path, limit: int = 25) -> str:
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    return out.getvalue()


# ---------------------------------------------------------------- report

def latency_table(result: LatencyResult) -> Table:
    ok = [d for d in result.deliveries if d.status == 200]
    table = Table(title=f"2. Webhook → visible on {result.broker}, {workers_name(result.workers)}, open loop "
                        f"{result.rate}/s for {result.seconds:.0f} s "
                        f"({len(result.deliveries)} deliveries, {result.contacts} rotating contacts)")
    for col in ("measure", "n", "p50", "p95", "p99", "max", "missing"):
        table.add_column(col, justify="left" if col == "measure" else "right")

    def row(name: str, values: list[float], expected: int) -> None:
        if values:
            table.add_row(name, str(len(values)), ms(pct(values, .5)), ms(pct(values, .95)), ms(pct(values, .99)),
                          ms(max(values)), str(expected - len(values)))
        else:
            table.add_row(name, "0", "-", "-", "-", "-", str(expected))

    row("POST /v1/webhooks/whatsapp answered 200", [d.answered - d.scheduled for d in ok], len(result.deliveries))
    row("inbound turn in read model (SQL, all)", [d.visible_sql - d.scheduled for d in ok if d.visible_sql],
        len(ok))
    sampled = [d for d in ok if d.sampled]
    row(f"inbound turn via GET /v1/conversations/{{contact}} (1 in {result.sample_every})",
        [d.visible_api - d.scheduled for d in sampled if d.visible_api], len(sampled))
    row("reply sent in read model (SQL, all)", [d.replied_sql - d.scheduled for d in ok if d.replied_sql], len(ok))
    return table


def fold_table(rates: FoldRates, fold_n: int, partitions: int) -> Table:
    """(3) and (4) on one broker: the Baton worker's fold rate against the two Faust baselines."""
    fold, naive, bare = rates.fold, rates.naive, rates.bare
    table = Table(title=f"3 + 4. Fold rate on {rates.broker} over {fold_n:,} pre-loaded records, "
                        f"{partitions} partitions")
    for col in ("consumer", "records", "seconds", "events/s", "÷ naive", "÷ bare", "note"):
        table.add_column(col, justify="left" if col in ("consumer", "note") else "right")
    base_naive = naive["events_per_s"] if naive else None
    base_bare = bare["events_per_s"] if bare else None

    def ratio(value: float, against: float | None) -> str:
        return f"{value / against:.2f}×" if against else "-"

    if fold:
        pre, whole = fold.get("preloaded"), fold.get("all")
        if pre:
            table.add_row("Baton worker: conversations.fold (pre-loaded records)", f"{pre['timed_events']:,}",
                          f"{pre['seconds']:.2f}", f"{pre['events_per_s']:,}", ratio(pre["events_per_s"], base_naive),
                          ratio(pre["events_per_s"], base_bare),
                          f"{pre['batches']} batches, mean {pre['mean_batch']}; in fold_batch {pre['fold_batch_s']} s; "
                          f"worker CPU {pre['cpu_s'] / pre['seconds']:.2f} cores; effects agent running")
        if whole:
            table.add_row("Baton worker: everything folded (incl. emitted)", f"{whole['timed_events']:,}",
                          f"{whole['seconds']:.2f}", f"{whole['events_per_s']:,}",
                          ratio(whole["events_per_s"], base_naive), ratio(whole["events_per_s"], base_bare),
                          f"{whole['batches']} batches, mean {whole['mean_batch']}; in fold_batch {whole['fold_batch_s']} s; "
                          f"worker CPU {whole['cpu_s'] / whole['seconds']:.2f} cores")
    if naive:
        table.add_row(escape("naive Faust agent (table[key] += 1)"), f"{naive['events']:,}", f"{naive['seconds']:.2f}",
                      f"{naive['events_per_s']:,}", "1.00×", ratio(naive["events_per_s"], base_bare), "")
    if bare:
        table.add_row("bare Faust stream iteration", f"{bare['events']:,}", f"{bare['seconds']:.2f}",
                      f"{bare['events_per_s']:,}", ratio(bare["events_per_s"], base_naive), "1.00×", "")
    return table


def latency_trend(result: LatencyResult, windows: int = 4) -> str:
    """p50 of the SQL visibility latency per window of send time: flat when sustained, rising when not."""
    ok = [d for d in result.deliveries if d.status == 200]
    if not ok:
        return ""
    start, span = ok[0].scheduled, result.seconds / windows
    parts = []
    for w in range(windows):
        chunk = [d for d in ok if start + w * span <= d.scheduled < start + (w + 1) * span]
        seen = [d.visible_sql - d.scheduled for d in chunk if d.visible_sql]
        parts.append(f"{w * span:.0f}–{(w + 1) * span:.0f} s: "
                     + (f"p50 {ms(pct(seen, .5))}" if seen else "none") + f" ({len(chunk) - len(seen)} missing)")
    return "inbound-turn latency by send time: " + "; ".join(parts)


def int_list(text: str, name: str, parser: argparse.ArgumentParser, most: int) -> list[int]:
    """'1,2' → [1, 2]: positive, without repeats, at most `most` of them."""
    try:
        values = list(dict.fromkeys(int(v) for v in text.split(",") if v.strip()))
    except ValueError:
        parser.error(f"{name}: comma-separated whole numbers, got {text!r}")
    if not values or any(v < 1 for v in values) or len(values) > most:
        parser.error(f"{name}: 1 to {most} positive numbers, got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5_000, help="events for ingest → projection (1) and the peer (5)")
    parser.add_argument("--contacts", type=int, default=0, help="contacts for (1), (3) and (5); default events / 5")
    parser.add_argument("--fold-events", type=int, default=0, help="pre-loaded records for (3) and (4); default --events")
    parser.add_argument("--workers", default="1",
                        help="comma-separated worker counts: (1) runs once per count on a fresh runtime, e.g. 1,2")
    parser.add_argument("--rate", type=int, default=500, help="webhook deliveries per second for (2)")
    parser.add_argument("--rates", default="",
                        help="comma-separated rates: (2) runs once per rate, e.g. 100,500; default --rate")
    parser.add_argument("--latency-workers", type=int, default=0,
                        help="worker count of the runtime (2) runs on, one of --workers; default the first")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each open-loop run (2)")
    parser.add_argument("--latency-contacts", type=int, default=2000, help="rotating contacts for (2)")
    parser.add_argument("--drain", type=float, default=20.0, help="seconds (2) waits after the last delivery is due")
    parser.add_argument("--max-inflight", type=int, default=64, help="most open webhook POSTs in (2)")
    parser.add_argument("--get-budget", type=int, default=200, help="most GET /v1/conversations per second in (2)")
    parser.add_argument("--baseline-loglevel", default="info",
                        help="Faust log level of the baselines; info as the worker (error: root logger at DEBUG)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions per topic (Baton's default)")
    parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True,
                        help="run the Redis-lock peer (5) when Redis and PostgreSQL answer on 127.0.0.1")
    parser.add_argument("--peer-runs", type=int, default=1, help="runs of the peer; the median by msgs/s is compared")
    parser.add_argument("--profile", choices=("none", "py-spy", "cprofile"), default="none",
                        help="profile the fold worker child in (3); py-spy also samples worker/projector/api in (1)")
    parser.add_argument("--brokers", default="embedded,kafka",
                        help="comma-separated brokers (1)-(4) run on, one after the other: embedded (Tansu), kafka "
                             "(local Apache Kafka; skipped with one line where java or mvn is missing)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: ingest,latency,fold,baselines,peer")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, profiles)")
    args = parser.parse_args()
    args.worker_counts = int_list(args.workers, "--workers", parser, 4)
    args.broker_list = list(dict.fromkeys(b.strip() for b in args.brokers.split(",") if b.strip()))
    if not args.broker_list or not set(args.broker_list) <= set(BROKERS):
        parser.error(f"--brokers: one or more of {','.join(BROKERS)}, got {args.brokers!r}")
    args.rate_list = int_list(args.rates, "--rates", parser, 6) if args.rates else [args.rate]
    args.latency_workers = args.latency_workers or args.worker_counts[0]
    if args.latency_workers not in args.worker_counts:
        parser.error(f"--latency-workers {args.latency_workers} is not one of --workers {args.workers}")
    if args.peer_runs < 1:
        parser.error("--peer-runs: at least 1")
    asyncio.run(run(args))


@dataclass
class BatonRun:
    """(1) on one runtime: its broker, worker count, result, CPU per component and log records it added."""

    broker: str  # BROKERS' name: Tansu or Kafka
    workers: int
    ingest: IngestResult
    cpu: tuple[float, dict[str, float]]
    records: int

    @property
    def name(self) -> str:
        return f"{self.broker}, {workers_name(self.workers)}"


@dataclass
class FoldRates:
    """(3) and (4) on one broker: the fold worker's reports and the two baselines' (None where skipped)."""

    broker: str
    fold: dict | None = None
    naive: dict | None = None
    bare: dict | None = None


NOT_BATON = ("everything else on the machine", "py-spy")  # CpuMeter groups that are not Baton's processes


def baton_cpu(used: dict[str, float]) -> dict[str, float]:
    """Baton's own CPU seconds per component: broker, PostgreSQL, worker(s), projector, API, bench load."""
    return {k: v for k, v in used.items() if k not in NOT_BATON}


def workers_name(count: int) -> str:
    return f"{count} worker" + ("s" if count > 1 else "")


async def run(args: argparse.Namespace) -> None:
    n = args.events
    contacts = args.contacts or max(1, n // 5)
    fold_n = args.fold_events or n
    skip = set(filter(None, args.skip.split(",")))
    run_id = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="baton-bench-"))
    log_dir = tmp / "logs"
    log_dir.mkdir(parents=True)
    profile = None if args.profile == "none" else args.profile
    t_all = time.perf_counter()
    cpu_rows: dict[str, dict[str, tuple[float, dict[str, float]]]] = {}  # broker → phase → (wall, CPU per component)
    notes: list[str] = []
    console.print(f"[dim]bench run {run_id}: temp dir {tmp}; code {code_version()}[/dim]", highlight=False)

    # The peer's services and Python are checked first (nothing is measured yet); it runs at the end.
    python_for_peer: Path | None = None
    peer_skipped: str | None = None
    if not args.peer or "peer" in skip:
        peer_skipped = "not run (--no-peer or --skip peer)"
    elif reason := peer_unavailable():
        peer_skipped = f"skipped: {reason}"
        console.print(escape(f"Redis-lock peer comparison skipped: {reason}."), highlight=False)
    else:
        with console.status("preparing the Redis-lock peer's Python…"):
            python_for_peer, how = peer_python(log_dir / "peer-venv.log")
        if python_for_peer is None:
            peer_skipped = f"skipped: {how}"
            console.print(escape(f"Redis-lock peer comparison skipped: {how}."), highlight=False)
        else:
            console.print(f"[dim]{escape(how)}[/dim]", highlight=False)

    postgres = EmbeddedPostgres(tmp / "pgdata").start()
    baton_runs: list[BatonRun] = []
    lats: list[LatencyResult] = []
    projector_batches: dict[str, list[list[float]]] = {}
    spy_roles: list[tuple[str, Path]] = []
    folds: list[FoldRates] = []
    try:
        postmaster = int((tmp / "pgdata" / "postmaster.pid").read_text().split()[0])
        for broker_profile in args.broker_list:
            broker_logs = log_dir / broker_profile
            broker_logs.mkdir()
            try:
                with console.status(f"starting the {BROKERS[broker_profile]} broker…"):
                    started = time.perf_counter()
                    broker = BenchBroker.start(broker_profile, broker_logs)
            except LocalKafkaError as exc:
                console.print(escape(f"{broker_profile} broker skipped: {exc}"), highlight=False)
                notes.append(escape(f"{broker_profile} broker skipped: {exc}"))
                continue
            console.print(f"[dim]{broker.title} at {broker.bootstrap_servers}, started in "
                          f"{time.perf_counter() - started:.1f} s[/dim]", highlight=False)
            cpu_rows[broker.name] = {}
            try:
                # The same workload on each broker: its own topics and databases, the same PostgreSQL server.
                base = Settings(
                    **broker.settings(), database_url=postgres.fresh_database(f"bench_{broker_profile}"),
                    app_id=f"bench-{run_id}", topic_prefix=f"bench-{run_id}.", topic_partitions=args.partitions,
                    tenants_file=ROOT / "examples" / "tenants.toml", data_dir=tmp / f"runtime-{broker_profile}",
                    api_port=free_port(),  # log_level stays "info", as `baton dev` runs
                )
                for count in args.worker_counts:
                    do_ingest = "ingest" not in skip
                    do_latency = "latency" not in skip and count == args.latency_workers
                    if not (do_ingest or do_latency):
                        continue
                    tag, key = f"{broker.name}, {workers_name(count)}", f"{broker_profile}_w{count}"
                    # A fresh runtime per worker count: its own group, topics and read models, the same services.
                    runtime = Runtime(base.model_copy(update={
                        "app_id": f"bench-{run_id}-{key}", "topic_prefix": f"bench-{run_id}-{key}.",
                        "database_url": postgres.fresh_database(f"bench_{key}"), "data_dir": tmp / f"runtime-{key}",
                        "api_port": 0}), workers=count)
                    probe_out = tmp / f"projector_batches-{key}.json"
                    try:
                        with console.status(f"starting {tag}, projector (timed) and API…"):
                            runtime.start(roles=tuple(role for role in runtime.roles if role != "projector"))
                            runtime.processes["projector"] = spawn(
                                [sys.executable, "-m", "bench.projector_probe"],
                                child_env(**settings_env(runtime.settings), BENCH_PROJECTOR_OUT=str(probe_out)),
                                runtime.log_dir / "projector.log")
                            token = issue_token(runtime.settings, TENANT)
                            warm_s = await warm_up(runtime, token)
                            group = await wait_for_group(runtime.settings, count)
                        console.print(f"[dim]{tag}: warm-up message answered end to end in {warm_s:.1f} s; "
                                      f"{group}[/dim]", highlight=False)
                        roles = {p.pid: role for role, p in runtime.processes.items()}
                        spies = []
                        if profile == "py-spy" and do_ingest:
                            for role, process in runtime.processes.items():
                                out = tmp / f"{key}-{role}.spy.txt"
                                spies.append(spawn(
                                    [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(process.pid),
                                     "-r", "100", "--format", "raw", "-o", str(out)], None, None))
                                spy_roles.append((f"{role}, {tag}", out))
                        if do_ingest:
                            with console.status(f"1. ingesting {n} events over HTTP ({tag})…"):
                                records_before = await log_records(runtime.settings)
                                meter = CpuMeter(roles, broker, postmaster).start()
                                ingest = await ingest_to_projection(runtime, token, n, contacts, f"{run_id}{key}")
                                cpu = meter.stop()
                                records_after = await log_records(runtime.settings)
                            cpu_rows[broker.name][f"1. ingest, {workers_name(count)}"] = cpu
                            notes.append(f"1. ({tag}) " + amplification(records_before, records_after, n))
                            baton_runs.append(BatonRun(broker.name, count, ingest, cpu,
                                                       records_added(records_before, records_after)))
                            console.print(f"[dim]1. ({tag}) done at {time.perf_counter() - t_all:.0f} s[/dim]")
                        for spy in spies:
                            spy.send_signal(signal.SIGINT)  # py-spy writes its output and exits
                        for spy in spies:
                            spy.wait(30)
                        runtime.check_alive()
                        if do_latency:
                            for k, per_s in enumerate(args.rate_list):
                                with console.status(f"2. open-loop webhooks at {per_s}/s for {args.seconds:.0f} s "
                                                    f"({tag})…"):
                                    meter = CpuMeter(roles, broker, postmaster).start()
                                    lats.append(await latency(
                                        runtime, token, per_s, args.seconds, args.latency_contacts,
                                        f"{run_id}r{per_s}", get_budget=args.get_budget, drain_s=args.drain,
                                        max_inflight=args.max_inflight, prefix=f"3{4 + k}69", workers=count,
                                        broker=broker.name))
                                    cpu_rows[broker.name][f"2. {per_s}/s, {workers_name(count)}"] = meter.stop()
                                console.print(f"[dim]2. ({per_s}/s, {tag}) done at "
                                              f"{time.perf_counter() - t_all:.0f} s[/dim]")
                                runtime.check_alive()
                    finally:
                        runtime.stop()
                    if probe_out.exists():
                        projector_batches[tag] = json.loads(probe_out.read_text())

                if "fold" not in skip or "baselines" not in skip:
                    rates = FoldRates(broker.name)
                    fold_settings = base.model_copy(update={
                        "app_id": f"bench-fold-{run_id}", "topic_prefix": f"bench-fold-{run_id}.",
                        "data_dir": tmp / f"fold-{broker_profile}"})
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
                            rates.fold, fold_cpu = await fold_rate(fold_settings, fold_n, broker_logs, profile,
                                                                   broker_logs, CpuMeter({}, broker, postmaster))
                            if fold_cpu:
                                cpu_rows[broker.name]["3. fold worker, first batch → idle"] = fold_cpu
                            notes.append(f"3. ({broker.name}) "
                                         + amplification({}, await log_records(fold_settings), fold_n))
                            for table_name in ("sessions", "conversations-ledger"):
                                records, same, empty = await redundant_writes(fold_settings, table_name)
                                notes.append(f"3. ({broker.name}) {table_name} changelog: {records:,} records; "
                                             f"{same:,} ({100 * same / max(records, 1):.0f}%) identical to the key's "
                                             f"previous value, {empty:,} ({100 * empty / max(records, 1):.0f}%) "
                                             f"first writes of an empty {{}}")
                        console.print(f"[dim]3. ({broker.name}) done at {time.perf_counter() - t_all:.0f} s[/dim]")
                    if "baselines" not in skip:
                        with console.status(f"4. naive Faust agent ({broker.name})…"):
                            rates.naive = await baseline("naive", base.kafka_bootstrap_servers, raw_topics[0],
                                                         fold_n, args.partitions, broker_logs, args.baseline_loglevel)
                        with console.status(f"4. bare Faust stream iteration ({broker.name})…"):
                            rates.bare = await baseline("bare", base.kafka_bootstrap_servers, raw_topics[1],
                                                        fold_n, args.partitions, broker_logs, args.baseline_loglevel)
                    folds.append(rates)
            finally:
                broker.stop()
    finally:
        postgres.stop()

    peer: PeerResult | None = None
    if python_for_peer is not None:
        # After Baton's services stopped: the peer has the machine to itself, as Baton had in (1).
        with console.status(f"5. the Redis-lock peer: {n:,} messages, {contacts:,} contacts, {args.peer_runs} run(s)…"):
            peer = await run_peer(python_for_peer, n, contacts, args.peer_runs, log_dir)
        if not peer.runs:
            peer_skipped = (f"failed: {peer.error or 'no RESULT line'}, exit code {peer.exit_code}; "
                            f"see {log_dir / 'peer.log'}")
        console.print(f"[dim]5. done at {time.perf_counter() - t_all:.0f} s (peer exit code {peer.exit_code}"
                      f"{escape(', ' + peer.error) if peer.error else ''})[/dim]", highlight=False)

    # ------------------------------------------------------------ print
    console.print()
    for done in baton_runs:
        ingest = done.ingest
        table = Table(title=f"1. Ingest → projection, {done.name}: {ingest.events:,} message.received over POST "
                            f"/v1/events ({ingest.requests} requests of ≤500, {ingest.contacts:,} contacts)")
        for col in ("stage (from the first POST)", "seconds", "events/s", "note"):
            table.add_column(col, justify="left" if col.startswith(("stage", "note")) else "right")
        table.add_row("HTTP ingest accepted (202)", f"{ingest.ingest_s:.2f}", rate(ingest.events, ingest.ingest_s),
                      "4 requests in flight")
        table.add_row("all visible in PostgreSQL (Σ messages_received = N)",
                      f"{ingest.visible_s:.2f}" if ingest.visible_s else "timeout",
                      rate(ingest.events, ingest.visible_s or 0), f"{ingest.received:,} seen")
        table.add_row("all replies sent (Σ replies_sent = N)",
                      f"{ingest.replied_s:.2f}" if ingest.replied_s else "timeout",
                      rate(ingest.events, ingest.replied_s or 0),
                      f"{ingest.sent:,} seen; log records per message below")
        console.print(table)
    for lat in lats:
        console.print(latency_table(lat))
        console.print(f"   {latency_trend(lat)}", highlight=False)
        ok = sum(d.status == 200 for d in lat.deliveries)
        errors = Counter("unanswered at the end" if d.status == 0 else d.status
                         for d in lat.deliveries if d.status != 200)
        oks = [d for d in lat.deliveries if d.status == 200]
        first = lat.deliveries[0].scheduled if lat.deliveries else 0.0
        answered_rate = len(oks) / (max(d.answered for d in oks) - first) if oks else 0.0
        console.print(
            f"   {len(lat.deliveries)} deliveries due over {lat.send_s:.2f} s ({lat.late} scheduled >10 ms late by the "
            f"generator), at most {lat.max_inflight} POSTs open; {ok} answered 200 ({answered_rate:,.0f}/s)"
            f"{', others ' + str(dict(errors)) if errors else ''}. Latency counts from the due time. "
            f"{lat.gets} GETs (budget {lat.get_budget}/s, {lat.get_errors} failed), {lat.sql_probes} SQL probes; "
            f"waited {lat.drain_s:.1f} s after the last due time.", highlight=False)
    if projector_batches:
        table = Table(title="Projector batches during 1 + 2 (bench/projector_probe.py), per runtime")
        for col in ("runtime", "batches", "records", "mean batch", "_project s", "events INSERT s",
                    "read-model UPSERT s", "offsets s", "rest (decode, commit) s"):
            table.add_column(col, justify="left" if col == "runtime" else "right")
        for tag, b in projector_batches.items():
            if not b:
                table.add_row(tag, "0", "", "", "", "", "", "", "")
                continue
            total = sum(x[4] for x in b)
            ev, se, of = sum(x[5] for x in b), sum(x[6] for x in b), sum(x[7] for x in b)
            recs = sum(x[1] for x in b)
            table.add_row(tag, str(len(b)), f"{recs:,}", f"{recs / len(b):,.0f}", f"{total:.2f}",
                          f"{ev:.2f}", f"{se:.2f}", f"{of:.2f}", f"{total - ev - se - of:.2f}")
        console.print(table)
    for rates in folds:
        console.print(fold_table(rates, fold_n, args.partitions))
    for note in notes:
        console.print(f"   {note}", highlight=False)
    for broker_name, phases in cpu_rows.items():
        if not phases:
            continue
        names = sorted({name for _, used in phases.values() for name in used})
        table = Table(title=f"CPU used per component on {broker_name} (cores = CPU s / wall s; the machine has "
                            f"{os.cpu_count()})")
        table.add_column("component")
        for phase, (wall, _) in phases.items():
            table.add_column(f"{phase} ({wall:.1f} s)", justify="right")
        for name in names:
            table.add_row(name, *(f"{used.get(name, 0.0):.1f} s = {used.get(name, 0.0) / wall:.2f}"
                                  for wall, used in phases.values()))
        table.add_row("total", *(f"{sum(used.values()):.1f} s = {sum(used.values()) / wall:.2f}"
                                 for wall, used in phases.values()))
        console.print(table)
    if peer and peer.runs:
        for res in peer.runs:
            failed = [name for name, ok, _ in res["checks"] if not ok]
            console.print(f"   5. peer run {res['run']}: {res['e2e_msgs_per_s']:,.0f} msgs/s end to end over "
                          f"{res['e2e_s']:.2f} s ({res['deliveries']:,} deliveries, {res['duplicate_deliveries']:,} "
                          f"duplicates); {res['lock_retries']:,} lock retries, {res['requeues']:,} requeues, "
                          f"{res['out_of_order']:,} turns applied out of order; correctness "
                          + (f"FAIL: {'; '.join(failed)}" if failed else "all checks PASS"), highlight=False)
    console.print(comparison_table(baton_runs, peer, peer_skipped, n, contacts))
    if baton_runs or (peer and peer.runs):
        console.print(cpu_per_message_table(baton_runs, peer))
    console.print(aims_table(baton_runs, lats, peer))
    if profile == "py-spy":
        fold_spies = [(f"fold worker (3), {BROKERS[b]}", log_dir / b / "fold_worker.spy.txt") for b in args.broker_list]
        for role, path in [*fold_spies, *((f"{r} (1)", p) for r, p in spy_roles)]:
            if path.exists():
                total, own, inclusive, categories = spy_top(path, 60)
                console.print(f"\n[bold]py-spy {role}: {total} busy samples (idle waits in select/Condition.wait left out)[/bold]")
                console.print("  by category (first matching rule in CATEGORIES):")
                for name, count in categories.most_common():
                    console.print(f"    {100 * count / total:5.1f}%  {name}", highlight=False)
                console.print("  self:")
                for frame, count in own[:20]:
                    console.print(f"    {100 * count / total:5.1f}%  {frame}", highlight=False)
                console.print("  inclusive:")
                for frame, count in inclusive[:40]:
                    if count / total > 0.97:
                        continue  # the entry chain common to every sample
                    console.print(f"    {100 * count / total:5.1f}%  {frame}", highlight=False)
    if profile == "cprofile":
        for b in args.broker_list:
            if (log_dir / b / "fold_worker.prof").exists():
                console.print(f"\n[bold]cProfile fold worker (3), {BROKERS[b]}[/bold]")
                console.print(cprofile_top(log_dir / b / "fold_worker.prof"), highlight=False, markup=False)
    console.print(f"[dim]whole bench {time.perf_counter() - t_all:.0f} s; logs in {tmp if args.keep else '(removed)'}[/dim]")
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- Baton against the peer, and the aims

def answered_per_s(done: BatonRun) -> float | None:
    return done.ingest.events / done.ingest.replied_s if done.ingest.replied_s else None


def comparison_table(baton_runs: list[BatonRun], peer: PeerResult | None, peer_skipped: str | None,
                     n: int, contacts: int) -> Table:
    """One row per Baton worker count and one for the peer: rate, CPU, log records and broker CPU per message."""
    chosen = peer.chosen if peer else None
    peer_rate = chosen["e2e_msgs_per_s"] if chosen else None
    table = Table(title=f"Baton against the Redis-lock peer: {n:,} messages over {contacts:,} contacts, "
                        "from the first ingest to the last reply")
    for col in ("system", "answered msgs/s", "CPU ms / answered msg", "log records / answered msg",
                "broker CPU ms / answered msg", "msgs/s ÷ peer", "note"):
        table.add_column(col, justify="left" if col in ("system", "note") else "right")
    for done in baton_runs:
        wall, used = done.cpu
        own = baton_cpu(used)
        per_s = answered_per_s(done)
        table.add_row(
            f"Baton on {done.name}",
            f"{per_s:,.0f}" if per_s else f"timeout ({done.ingest.sent:,} of {n:,})",
            f"{1000 * sum(own.values()) / n:.2f}", f"{done.records / n:.1f}",
            f"{1000 * used.get(broker_component(done.broker), 0.0) / n:.2f}",
            f"{per_s / peer_rate:.2f}×" if per_s and peer_rate else "-",
            f"{wall:.1f} s window; {used.get('everything else on the machine', 0.0) / wall:.2f} cores busy elsewhere")
    if chosen:
        own = peer_cpu(chosen)
        failed = sum(not ok for _, ok, _ in chosen["checks"])
        runs = len(peer.runs)
        others = max(0.0, chosen["cpu"].get("_system_busy", 0.0) - sum(own.values()))
        table.add_row(
            "Redis-lock peer", f"{peer_rate:,.0f}", f"{1000 * sum(own.values()) / chosen['messages']:.2f}",
            "-", "-", "1.00×",
            f"{chosen['e2e_s']:.1f} s window; {others / chosen['e2e_s']:.2f} cores busy elsewhere; "
            f"{'median run of ' + str(runs) + '; ' if runs > 1 else ''}checks {'FAIL ×' + str(failed) if failed else 'PASS'}")
    else:
        table.add_row("Redis-lock peer", "-", "-", "-", "-", "-", escape(peer_skipped or "not run"))
    table.caption = (
        "answered msgs/s: N ÷ (first ingest → last reply seen). CPU: Baton = broker + PostgreSQL + worker(s) + "
        "projector + API + bench load (HTTP client, SQL watcher), from /proc in clock ticks; peer = its own report "
        "(schedstat): driver (no HTTP tier: it calls PostgreSQL and Redis directly) + workers + redis-server + its "
        "PostgreSQL backends + the server's background processes, not other clients' backends. Log records and "
        "broker CPU: Baton only. The peer's workload also carries ~20% duplicate deliveries (its default); Baton's "
        "(1) none.")
    return table


def cpu_per_message_table(baton_runs: list[BatonRun], peer: PeerResult | None) -> Table:
    """Where the CPU goes: ms per answered message per component, for each Baton run (1) and the peer."""
    chosen = peer.chosen if peer else None
    table = Table(title="Where the CPU goes: CPU ms per answered message (cores) per component, (1) and the peer")
    table.add_column("component")
    for done in baton_runs:
        table.add_column(f"Baton on {done.name} ({done.cpu[0]:.1f} s)", justify="right")
    if chosen:
        table.add_column(f"Redis-lock peer ({chosen['e2e_s']:.1f} s)", justify="right")
    blank = [""] * (len(baton_runs) + (1 if chosen else 0))

    def cell(seconds: float, messages: int, wall: float) -> str:
        return f"{1000 * seconds / messages:.2f} ({seconds / wall:.2f})"

    names = sorted({name for done in baton_runs for name in baton_cpu(done.cpu[1])})
    for name in names:
        row = list(blank)
        for i, done in enumerate(baton_runs):
            if name in done.cpu[1]:  # each run has its own broker's row only
                row[i] = cell(done.cpu[1][name], done.ingest.events, done.cpu[0])
        table.add_row(name, *row)
    if chosen:
        for name, seconds in peer_cpu(chosen).items():
            row = list(blank)
            row[-1] = cell(seconds, chosen["messages"], chosen["e2e_s"])
            table.add_row(f"peer: {name}", *row)
    totals_row, rest_row = list(blank), list(blank)
    for i, done in enumerate(baton_runs):
        wall, used = done.cpu
        totals_row[i] = cell(sum(baton_cpu(used).values()), done.ingest.events, wall)
        rest_row[i] = f"{used.get('everything else on the machine', 0.0) / wall:.2f} cores"
    if chosen:
        own = sum(peer_cpu(chosen).values())
        totals_row[-1] = cell(own, chosen["messages"], chosen["e2e_s"])
        others = chosen["cpu"].get("_system_busy", 0.0) - own
        rest_row[-1] = f"{max(0.0, others) / chosen['e2e_s']:.2f} cores"
    table.add_row("total (the system's own processes)", *totals_row)
    table.add_row("not counted: rest of the machine (others' tests…)", *rest_row)
    return table


def visible_p99(lat: LatencyResult) -> tuple[float, float, int, int]:
    """p99 of inbound-turn visibility and of the reply over every delivery (a missing one counts as
    infinitely late), and how many are missing for each."""
    seen = [d.visible_sql - d.scheduled for d in lat.deliveries if d.status == 200 and d.visible_sql]
    replied = [d.replied_sql - d.scheduled for d in lat.deliveries if d.status == 200 and d.replied_sql]
    total = len(lat.deliveries)
    missing_seen, missing_replied = total - len(seen), total - len(replied)
    p_seen = pct(seen + [math.inf] * missing_seen, .99) if total else math.inf
    p_replied = pct(replied + [math.inf] * missing_replied, .99) if total else math.inf
    return p_seen, p_replied, missing_seen, missing_replied


def aims_table(baton_runs: list[BatonRun], lats: list[LatencyResult], peer: PeerResult | None) -> Table:
    """Issue 5's aims beside what this run measured."""
    chosen = peer.chosen if peer else None
    table = Table(title="Issue 5's aims beside this run's figures")
    for col in ("aim", "target", "measured", "met"):
        table.add_column(col, justify="left" if col in ("aim", "measured") else "right")

    def met(ok: bool | None) -> str:
        return "-" if ok is None else ("yes" if ok else "no")

    for done in baton_runs:
        per_message = done.records / done.ingest.events
        table.add_row(f"log records per answered message, {done.name} (1)", "≤ 5", f"{per_message:.1f}",
                      met(per_message <= 5))
    for done in baton_runs:
        per_s = answered_per_s(done)
        if per_s and chosen:
            share = per_s / chosen["e2e_msgs_per_s"]
            table.add_row(f"answered msgs/s against the peer, {done.name}", "≥ 0.5 × peer",
                          f"{per_s:,.0f} / {chosen['e2e_msgs_per_s']:,.0f} = {share:.2f} × peer", met(share >= 0.5))
        else:
            table.add_row(f"answered msgs/s against the peer, {done.name}", "≥ 0.5 × peer",
                          "peer not run" if per_s else "Baton timed out", "-")
    for rate_aim, limit, whole in ((500, 1.0, True), (100, 0.4, False)):
        aim = "inbound turn visible (SQL), p99" + (", nothing missing" if whole else "")
        target = f"≤ {ms(limit)}" + (", 0 missing" if whole else "")
        found = [lat for lat in lats if lat.rate == rate_aim]
        if not found:
            table.add_row(f"{rate_aim} webhooks/s: {aim}", target, "not measured (add --rates 100,500)", "-")
        for lat in found:
            p_seen, p_replied, missing, missing_replies = visible_p99(lat)
            shown = "not seen within the wait" if math.isinf(p_seen) else ms(p_seen)
            replies = "not seen" if math.isinf(p_replied) else ms(p_replied)
            table.add_row(f"{rate_aim} webhooks/s on {lat.broker}: {aim}", target,
                          f"p99 {shown}, {missing} of {len(lat.deliveries)} missing "
                          f"({workers_name(lat.workers)}; reply p99 {replies}, {missing_replies} missing)",
                          met(p_seen <= limit and (missing == 0 or not whole)))
    return table


if __name__ == "__main__":
    main()
