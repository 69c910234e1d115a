"""(2) latency, open loop: signed webhook deliveries at a rate, each timed from its due time until visible."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
import psycopg

from agents.tenants import load_tenants
from bench.pipeline.common import TENANT, TEXTS, console, workers_name
from bench.pipeline.harness import BenchBroker, CpuMeter, derive_backends
from schemas import source_event_id
from streams.domains.conversations.demo import message_delivery
from streams.domains.conversations.webhook import sign
from streams.runtime import Runtime
from streams.settings import Settings

if TYPE_CHECKING:
    from bench.pipeline.run import Bench


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


def make_deliveries(settings: Settings, per_s: int, seconds: float, contacts: int, run: str, sample_every: int,
                    prefix: str) -> list[Delivery]:
    """The run's signed webhook deliveries, one every 1/per_s s, over rotating contacts; 1 in sample_every
    sampled for the API probe."""
    tenant = load_tenants(settings.tenants_file).by_id[TENANT]
    secret = settings.whatsapp_app_secret.get_secret_value()
    total = int(per_s * seconds)
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
    return deliveries


class OpenLoop:
    """One open-loop run in flight: its HTTP session, the deliveries answered so far, the probes' counts."""

    def __init__(self, deliveries: list[Delivery], http: aiohttp.ClientSession, max_inflight: int, token: str,
                 conn: psycopg.AsyncConnection, hard_stop: float, get_budget: int) -> None:
        self.deliveries, self.http, self.conn, self.hard_stop = deliveries, http, conn, hard_stop
        self.open_posts = asyncio.Semaphore(max_inflight)  # FIFO: a due delivery waits its turn
        self.auth = {"Authorization": f"Bearer {token}"}
        self.counters: Counter = Counter()
        self.answered: list[Delivery] = []
        self.limiter = Limiter(get_budget)
        self.get_gate = asyncio.Semaphore(8)

    async def post(self, d: Delivery) -> None:
        async with self.open_posts:
            try:
                async with self.http.post("/v1/webhooks/whatsapp", data=d.body, headers={
                        "Content-Type": "application/json", "X-Hub-Signature-256": d.signature}) as response:
                    await response.read()
                    d.status = response.status
            except (aiohttp.ClientError, TimeoutError):
                d.status = -1
        d.answered = time.perf_counter()
        self.answered.append(d)
        d.posted.set()

    async def probe_api(self, d: Delivery) -> None:
        await d.posted.wait()
        if d.status != 200:
            return
        while time.perf_counter() < self.hard_stop:
            await self.limiter.wait()
            try:
                async with self.get_gate, self.http.get(f"/v1/conversations/{d.contact}", headers=self.auth) as response:
                    status, body = response.status, await response.read()
            except (aiohttp.ClientError, TimeoutError):
                self.counters["get_errors"] += 1
                continue
            self.counters["gets"] += 1
            if status == 200 and any(t["event_id"] == d.event_id for t in json.loads(body)["dialogue"]):
                d.visible_api = time.perf_counter()
                return
            await asyncio.sleep(0.01)

    async def probe_sql(self) -> None:
        """One query per round over every contact with an answered delivery not yet visible and replied."""
        waiting: dict[str, list[Delivery]] = defaultdict(list)
        taken = 0
        while time.perf_counter() < self.hard_stop:
            for d in self.answered[taken:]:
                if d.status == 200:
                    waiting[d.contact].append(d)
            taken = len(self.answered)
            if not waiting:
                if taken == len(self.deliveries):
                    return
                await asyncio.sleep(0.02)
                continue
            cur = await self.conn.execute(
                "SELECT contact, sum(messages_received), sum(replies_sent) FROM conversation_sessions"
                " WHERE tenant_id = %s AND contact = ANY(%s) GROUP BY contact", (TENANT, list(waiting)))
            rows = await cur.fetchall()
            now = time.perf_counter()
            self.counters["sql"] += 1
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

    async def send(self, start: float, per_s: int) -> tuple[list[asyncio.Task], int]:
        """Every delivery posted at its due time, whatever happened to earlier ones: the POST tasks, and how
        many were started more than 10 ms late."""
        posts = []
        late = 0
        for d in self.deliveries:
            d.scheduled = start + d.index / per_s
            delay = d.scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.01:
                late += 1
            posts.append(asyncio.create_task(self.post(d)))
        return posts, late

