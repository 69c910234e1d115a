"""The bench's harness: the brokers, CPU accounting from /proc, child processes, and a runtime's start."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from aiokafka.admin import AIOKafkaAdminClient
from rich.markup import escape

from agents.tenants import load_tenants
from bench.pipeline.common import ROOT, TENANT, console
from projections.projector import DERIVE_APPLICATION
from streams.auth import issue_token
from streams.domains.conversations.demo import message_delivery
from streams.domains.conversations.webhook import sign
from streams.embedded import EmbeddedBroker, EmbeddedPostgres, child_env, free_port
from streams.local_kafka import KAFKA_VERSION, SERVER_JVM, LocalKafka, LocalKafkaError
from streams.runtime import Runtime
from streams.settings import Settings, settings_env

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


def proc_cpu() -> dict[int, tuple[str, int, float]]:
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


JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")  # HotSpot's compiler threads, as /proc names them


def jit_cpu(pids: set[int]) -> float:
    """CPU seconds the JIT compiler threads of these processes have used (0 for a broker without a JIT). A
    compiler thread HotSpot has since retired no longer counts, so this is a lower bound."""
    ticks = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            if stat[stat.index("(") + 1:stat.rindex(")")].startswith(JIT_THREADS):
                fields = stat[stat.rindex(")") + 2:].split()
                ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK


def _machine_busy() -> float:
    """CPU seconds the whole machine has spent not idle since boot."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / CLK  # minus idle and iowait


DERIVED = "postgresql: derived read models"  # the CpuMeter group of the backend the projector derives search on


async def derive_backends(database_url: str) -> dict[int, str]:
    """The PostgreSQL backend of the projector's derivation session (the context search index), by pid: a
    CpuMeter counts it apart from the rest of PostgreSQL."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s"
                                 " AND datname = current_database()", (DERIVE_APPLICATION,))
        return {pid: DERIVED for (pid,) in await cur.fetchall()}


class CpuMeter:
    """CPU seconds per component of this bench between start() and stop(), and the rest of the machine's.

    Only this bench's processes count: its own descendants (children by role), its broker (the Tansu process
    or the Kafka JVM(s), named by broker.component), and its PostgreSQL (the postmaster daemonizes, so it is
    found by pid with its children; a backend in `backends` counts under its own name). Processes that exit
    before stop() are not counted.
    """

    def __init__(self, roles: dict[int, str], broker: BenchBroker, postmaster_pid: int,
                 backends: dict[int, str] | None = None) -> None:
        self.roles, self.broker, self.postmaster_pid = roles, broker, postmaster_pid
        self.backends = backends or {}
        self.before: dict[int, tuple[str, int, float]] = {}
        self.wall = self.busy = 0.0
        self.jit = 0.0  # of the broker's CPU, what its JIT compiler used (after stop())

    def group(self, pid: int, procs: dict[int, tuple[str, int, float]]) -> str | None:
        comm, ppid, _ = procs[pid]
        if pid == self.postmaster_pid or ppid == self.postmaster_pid:
            return self.backends.get(pid, "postgresql")
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
        self.before, self.wall, self.busy = proc_cpu(), time.perf_counter(), _machine_busy()
        self.jit = jit_cpu(self.broker.pids)
        return self

    def stop(self) -> tuple[float, dict[str, float]]:
        after, wall, busy = proc_cpu(), time.perf_counter() - self.wall, _machine_busy() - self.busy
        self.jit = jit_cpu(self.broker.pids) - self.jit
        used: dict[str, float] = defaultdict(float)
        for pid, (comm, _, cpu) in after.items():
            name = self.group(pid, after)
            if name:
                before = self.before.get(pid)
                used[name] += cpu - (before[2] if before and before[0] == comm else 0.0)
        used["everything else on the machine"] = max(0.0, busy - sum(used.values()))
        return wall, dict(used)


# ---------------------------------------------------------------- child processes

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


# ---------------------------------------------------------------- starting brokers and runtimes

def start_broker(profile: str, directory: Path, notes: list[str]) -> BenchBroker | None:
    """The broker started (one line says where, and how long it took), or None with one line saying why not."""
    try:
        with console.status(f"starting the {BROKERS[profile]} broker…"):
            started = time.perf_counter()
            broker = BenchBroker.start(profile, directory)
    except LocalKafkaError as exc:
        console.print(escape(f"{profile} broker skipped: {exc}"), highlight=False)
        notes.append(escape(f"{profile} broker skipped: {exc}"))
        return None
    console.print(f"[dim]{broker.title} at {broker.bootstrap_servers}, started in "
                  f"{time.perf_counter() - started:.1f} s[/dim]", highlight=False)
    return broker


def base_settings(broker: BenchBroker, postgres: EmbeddedPostgres, run_id: str, partitions: int,
                  tmp: Path) -> Settings:
    """The same workload on each broker: its own topics and databases, the same PostgreSQL server."""
    return Settings(
        **broker.settings(), database_url=postgres.fresh_database(f"bench_{broker.profile}"),
        app_id=f"bench-{run_id}", topic_prefix=f"bench-{run_id}.", topic_partitions=partitions,
        tenants_file=ROOT / "examples" / "tenants.toml", data_dir=tmp / f"runtime-{broker.profile}",
        api_port=free_port(),  # log_level stays "info", as `baton dev` runs
    )


def fresh_runtime(base: Settings, postgres: EmbeddedPostgres, run_id: str, key: str, tmp: Path,
                  count: int) -> Runtime:
    """A fresh runtime per worker count: its own group, topics and read models, the same services."""
    return Runtime(base.model_copy(update={
        "app_id": f"bench-{run_id}-{key}", "topic_prefix": f"bench-{run_id}-{key}.",
        "database_url": postgres.fresh_database(f"bench_{key}"), "data_dir": tmp / f"runtime-{key}",
        "api_port": 0}), workers=count)


async def start_runtime(runtime: Runtime, probe_out: Path, count: int, tag: str) -> str:
    """The runtime's roles started, the projector as bench/projector_probe.py (batches timed, written to
    probe_out), one message answered end to end and the group stable; the tenant's token."""
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
    return token
