"""What only a real Apache Kafka has: brokers that die and come back, compacted changelogs, a log kept on disk.

These run in the Apache Kafka lane (BATON_TEST_BROKER=kafka), each on a cluster of its own started here by
streams.local_kafka: three nodes, replication factor 3, min.insync.replicas 2, producers with acks=all.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from agents.tenants import load_tenants
from streams.auth import issue_token
from streams.domains.conversations.demo import message_delivery, post_signed
from streams.embedded import child_env
from streams.local_kafka import LocalKafka, LocalKafkaError
from streams.runtime import Runtime
from streams.settings import Settings
from streams.topics import changelog_topic, log_end_offsets, topic_partitions
from tests.conftest import backends, fresh_database, settings_for
from tests.fixtures.apis import FakeApis
from tests.fixtures.pipeline import replay_verify
from tests.fixtures.runtime import alive, running_dev
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.skipif(backends().broker != "local-kafka",
                                reason="runs in the Apache Kafka lane (BATON_TEST_BROKER=kafka)")

CONTACTS, PER_CONTACT = 8, 8
USERS, PER_USER = 4, 3


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalKafka]:
    with LocalKafka(tmp_path / "kafka", size=3).start() as kafka:
        yield kafka


@pytest.fixture
def fake() -> Iterator[FakeApis]:
    apis = FakeApis(lane="support")  # support replies name a ticket derived from the message: unique texts
    try:
        yield apis
    finally:
        apis.close()


def contact(c: int) -> str:
    return f"3477{c:07d}"


def sessions(settings: Settings) -> dict[str, tuple[int, int, int, int, int]]:
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute("SELECT contact, messages_received, duplicates_dropped, replies_requested, replies_sent,"
                            " replies_failed FROM conversation_sessions").fetchall()
    return {name: tuple(rest) for name, *rest in rows}


def deliver(client: httpx.Client, settings: Settings, body: dict) -> int:
    """POST a signed webhook as WhatsApp does: again on anything but 200 (a bounded number of times)."""
    for _ in range(30):
        try:
            status = post_signed(client, settings, body).status_code
        except httpx.HTTPError:
            status = 0
        if status == 200:
            return status
        time.sleep(1)
    return status


def test_webhooks_and_outbound_flow_through_a_broker_crash_and_a_rolling_restart(
        cluster: LocalKafka, fake: FakeApis, postgres_server_url: str, tmp_path: Path) -> None:
    acme = load_tenants(Settings().tenants_file).by_id["acme"]
    with fresh_database(postgres_server_url) as url, Runtime(settings_for(
            cluster.bootstrap_servers, url, tmp_path / "baton", api_port=0, topic_replication=3,
            whatsapp_access_token="graph-token", whatsapp_api_base=fake.url,
            anthropic_api_key="sk-ant-fake", anthropic_base_url=fake.url)).start() as runtime:
        settings = runtime.settings
        token = issue_token(settings, "acme")
        statuses: list[int] = []
        outbound_ids: list[str] = []
        with httpx.Client(base_url=runtime.api_url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as api:
            for u in range(USERS):
                body = {"timezone": "Europe/Madrid", "quiet_hours": {"start": "00:00", "end": "00:00"},
                        "daily_limit": 50, "contact": contact(100 + u)}
                assert api.put(f"/v1/users/u{u}/preferences", json=body).status_code == 202

            def flow() -> None:
                with httpx.Client(base_url=runtime.api_url, timeout=60) as client:
                    for n in range(PER_CONTACT):
                        for c in range(CONTACTS):
                            body = message_delivery(acme, contact(c), f"C{c}", f"wamid.kafka.{c}.{n}",
                                                    f"consulta {n}", 1_790_000_000 + 60 * n)
                            statuses.append(deliver(client, settings, body))
                        if n < PER_USER:
                            for u in range(USERS):
                                response = api.post("/v1/outbound", json={
                                    "user_id": f"u{u}", "agent_id": "saga", "idempotency_key": f"k{u}.{n}",
                                    "message_data": {"type": "text", "text": f"update {n} for u{u}"}})
                                if response.status_code == 202:
                                    outbound_ids.append(response.json()["message_id"])
                        time.sleep(0.5)  # a steady trickle that spans the faults (pacing only; nothing is timed)

            poster = threading.Thread(target=flow, daemon=True)
            poster.start()
            eventually(lambda: len(fake.sends) >= 5, "replies sent before the first fault", within_s=120)
            cluster.kill(2)  # a crash: no controlled shutdown
            eventually(lambda: len(statuses) >= 3 * CONTACTS, "webhooks accepted while a broker is down",
                       within_s=120)
            cluster.restart(2)
            for node in (1, 2, 3):  # a rolling restart, one controlled shutdown at a time
                cluster.kill(node, signal.SIGTERM)
                cluster.restart(node)
            poster.join(300)
            assert not poster.is_alive()
            assert Counter(statuses) == {200: CONTACTS * PER_CONTACT}
            assert len(outbound_ids) == USERS * PER_USER

            def settled():
                rows = sessions(settings)
                done = len(rows) == CONTACTS and all(
                    r[0] == PER_CONTACT and r[2] == PER_CONTACT and r[3] + r[4] == PER_CONTACT for r in rows.values())
                return rows if done else None

            rows = eventually(settled, "every message folded once and answered", within_s=240)
            assert all(r[1] == 0 for r in rows.values()), rows  # nothing folded twice as a duplicate either
            def all_sent():
                status = {m: api.get(f"/v1/outbound/messages/{m}").json()["status"] for m in outbound_ids}
                return status if set(status.values()) == {"sent"} else None

            assert len(eventually(all_sent, "every outbound message sent", within_s=240)) == USERS * PER_USER
        sent = fake.sent()
        replies = {identity: times for identity, times in sent.items() if identity[0] in rows}
        assert max(replies.values()) == 1  # no reply reached WhatsApp twice
        assert sum(r[3] for r in rows.values()) <= len(replies)
        # Each queued outbound message reached its user once (the fake model renders every one alike).
        outbound = Counter(to for (to, _), times in sent.items() for _ in range(times) if to not in rows)
        assert outbound == {contact(100 + u): PER_USER for u in range(USERS)}
        verify = replay_verify(settings)
        assert verify.returncode == 0, verify.stdout + verify.stderr


async def compact(settings: Settings, topic: str) -> None:
    """Make the broker compact a topic now: tiny segments, any dirty ratio, no lag."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {
            "cleanup.policy": "compact", "segment.ms": "100", "min.cleanable.dirty.ratio": "0.001",
            "min.compaction.lag.ms": "0", "delete.retention.ms": "0"})])
    finally:
        await admin.close()


