"""Read-only learning queries: a learner's status, planned sessions and events from the archive; one tenant each."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from agents.learning.fold import current_streak, next_position, next_run_at
from agents.zones import zone as tz_zone
from projections.connections import Source, connection


class PlanSummaryView(BaseModel):
    title: str
    description: str
    steps: list[str]


class SignalQualityView(BaseModel):
    available: bool
    fresh: bool


class DayRunView(BaseModel):
    """The plan of a session, as day.run answers it."""

    session_id: uuid.UUID
    plan_md: str
    plan_json_summary: PlanSummaryView
    degraded_mode: bool
    cache_hits: int
    cache_misses: int
    signal_quality: dict[str, SignalQualityView]


class IntentView(BaseModel):
    id: uuid.UUID
    topic: str
    depth: str
    end_goal: str
    time_per_day_min: int
    user_tz: str
    created_at: datetime


class CompletionView(BaseModel):
    completion_time_min: int
    confidence: int
    notes: str
    completed_at: datetime


class LatestSessionView(BaseModel):
    id: uuid.UUID
    week: int
    day: int
    topic: str
    plan_title: str
    degraded_mode: bool
    created_at: datetime
    completion: CompletionView | None


class SignalFreshnessView(BaseModel):
    available: bool
    fresh: bool
    last_updated: datetime | None


class NextRunView(BaseModel):
    week: int
    day: int
    estimated_time: datetime
    timezone: str


class LearningStatsView(BaseModel):
    total_sessions: int
    completed_sessions: int
    total_time_min: int
    average_confidence: float = Field(description="Mean confidence of completed sessions, one decimal; 0 before any.")
    current_streak_days: int = Field(description="Consecutive days (learner's zone) with a completion, ending today or yesterday.")


class StatusView(BaseModel):
    """Everything the front end shows about a learner."""

    user_id: str
    active_intent: IntentView | None
    latest_session: LatestSessionView | None
    signal_freshness: dict[str, SignalFreshnessView]
    next_scheduled_run: NextRunView | None
    learning_stats: LearningStatsView


_LEARNER_ROWS = """
SELECT l.learner, l.active_intent, l.latest_session, l.total_sessions, l.completed_sessions, l.total_time_min,
       l.confidence_sum, l.completion_days,
       (SELECT coalesce(json_agg(json_build_object('agent', g.agent, 'available', g.available,
                                                   'last_updated', g.last_updated)), '[]')
        FROM learning_signals g WHERE g.stream_id = l.stream_id AND g.tenant_id = l.tenant_id) AS signals
FROM learning_learners l
"""
_STATUS = _LEARNER_ROWS + "WHERE l.stream_id = %(stream)s AND l.tenant_id = %(tenant)s"
_LEARNERS = _LEARNER_ROWS + "WHERE l.tenant_id = %(tenant)s ORDER BY l.learner LIMIT %(limit)s"


async def learner_status(source: Source, tenant_id: str, stream_id: str, learner: str, *, now: datetime,
                         agents: Sequence[str], freshness: dict[str, Any], run_hour_local: int,
                         days_per_week: int) -> StatusView:
    """A learner's status at `now`; freshness maps each agent to its window (timedelta)."""
    async with connection(source) as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_STATUS, {"stream": stream_id, "tenant": tenant_id})
        row = await cur.fetchone()
    return status_of(row, learner, now=now, agents=agents, freshness=freshness, run_hour_local=run_hour_local,
                     days_per_week=days_per_week)


async def list_learners(source: Source, tenant_id: str, *, now: datetime, agents: Sequence[str],
                        freshness: dict[str, Any], run_hour_local: int, days_per_week: int,
                        limit: int = 200) -> list[StatusView]:
    """Every learner's status at `now` (the tenant's operators' view), by learner id."""
    async with connection(source) as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_LEARNERS, {"tenant": tenant_id, "limit": limit})
        rows = await cur.fetchall()
    return [status_of(row, row["learner"], now=now, agents=agents, freshness=freshness,
                      run_hour_local=run_hour_local, days_per_week=days_per_week) for row in rows]


