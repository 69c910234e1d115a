"""Apache Kafka on this machine, started by Baton: the broker's jars from Maven Central, KRaft nodes as child JVMs.

One launcher for the tests, the benchmark and `baton dev --broker kafka`. The jars are resolved with Maven from
`local_kafka.pom.xml` (the one pinned Kafka version) into Maven's own repository, and the class path is cached
under `~/.cache/baton/kafka/` (XDG_CACHE_HOME), so a second start needs no network. Each node is a combined
broker+controller on loopback ports; every JVM dies with the thread that started it (PR_SET_PDEATHSIG).
Whatever cannot be had (java, mvn, the registry, a port, a node that never answers) is a `LocalKafkaError` with
one line naming the cause, and nothing half-started is left behind.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from streams.embedded import die_with_parent, free_port, stop_process
from streams.errors import StreamsError

POM = Path(__file__).with_name("local_kafka.pom.xml")
KAFKA_VERSION = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text()).group(1)  # type: ignore[union-attr]
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
MIN_JAVA = 17

# Tests and `baton dev`: a small heap, a cheap collector and the quick compiler (start in seconds on 2 cores).
LIGHT_JVM = ("-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
# The benchmark: Kafka's own server defaults (kafka-server-start.sh, kafka-run-class.sh).
SERVER_JVM = ("-Xms1g", "-Xmx1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
              "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent")

LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.started.name = kafka.server.KafkaRaftServer
logger.started.level = INFO
"""


class LocalKafkaError(StreamsError, RuntimeError):
    """Apache Kafka could not be set up or started here; the message names the cause and the remedy."""


def cache_dir() -> Path:
    import os

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "baton" / "kafka"


def java_version(java: str) -> int:
    """The major version of a `java` executable."""
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise LocalKafkaError(f"cannot tell the version of {java}: {out.strip()[:200]!r}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError(f"java not found on PATH: Apache Kafka {KAFKA_VERSION} needs a Java {MIN_JAVA}+ runtime"
                              " (e.g. apt-get install openjdk-17-jre-headless)")
    if (major := java_version(java)) < MIN_JAVA:
        raise LocalKafkaError(f"{java} is Java {major}; Apache Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+")
    return java


