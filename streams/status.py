"""`baton status`: each role's health, lag per domain, dead letters, the last event of each domain.

Lag is counted from the broker (the worker group's committed offsets and the projector's stored offsets against
the exact log ends, `streams.topics.log_end_offsets`), so it is right on the embedded broker too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime

import httpx
import psycopg
from aiokafka import AIOKafkaConsumer

from projections.projector import CONSUMER as PROJECTOR_CONSUMER
from projections.projector import load_offsets
from streams.domains import load_domains
from streams.settings import Settings
from streams.topics import log_end_offsets, topic_partitions


@dataclass(frozen=True, slots=True)
class RoleHealth:
    role: str
    up: bool
    detail: str


@dataclass(frozen=True, slots=True)
class DomainStatus:
    domain: str
    records: int  # on the domain's topic
    worker_lag: int  # records the worker group has not committed
    projector_lag: int  # records the projector has not stored
    last_event_at: datetime | None


@dataclass(slots=True)
class Status:
    roles: list[RoleHealth] = field(default_factory=list)
    domains: list[DomainStatus] = field(default_factory=list)
    dead_letters: int = 0

    def problems(self, max_lag: int) -> list[str]:
        """Why a script should worry: roles down, lag above max_lag."""
        found = [f"{r.role} is down: {r.detail}" for r in self.roles if not r.up]
        found += [f"{d.domain}: worker lag {d.worker_lag} > {max_lag}" for d in self.domains if d.worker_lag > max_lag]
        found += [f"{d.domain}: projector lag {d.projector_lag} > {max_lag}" for d in self.domains
                  if d.projector_lag > max_lag]
        return found


async def collect_status(settings: Settings) -> Status:
    """One reading of the whole system."""
    status = Status(roles=_roles(settings))
    domains = load_domains(settings)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=settings.app_id,
                                enable_auto_commit=False, client_id=f"{settings.app_id}-status")
    await consumer.start()
    try:
        topics = {d.name: settings.topic(d.name) for d in domains}
        tps = await topic_partitions(consumer, [*topics.values(), settings.deadletter_topic])
        ends = await log_end_offsets(settings, tps)
        starts = await consumer.beginning_offsets(tps)
        committed = {tp: await consumer.committed(tp) for tp in tps if tp.topic != settings.deadletter_topic}
    finally:
        await consumer.stop()
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        stored = await load_offsets(conn, PROJECTOR_CONSUMER)
        last = {}
        for topic in topics.values():  # one index lookup per domain (events_topic_time)
            cur = await conn.execute("SELECT max(occurred_at) FROM events WHERE topic = %s", (topic,))
            (last[topic],) = await cur.fetchone()
    status.dead_letters = sum(ends[tp] - starts[tp] for tp in tps if tp.topic == settings.deadletter_topic)
    for name, topic in topics.items():
        mine = [tp for tp in tps if tp.topic == topic]
        status.domains.append(DomainStatus(
            domain=name,
            records=sum(ends[tp] - starts[tp] for tp in mine),
            worker_lag=sum(ends[tp] - max(committed[tp] or starts[tp], starts[tp]) for tp in mine),
            projector_lag=sum(ends[tp] - max(stored.get((topic, tp.partition), starts[tp]), starts[tp]) for tp in mine),
            last_event_at=last.get(topic),
        ))
    return status


def _roles(settings: Settings) -> list[RoleHealth]:
    """Processes of a running `baton dev` by pid (pids.json: those running; metrics.json: every role it runs),
    and the API by /healthz."""
    roles: list[RoleHealth] = []
    pids = _read(settings.data_dir / "pids.json")
    expected = [r for r in dict.fromkeys([*pids, *_read(settings.data_dir / "metrics.json")]) if r != "api"]
    for role in expected:
        pid = pids.get(role)
        roles.append(RoleHealth(role, False, "not running") if pid is None
                     else RoleHealth(role, _alive(pid), f"pid {pid}"))
    url = f"http://{settings.api_host}:{settings.api_port}/healthz"
    try:
        answer = httpx.get(url, timeout=2)
        roles.append(RoleHealth("api", answer.status_code == 200, f"{url} answered {answer.status_code}"))
    except httpx.HTTPError as exc:
        roles.append(RoleHealth("api", False, f"{url}: {type(exc).__name__}"))
    return roles


def _read(path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