def status_of(row: dict[str, Any] | None, learner: str, *, now: datetime, agents: Sequence[str],
              freshness: dict[str, Any], run_hour_local: int, days_per_week: int) -> StatusView:
    """The status a learner row gives at `now` (pure: the clock is an argument)."""
    row = row or {"active_intent": None, "latest_session": None, "total_sessions": 0, "completed_sessions": 0,
                  "total_time_min": 0, "confidence_sum": 0, "completion_days": [], "signals": []}
    intent = IntentView.model_validate(row["active_intent"]) if row["active_intent"] else None
    latest = LatestSessionView.model_validate(row["latest_session"]) if row["latest_session"] else None
    signals = {s["agent"]: s for s in row["signals"]}
    signal_freshness = {}
    for agent in agents:
        s = signals.get(agent)
        updated = datetime.fromisoformat(s["last_updated"]) if s and s["last_updated"] else None
        signal_freshness[agent] = SignalFreshnessView(
            available=bool(s and s["available"]), last_updated=updated,
            fresh=bool(s and s["available"] and updated is not None and now - updated < freshness[agent]))
    zone = intent.user_tz if intent else "UTC"
    next_run = None
    if intent is not None:
        week, day = next_position(latest.week, latest.day, days_per_week) if latest else (1, 1)
        next_run = NextRunView(week=week, day=day, estimated_time=next_run_at(now, zone, run_hour_local),
                               timezone=zone)
    completed = row["completed_sessions"]
    stats = LearningStatsView(
        total_sessions=row["total_sessions"], completed_sessions=completed, total_time_min=row["total_time_min"],
        average_confidence=round(row["confidence_sum"] / completed, 1) if completed else 0.0,
        current_streak_days=current_streak(row["completion_days"], now.astimezone(tz_zone(zone)).date()),
    )
    return StatusView(user_id=learner, active_intent=intent, latest_session=latest,
                      signal_freshness=signal_freshness, next_scheduled_run=next_run, learning_stats=stats)


async def events_by_id(source: Source, tenant_id: str, event_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, dict]:
    """Archived events of the tenant among `event_ids`: id -> {type, payload}."""
    async with connection(source) as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute("SELECT event_id, type, payload FROM events WHERE event_id = ANY(%s) AND tenant_id = %s",
                          (list(event_ids), tenant_id))
        return {row["event_id"]: row for row in await cur.fetchall()}


async def planned_session(source: Source, tenant_id: str, stream_id: str, session_id: uuid.UUID) -> dict | None:
    """The day.planned payload of one of the stream's sessions, or None (unknown, or another learner's)."""
    async with connection(source) as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT payload FROM events WHERE tenant_id = %s AND stream_id = %s AND type = 'learning.day.planned'"
            " AND payload->>'session_id' = %s LIMIT 1", (tenant_id, stream_id, str(session_id)))
        row = await cur.fetchone()
    return row["payload"] if row else None


async def event_offset(source: Source, tenant_id: str, stream_id: str, event_id: uuid.UUID | None) -> int | None:
    """The log offset of one of the stream's events, or (event_id None) of its newest archived event (-1: none)."""
    async with connection(source) as conn:
        if event_id is None:
            cur = await conn.execute('SELECT coalesce(max("offset"), -1) FROM events WHERE tenant_id = %s'
                                     " AND stream_id = %s", (tenant_id, stream_id))
        else:
            cur = await conn.execute('SELECT "offset" FROM events WHERE tenant_id = %s AND stream_id = %s'
                                     " AND event_id = %s", (tenant_id, stream_id, event_id))
        row = await cur.fetchone()
    return row[0] if row else None


async def events_after(source: Source, tenant_id: str, stream_id: str, offset: int, types: Sequence[str] | None,
                       limit: int = 500) -> list[dict]:
    """The stream's archived events after a log offset, oldest first (a stream lives in one partition)."""
    async with connection(source) as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            'SELECT event_id, type, occurred_at, payload, "offset" FROM events WHERE tenant_id = %s'
            ' AND stream_id = %s AND "offset" > %s AND (%s::text[] IS NULL OR type = ANY(%s::text[]))'
            ' ORDER BY "offset" LIMIT %s',
            (tenant_id, stream_id, offset, types, types, limit))
        return await cur.fetchall()