def classpath(timeout_s: float = 900.0) -> str:
    """The broker's class path: cached when every jar is still there, else resolved with Maven (may download)."""
    pom = POM.read_bytes()
    cached = cache_dir() / f"classpath-{KAFKA_VERSION}-{hashlib.sha256(pom).hexdigest()[:12]}.txt"
    if cached.exists():
        jars = cached.read_text().strip()
        if jars and all(Path(jar).is_file() for jar in jars.split(":")):
            return jars
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError(f"mvn not found on PATH: Maven fetches Apache Kafka {KAFKA_VERSION} from Maven Central"
                              " (e.g. apt-get install maven)")
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{uuid.uuid4().hex[:8]}.part")
    try:
        result = subprocess.run(
            [mvn, "-B", "-q", "-f", str(POM), f"{DEPENDENCY_PLUGIN}:build-classpath",
             "-DincludeScope=runtime", f"-Dmdep.outputFile={partial}"],
            capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        partial.unlink(missing_ok=True)
        raise LocalKafkaError(f"Maven did not resolve Apache Kafka {KAFKA_VERSION} within {timeout_s:.0f} s"
                              " (is Maven Central reachable?)") from None
    if result.returncode != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
        first_error = next((line.strip() for line in output.splitlines() if "ERROR" in line), "no error printed")
        raise LocalKafkaError(f"Maven could not resolve Apache Kafka {KAFKA_VERSION} from {POM.name}"
                              f" (is Maven Central reachable?): {first_error[:300]}")
    partial.replace(cached)
    return cached.read_text().strip()


def _cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class KafkaNode:
    """One combined broker+controller: its id, loopback ports and directory (config, data, log)."""

    node_id: int
    port: int
    controller_port: int
    directory: Path
    process: subprocess.Popen | None = None

    @property
    def config(self) -> Path:
        return self.directory / "server.properties"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "server.log"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class LocalKafka:
    """A KRaft cluster of `size` nodes under `root`. The log on disk outlives the processes: starting again on the
    same root reuses the cluster id and the data (ports are chosen anew where the old ones are taken)."""

    root: Path
    size: int = 1
    jvm_options: Sequence[str] = LIGHT_JVM
    broker_config: dict[str, str] = field(default_factory=dict)
    nodes: list[KafkaNode] = field(default_factory=list)

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    @property
    def replication(self) -> int:
        """The replication factor topics get: three copies on a cluster of three or more, else one per node."""
        return min(3, self.size)

    def start(self, wait_s: float = 120.0) -> LocalKafka:
        """Format what is new, start every node, return once the cluster answers metadata with every broker."""
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            java, jars = find_java(), classpath()
            self._configure()
            self._format(java, jars)
            for node in self.nodes:
                self._spawn(node, java, jars)
            self.wait_ready(wait_s)
        except BaseException:
            self.stop(grace_s=2.0)
            raise
        return self

    def _configure(self) -> None:
        state_file = self.root / "cluster.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        if state and state.get("size") != self.size:
            raise LocalKafkaError(f"{self.root} holds a cluster of {state['size']} nodes, not {self.size}:"
                                  " choose another directory or remove it")
        ports = state.get("ports", [])
        if len(ports) != self.size or not all(_free(p) for pair in ports for p in pair):
            ports = [(free_port(), free_port()) for _ in range(self.size)]
        state = {"cluster_id": state.get("cluster_id") or _cluster_id(), "size": self.size, "version": KAFKA_VERSION,
                 "ports": ports}
        state_file.write_text(json.dumps(state))
        self.cluster_id = state["cluster_id"]
        self.nodes = [KafkaNode(i + 1, port, controller, self.root / f"node-{i + 1}")
                      for i, (port, controller) in enumerate(ports)]
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        (self.root / "log4j2.properties").write_text(LOG4J2)
        for node in self.nodes:
            node.directory.mkdir(parents=True, exist_ok=True)
            config = self._node_config(node, voters) | self.broker_config
            node.config.write_text("".join(f"{key}={value}\n" for key, value in config.items()))

    def _node_config(self, node: KafkaNode, voters: str) -> dict[str, str]:
        copies, min_isr = str(self.replication), str(2 if self.size >= 3 else 1)
        return {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(node.data),
            "num.partitions": "1",
            # Baton creates every topic itself, with its partitions (DESIGN.md); nothing is created by accident.
            "auto.create.topics.enable": "false",
            "default.replication.factor": copies,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": copies,
            "offsets.topic.num.partitions": "5",
            "transaction.state.log.replication.factor": copies,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "5",
            "share.coordinator.state.topic.replication.factor": copies,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "log.cleaner.dedupe.buffer.size": "2097152",
            # Compacted changelogs are cleaned as soon as a segment rolls (tests roll segments on purpose).
            "log.cleaner.backoff.ms": "1000",
        }

    def _java(self, java: str, jars: str, main: str, *args: str, heap: Sequence[str] = ()) -> list[str]:
        return [java, *heap, "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.root / 'log4j2.properties'}", "-cp", jars, main, *args]

    def _format(self, java: str, jars: str) -> None:
        formats = [
            (node, subprocess.Popen(
                self._java(java, jars, "kafka.tools.StorageTool", "format", f"--cluster-id={self.cluster_id}",
                           "-c", str(node.config), "--ignore-formatted", heap=("-Xmx256m", "-XX:TieredStopAtLevel=1")),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                preexec_fn=die_with_parent()))  # noqa: PLW1509 - only calls prctl, resolved beforehand
            for node in self.nodes if not (node.data / "meta.properties").exists()
        ]
        for node, process in formats:
            out, _ = process.communicate(timeout=120)
            if process.returncode != 0:
                raise LocalKafkaError(f"formatting {node.data} failed (exit {process.returncode}):"
                                      f" {out.strip().splitlines()[-1] if out.strip() else 'no output'}")

    def _spawn(self, node: KafkaNode, java: str | None = None, jars: str | None = None) -> None:
        java, jars = java or find_java(), jars or classpath()
        with open(node.log, "ab") as log:
            node.process = subprocess.Popen(
                self._java(java, jars, "kafka.Kafka", str(node.config), heap=self.jvm_options),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - only calls prctl, resolved beforehand
            )

    def wait_ready(self, wait_s: float = 120.0) -> None:
        """Return once every running node is a broker of the cluster's metadata; raise naming the node that is not."""
        expected = {node.node_id for node in self.nodes if node.alive()}
        deadline = time.monotonic() + wait_s
        seen: set[int] = set()
        while time.monotonic() < deadline:
            for node in self.nodes:
                if node.process is not None and not node.alive():
                    raise LocalKafkaError(f"Apache Kafka node {node.node_id} exited at start with code"
                                          f" {node.process.returncode}: {_cause(node.log)}")
            seen = _run(_broker_ids(self.bootstrap_servers))
            if expected <= seen:
                return
            time.sleep(0.5)
        missing = sorted(expected - seen)
        raise LocalKafkaError(f"Apache Kafka node(s) {missing} did not answer metadata within {wait_s:.0f} s;"
                              f" see {self.nodes[missing[0] - 1].log if missing else self.root}")

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        """Signal one node and wait for it to exit (SIGKILL: a crash; SIGTERM: a controlled shutdown)."""
        node = self.nodes[node_id - 1]
        if node.process is not None:
            stop_process(node.process, 30.0, sig)

    def restart(self, node_id: int, wait_s: float = 120.0) -> None:
        """Start a stopped node again on its log and ports, and wait until the cluster sees it."""
        self._spawn(self.nodes[node_id - 1])
        self.wait_ready(wait_s)

    def alive(self) -> bool:
        return bool(self.nodes) and all(node.alive() for node in self.nodes)

    @property
    def pids(self) -> dict[int, int]:
        return {node.node_id: node.process.pid for node in self.nodes if node.alive()}  # type: ignore[union-attr]

    def stop(self, grace_s: float = 8.0) -> None:
        """SIGTERM every node (a controlled shutdown), then SIGKILL whatever still runs after grace_s."""
        running = [node.process for node in self.nodes if node.alive()]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        deadline = time.monotonic() + grace_s
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Kafka binds: TIME_WAIT is no obstacle
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cause(log: Path) -> str:
    """The line of a node's log that says why it stopped (a taken port named as such)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    if "Address already in use" in text:
        return f"a port it was given is taken; see {log}"
    errors = [line for line in text.splitlines() if " ERROR " in line or "Exception" in line]
    return f"{errors[-1][:300] if errors else 'no error logged'}; see {log}"


def _run(coro):  # noqa: ANN001, ANN202 - any coroutine
    """Run a coroutine to completion from synchronous code, also when the caller's thread has a running loop."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(coro)))
    thread.start()
    thread.join()
    return result[0]


async def _broker_ids(bootstrap_servers: str) -> set[int]:
    """The node ids the cluster's metadata lists (empty while no node answers)."""
    from aiokafka.admin import AIOKafkaAdminClient

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=5000)
    try:
        await asyncio.wait_for(admin.start(), 5)
        cluster = await asyncio.wait_for(admin.describe_cluster(), 5)
        return {broker["node_id"] for broker in cluster["brokers"]}
    except Exception:  # noqa: BLE001 - not up yet, whatever the client says
        return set()
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