async def latency(runtime: Runtime, token: str, per_s: int, seconds: float, contacts: int, run: str,
                  get_budget: int = 200, sampled_per_s: int = 50, drain_s: float = 20.0,
                  max_inflight: int = 64, prefix: str = "3469", workers: int = 1, broker: str = "") -> LatencyResult:
    """Open loop: delivery i is due at start + i/per_s whatever happened to earlier ones, and its latency
    counts from then. At most max_inflight POSTs are open at once; a due delivery waits its turn in a FIFO
    (that wait is part of its latency). Everything stops drain_s after the last delivery was due.
    Contacts are prefix + 7 digits: each run in one database needs its own prefix (visibility counts a
    contact's messages)."""
    settings = runtime.settings
    sample_every = max(1, per_s // sampled_per_s)
    deliveries = make_deliveries(settings, per_s, seconds, contacts, run, sample_every, prefix)
    start = time.perf_counter() + 0.05
    hard_stop = start + seconds + drain_s

    # aiohttp, not httpx: the load and its probes share the machine with what they measure. Through httpx they took
    # 0.43 / 0.58 of the 2 cores at 100 / 500 webhooks/s (0.16 / 0.25 through aiohttp), and the generator ran late.
    connector = aiohttp.TCPConnector(limit=max_inflight + 8)
    async with aiohttp.ClientSession(runtime.api_url, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as http, \
            await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        loop = OpenLoop(deliveries, http, max_inflight, token, conn, hard_stop, get_budget)
        sql_task = asyncio.create_task(loop.probe_sql())
        api_tasks = [asyncio.create_task(loop.probe_api(d)) for d in deliveries if d.sampled]
        posts, late = await loop.send(start, per_s)
        send_s = time.perf_counter() - start
        drain_start = time.perf_counter()
        tasks = [*posts, sql_task, *api_tasks]
        _, pending = await asyncio.wait(tasks, timeout=max(0.1, hard_stop - time.perf_counter()))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        drained = time.perf_counter() - drain_start

    return LatencyResult(deliveries, per_s, seconds, send_s, late, contacts, sample_every, loop.counters["gets"],
                         get_budget, loop.counters["sql"], drained, loop.counters["get_errors"], max_inflight,
                         workers, broker)


async def latency_step(bench: Bench, runtime: Runtime, token: str, broker: BenchBroker, roles: dict[int, str],
                       count: int, tag: str) -> None:
    """(2) once per rate of --rates on one runtime; results and CPU per component go into bench."""
    args = bench.args
    for k, per_s in enumerate(args.rate_list):
        with console.status(f"2. open-loop webhooks at {per_s}/s for {args.seconds:.0f} s "
                            f"({tag})…"):
            meter = CpuMeter(roles, broker, bench.postmaster,
                             await derive_backends(runtime.settings.database_url)).start()
            bench.lats.append(await latency(
                runtime, token, per_s, args.seconds, args.latency_contacts,
                f"{bench.run_id}r{per_s}", get_budget=args.get_budget, drain_s=args.drain,
                max_inflight=args.max_inflight, prefix=f"3{4 + k}69", workers=count,
                broker=broker.name))
            bench.cpu_rows[broker.name][f"2. {per_s}/s, {workers_name(count)}"] = meter.stop()
        console.print(f"[dim]2. ({per_s}/s, {tag}) done at "
                      f"{time.perf_counter() - bench.t_all:.0f} s[/dim]")
        runtime.check_alive()