async def readable_records(settings: Settings, topic: str) -> tuple[int, int]:
    """(records a reader of the whole topic gets, the topic's end offset summed over partitions)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, [topic])
        consumer.assign(tps)
        ends = await log_end_offsets(settings, tps)
        await consumer.seek_to_beginning(*tps)
        count, deadline = 0, time.monotonic() + 60
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]] and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            count += sum(len(records) for records in batch.values())
        return count, sum(ends.values())
    finally:
        await consumer.stop()


def test_a_worker_restarted_on_compacted_changelogs_recovers_its_tables_exactly(
        bootstrap_servers: str, postgres_server_url: str, tmp_path: Path) -> None:
    acme = load_tenants(Settings().tenants_file).by_id["acme"]
    rounds = 12
    with fresh_database(postgres_server_url) as url, Runtime(settings_for(
            bootstrap_servers, url, tmp_path / "baton", api_port=0)).start() as runtime:
        settings = runtime.settings
        changelog = changelog_topic(settings, "sessions")
        asyncio.run(compact(settings, changelog))
        with httpx.Client(base_url=runtime.api_url, timeout=30) as client:
            def send(n: int) -> None:
                for c in range(3):
                    body = message_delivery(acme, contact(c), f"C{c}", f"wamid.compact.{c}.{n}", f"hola {n}",
                                            1_790_000_000 + 60 * n)
                    assert post_signed(client, settings, body).status_code == 200

            for n in range(rounds):
                send(n)
                eventually(lambda n=n: all(r[0] == n + 1 for r in sessions(settings).values())
                           and len(sessions(settings)) == 3, f"round {n} folded")
            # The cleaner keeps the last state per key and drops the rest of the closed segments.
            read, end = eventually(lambda: (r if (r := asyncio.run(readable_records(settings, changelog)))[0]
                                            < r[1] // 2 else None), "the sessions changelog compacted", within_s=120)
            assert read < end
            runtime.kill("worker")
            shutil.rmtree(settings.worker_data_dir or settings.data_dir / "worker", ignore_errors=True)
            runtime.spawn("worker")
            send(rounds)
            def folded_after_restart():
                rows = sessions(settings)
                return rows if all(r[0] == rounds + 1 for r in rows.values()) else None

            rows = eventually(folded_after_restart, "the message after the restart folded onto the recovered state")
        # Recovered exactly: no message counted twice or lost, none taken for a duplicate.
        assert {c: (r[0], r[1]) for c, r in rows.items()} == {contact(c): (rounds + 1, 0) for c in range(3)}
        verify = replay_verify(settings)
        assert verify.returncode == 0, verify.stdout + verify.stderr


def test_dev_on_local_kafka_keeps_its_log_and_read_models_across_a_restart(tmp_path: Path) -> None:
    settings = Settings()  # the dev secrets `baton dev` signs with
    acme = load_tenants(settings.tenants_file).by_id["acme"]

    def received(dev) -> dict[str, int]:
        token = issue_token(settings, "acme")
        rows = httpx.get(f"{dev.api_url()}/v1/conversations", headers={"Authorization": f"Bearer {token}"},
                         timeout=10).json()
        return {row["contact"]: row["messages_received"] for row in rows["items"]}

    def send(dev, n: int) -> None:
        with httpx.Client(base_url=dev.api_url(), timeout=30) as client:
            for c in range(2):
                body = message_delivery(acme, contact(c), f"C{c}", f"wamid.dev.{c}.{n}", f"hola {n}",
                                        1_790_000_000 + 60 * n)
                assert post_signed(client, settings, body).status_code == 200

    same_topics = {"BATON_APP_ID": "baton-kept", "BATON_TOPIC_PREFIX": "kept."}
    with running_dev(tmp_path, broker="kafka", **same_topics) as dev:
        assert "(kafka)" in dev.output()
        send(dev, 0)
        send(dev, 1)
        eventually(lambda: received(dev) == {contact(0): 2, contact(1): 2}, "two messages per contact")
        dev.process.send_signal(signal.SIGINT)
        dev.process.wait(30)
    with running_dev(tmp_path, broker="kafka", **same_topics) as dev:
        assert received(dev) == {contact(0): 2, contact(1): 2}  # the read models were kept with the log
        send(dev, 2)
        eventually(lambda: received(dev) == {contact(0): 3, contact(1): 3}, "the third message on the kept state")
        verify = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "--verify"],
                                env=child_env(BATON_DATA_DIR=str(dev.data_dir), COLUMNS="200", **same_topics),
                                capture_output=True, text=True, timeout=300, check=False)
        assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_launcher_names_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    only_java = tmp_path / "bin"
    only_java.mkdir()
    (only_java / "java").symlink_to(shutil.which("java"))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(LocalKafkaError, match=r"^java not found on PATH: .*\(e\.g\. apt-get install openjdk"):
        LocalKafka(tmp_path / "nojava").start()
    monkeypatch.setenv("PATH", str(only_java))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no class path cached yet: Maven is needed
    with pytest.raises(LocalKafkaError, match=r"^mvn not found on PATH: Maven fetches Apache Kafka .*apt-get install maven"):
        LocalKafka(tmp_path / "nomvn").start()


def test_a_node_that_does_not_come_up_in_time_is_an_error_and_is_stopped(tmp_path: Path) -> None:
    kafka = LocalKafka(tmp_path / "slow")
    with pytest.raises(LocalKafkaError, match=r"did not answer metadata within 0 s; see .*server\.log"):
        kafka.start(wait_s=0.0)
    assert kafka.nodes and not any(node.alive() for node in kafka.nodes)


def test_every_kafka_jvm_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    script = ("import json, sys, time; from pathlib import Path; from streams.local_kafka import LocalKafka; "
              f"kafka = LocalKafka(Path({str(tmp_path / 'orphans')!r}), size=2).start(); "
              "print(json.dumps(list(kafka.pids.values())), flush=True); time.sleep(600)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = json.loads(parent.stdout.readline())  # type: ignore[union-attr]
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
        parent.kill()  # SIGKILL: the parent gets no chance to stop anything
        parent.wait(10)
        eventually(lambda: not any(alive(pid) for pid in pids), "both JVMs gone after their parent's SIGKILL",
                   within_s=30)
    finally:
        parent.kill()
