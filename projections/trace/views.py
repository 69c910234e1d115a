"""Trace one message across the log: the causal chain of events around any id, from the events archive.

An id may be an event id, a correlation id, the last segment of a stream id (a task code, an execution id, a
contact) or an id inside a payload (a WhatsApp message id, an outbound message id, ...). The chain grows from
the events it names: their causes and effects (`causation_id`), everything sharing their correlation id, and
events naming the same message ids in their payload (a delivery status names the reply it reports on).
"""

from __future__ import annotations

import heapq
import itertools
import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from projections.connections import Source, connection

# Payload fields that name one message across events (a reply's WhatsApp id in its later delivery status).
LINKING_FIELDS = ("whatsapp_message_id", "message_id")
# Payload fields an operator may look an event up by.
LOOKUP_FIELDS = (*LINKING_FIELDS, "execution_id", "task_code", "code", "intent_id", "fingerprint")
SUMMARY_FIELDS = ("text", "reason", "failure_reason", "reply_text", "status", "lane", "decision", "phase", "error",
                  "intent", "title")
MAX_ROUNDS = 6


class Hop(BaseModel):
    event_id: uuid.UUID
    type: str
    stream_id: str
    actor: str
    occurred_at: datetime
    gap_ms: float | None  # since the previous hop, by event time
    depth: int  # causal depth within the chain, through causes shown above the hop (0: its cause is not above it)
    causation_id: uuid.UUID | None
    correlation_id: uuid.UUID
    summary: str | None
    topic: str  # log position: where times tie, hops follow it within a partition
    partition: int
    offset: int


class Trace(BaseModel):
    id: str
    hops: list[Hop]
    truncated: bool


_COLUMNS = ("event_id, type, stream_id, actor, occurred_at, recorded_at, causation_id, correlation_id, payload,"
            ' topic, partition, "offset"')


async def trace(source: Source, tenant_id: str | None, ident: str, limit: int = 500) -> Trace:
    """The causal chain around `ident` within a tenant (every tenant when None), oldest first."""
    as_uuid = _uuid(ident)
    found: dict[uuid.UUID, tuple] = {}
    async with connection(source) as conn:
        cur = await conn.execute(
            f"SELECT {_COLUMNS} FROM events WHERE (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s) AND ("
            " event_id = %(uuid)s OR correlation_id = %(uuid)s OR split_part(stream_id, ':', -1) = %(id)s OR "
            + " OR ".join(f"payload->>'{f}' = %(id)s" for f in LOOKUP_FIELDS) + ") LIMIT %(limit)s",
            {"tenant": tenant_id, "uuid": as_uuid, "id": ident, "limit": limit},
        )
        frontier = await cur.fetchall()
        for _ in range(MAX_ROUNDS):
            new = [row for row in frontier if row[0] not in found]
            if not new or len(found) >= limit:
                break
            found.update((row[0], row) for row in new)
            ids = [row[0] for row in new]
            causes = [row[6] for row in new if row[6] is not None]
            correlations = list({row[7] for row in new})
            linked = list({str(v) for row in new for f in LINKING_FIELDS if (v := row[8].get(f)) is not None})
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s) AND ("
                " event_id = ANY(%(causes)s) OR causation_id = ANY(%(ids)s) OR correlation_id = ANY(%(corr)s) OR "
                + " OR ".join(f"payload->>'{f}' = ANY(%(linked)s)" for f in LINKING_FIELDS) + ") LIMIT %(limit)s",
                {"tenant": tenant_id, "causes": causes, "ids": ids, "corr": correlations, "linked": linked,
                 "limit": limit},
            )
            frontier = await cur.fetchall()
    return Trace(id=ident, hops=_hops(found), truncated=len(found) >= limit)


def _hops(found: dict[uuid.UUID, tuple]) -> list[Hop]:
    hops: list[Hop] = []
    previous: datetime | None = None
    depth: dict[uuid.UUID, int] = {}  # of the hops above
    for row in _ordered(found):
        event_id, kind, stream_id, actor, occurred_at, _recorded, causation_id, correlation_id, payload = row[:9]
        # Indented only as a true causal child: under a cause already shown (an effect stamped earlier than its
        # cause, or whose cause is not in the chain, starts at 0).
        depth[event_id] = depth[causation_id] + 1 if causation_id in depth else 0
        gap = None if previous is None else (occurred_at - previous).total_seconds() * 1000
        previous = occurred_at
        hops.append(Hop(event_id=event_id, type=kind, stream_id=stream_id, actor=actor, occurred_at=occurred_at,
                        gap_ms=gap, depth=depth[event_id], causation_id=causation_id,
                        correlation_id=correlation_id, summary=_summary(payload),
                        topic=row[9], partition=row[10], offset=row[11]))
    return hops


def _ordered(found: dict[uuid.UUID, tuple]) -> list[tuple]:
    """Oldest event time first; events of equal time in log order within each partition and after their causes.

    Offsets order one partition only; across partitions the producer's record time decides, then the position.
    """
    ordered: list[tuple] = []
    by_time = sorted(found.values(), key=lambda r: r[4])
    for _, tied in itertools.groupby(by_time, key=lambda r: r[4]):
        group = {r[0]: r for r in tied}
        after: dict[uuid.UUID, list[uuid.UUID]] = {i: [] for i in group}  # what must wait for each event
        waiting = dict.fromkeys(group, 0)
        partitions: dict[tuple[str, int], list[tuple]] = {}
        for r in group.values():
            partitions.setdefault((r[9], r[10]), []).append(r)
            if r[6] in group and r[6] != r[0]:
                after[r[6]].append(r[0])
                waiting[r[0]] += 1
        for rows in partitions.values():
            rows.sort(key=lambda r: r[11])
            for earlier, later in itertools.pairwise(rows):
                after[earlier[0]].append(later[0])
                waiting[later[0]] += 1

        def rank(r: tuple) -> tuple:
            return r[5], r[9], r[10], r[11], str(r[0])

        ready = [rank(group[i]) + (i,) for i, n in waiting.items() if n == 0]
        heapq.heapify(ready)
        while ready or any(n > 0 for n in waiting.values()):
            if not ready:  # a cycle, which Baton never writes: release the earliest-ranked event
                stuck = min((i for i, n in waiting.items() if n > 0), key=lambda i: rank(group[i]))
                waiting[stuck] = 0
                heapq.heappush(ready, rank(group[stuck]) + (stuck,))
            event_id = heapq.heappop(ready)[-1]
            waiting[event_id] = -1
            ordered.append(group[event_id])
            for later in after[event_id]:
                if waiting[later] > 0:
                    waiting[later] -= 1
                    if waiting[later] == 0:
                        heapq.heappush(ready, rank(group[later]) + (later,))
    return ordered


def _summary(payload: dict[str, Any]) -> str | None:
    for field in SUMMARY_FIELDS:
        if isinstance(value := payload.get(field), str | int | float) and str(value):
            return f"{field}: {str(value)[:120]}"
    return None


def _uuid(ident: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(ident)
    except ValueError:
        return None
