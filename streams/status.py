"""`baton status`: each role's health, lag per domain, dead letters, the last event of each domain.

Lag is counted from the broker (the worker group's committed offsets and the projector's stored offsets against
the exact log ends, `streams.topics.log_end_offsets`), so it is right on the embedded broker too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import psycopg

from projections.projector import CONSUMER as PROJECTOR_CONSUMER
from projections.projector import load_offsets
from streams.registry import load_domains
from streams.settings import Settings
from streams.topics import log_consumer, log_end_offsets, topic_partitions


@dataclass(frozen=True, slots=True)
class RoleHealth:
    role: str
    up: bool
    detail: str
    state: str = ""  # up, down, restarting (exited; `baton dev` starts it again after its backoff)
    restarts: int = 0  # by `baton dev` since it started
    last_exit_code: int | None = None
    last_exit_at: datetime | None = None

    def __post_init__(self) -> None:
        if not self.state:
            object.__setattr__(self, "state", "up" if self.up else "down")


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
        found = [f"{r.role} is {'restarting' if r.state == 'restarting' else 'down'}: {r.detail}"
                 for r in self.roles if not r.up]
        found += [f"{d.domain}: worker lag {d.worker_lag} > {max_lag}" for d in self.domains if d.worker_lag > max_lag]
        found += [f"{d.domain}: projector lag {d.projector_lag} > {max_lag}" for d in self.domains
                  if d.projector_lag > max_lag]
        return found


async def collect_status(settings: Settings, *, api_detail: str | None = None) -> Status:
    """One reading of the whole system; api_detail: the API asks, so it is up (role_health)."""
    status = Status(roles=await role_health(settings, api_detail=api_detail))
    domains = load_domains(settings)
    consumer = log_consumer(settings, f"{settings.app_id}-status", group_id=settings.app_id)
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


async def role_health(settings: Settings, *, api_detail: str | None = None) -> list[RoleHealth]:
    """Processes of a running `baton dev` (roles.json: state, restarts and last exit per role; pids.json: those
    running; metrics.json: every role it runs), then the API: up with api_detail when the API itself asks (it is
    answering), else by /healthz without blocking."""
    roles: list[RoleHealth] = []
    pids = _read(settings.data_dir / "pids.json")
    history = _read(settings.data_dir / "roles.json")
    supervised = _alive(pids["supervisor"]) if "supervisor" in pids else False
    expected = [r for r in dict.fromkeys([*pids, *history, *_read(settings.data_dir / "metrics.json")]) if r != "api"]
    roles += [_role(role, pids.get(role), history.get(role, {}), supervised) for role in expected]
    if api_detail is not None:
        roles.append(_role("api", None, history.get("api", {}), supervised, api_detail, True))
        return roles
    url = f"http://{settings.api_host}:{settings.api_port}/healthz"
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            answer = await client.get(url)
        up, detail = answer.status_code == 200, f"{url} answered {answer.status_code}"
    except httpx.HTTPError as exc:
        up, detail = False, f"{url}: {type(exc).__name__}"
    roles.append(_role("api", None, history.get("api", {}), supervised, detail, up))
    return roles


def _role(role: str, pid: int | None, history: dict, supervised: bool, detail: str | None = None,
          up: bool | None = None) -> RoleHealth:
    exit_code, exited_at = history.get("last_exit_code"), history.get("last_exit_at")
    last = dict(restarts=history.get("restarts", 0), last_exit_code=exit_code,
                last_exit_at=datetime.fromisoformat(exited_at) if exited_at else None)
    exited = f"exited with code {exit_code} at {exited_at[:19].replace('T', ' ')} UTC" if exited_at else ""
    if history.get("state") == "restarting" and supervised and (up is None or not up):
        due = history.get("restart_at") or ""
        return RoleHealth(role, False, f"{exited}; restart {last['restarts'] + 1} due at"
                                       f" {due[11:19]} UTC (backoff {history.get('backoff_s', 0):g} s)",
                          "restarting", **last)
    if up is None:
        up = pid is not None and _alive(pid)
        detail = "not running" if pid is None else f"pid {pid}"
    if exited:
        detail = f"{detail}; {last['restarts']} restart(s), last {exited}"
    return RoleHealth(role, up, detail or "", **last)


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
