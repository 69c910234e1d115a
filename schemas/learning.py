"""Learning-plan events: intents, day runs, agents' signals, planned and completed days, all on one learner stream."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec

from schemas.catalog import EventCatalog
from schemas.codec import register_catalog
from schemas.envelope import Payload, derived_event_id

Depth = Literal["surface", "informed", "deep", "expert"]
SignalStatus = Literal["fetched", "not_modified", "cached", "failed", "unconfigured"]

# Emission indexes, fixed per kind so a re-run derives the same ids: the fold answers a day request at
# ANSWER_INDEX; the signals effect emits the plan (with every agent's signal) and its cost.
ANSWER_INDEX = 0
PLANNED_INDEX = 0
COST_INDEX = 1


def learner_stream_id(tenant_id: str, learner: str) -> str:
    """Stream id (and Kafka key) of one learner within a tenant: every learning event of theirs."""
    return f"learner:{tenant_id}:{learner}"


def answer_event_id(request_event_id: uuid.UUID) -> uuid.UUID:
    """Id of the fold's answer to a day request (rejected, reused, or signals requested)."""
    return derived_event_id(request_event_id, ANSWER_INDEX)


def planned_event_id(signals_requested_id: uuid.UUID) -> uuid.UUID:
    """Id of the day.planned event the signals effect emits for one signals request."""
    return derived_event_id(signals_requested_id, PLANNED_INDEX)


class IntentSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A learner's intent as it was when something was asked of it."""

    intent_id: uuid.UUID
    topic: str
    depth: Depth
    end_goal: str
    time_per_day_min: int
    user_tz: str
    meta: dict[str, Any] = {}


class IntentSynced(Payload, frozen=True, kw_only=True):
    """The learner's active intent was created or replaced (created_at is the event time)."""

    learner: str
    intent: IntentSnapshot


class DayRequested(Payload, frozen=True, kw_only=True):
    """The learner asked for the plan of a week's day."""

    learner: str
    week: int
    day: int
    force_refresh: bool = False


class DayRejected(Payload, frozen=True, kw_only=True):
    """The fold refused a day request (no active intent)."""

    learner: str
    request_event_id: uuid.UUID
    week: int
    day: int
    reason: Literal["no_active_intent"]


class DayReused(Payload, frozen=True, kw_only=True):
    """A day request answered by the session already planned (or being planned) for that intent, week and day."""

    learner: str
    request_event_id: uuid.UUID
    session_id: uuid.UUID
    planned_event_id: uuid.UUID
    week: int
    day: int


class CachedSignal(msgspec.Struct, frozen=True, kw_only=True):
    """An agent's last known signal for the learner."""

    agent: str
    data: Any
    etag: str | None = None
    fetched_at: datetime
    validated_at: datetime


class SignalsRequested(Payload, frozen=True, kw_only=True):
    """Effect request: fetch the agents' signals for a new session and compose its plan."""

    learner: str
    request_event_id: uuid.UUID
    session_id: uuid.UUID
    week: int
    day: int
    intent: IntentSnapshot
    cached: list[CachedSignal] = []
    # The learner forced a refresh: every agent is asked (If-None-Match with the cached ETag), fresh or not.
    force_refresh: bool = False


class AgentSignal(msgspec.Struct, frozen=True, kw_only=True):
    """What one agent answered for one session: new data, not modified, served from cache, or failed."""

    agent: str
    status: SignalStatus
    available: bool
    fresh: bool
    from_cache: bool
    attempts: int = 0
    http_status: int | None = None
    etag: str | None = None
    data: Any = None  # set only when status is "fetched"
    validated_at: datetime | None = None
    error: str | None = None
    code: str | None = None
    latency_ms: float = 0.0


class SignalFetched(AgentSignal, Payload, frozen=True, kw_only=True):
    """One agent's answer as an event of its own (recorded before day.planned carried every agent's answer)."""

    learner: str
    session_id: uuid.UUID


class PlanSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The plan's headline, as the front end lists it."""

    title: str
    description: str
    steps: list[str]


class SignalQuality(msgspec.Struct, frozen=True, kw_only=True):
    """Whether an agent's signal was usable and fresh for a plan."""

    available: bool
    fresh: bool


class DayPlanned(Payload, frozen=True, kw_only=True):
    """A session's plan was composed (created_at is the event time)."""

    learner: str
    request_event_id: uuid.UUID
    session_id: uuid.UUID
    intent_id: uuid.UUID
    week: int
    day: int
    topic: str
    time_per_day_min: int
    plan_md: str
    plan_json_summary: PlanSummary
    degraded_mode: bool
    cache_hits: int
    cache_misses: int
    signal_quality: dict[str, SignalQuality]
    composer: Literal["llm", "template"]
    model: str | None = None
    # Every agent's answer the plan was composed from (empty in events recorded before it carried them, which
    # were preceded by one signal.fetched per agent); the fold's signal cache is updated from them.
    signals: list[AgentSignal] = []


class DayCompleted(Payload, frozen=True, kw_only=True):
    """The learner finished a session (completed_at is the event time)."""

    learner: str
    session_id: uuid.UUID
    completion_time_min: int
    confidence: int
    notes: str = ""
    next_day_hint: str = ""


LEARNING_EVENTS: dict[str, type[Payload]] = {
    "learning.intent.synced": IntentSynced,
    "learning.day.requested": DayRequested,
    "learning.day.rejected": DayRejected,
    "learning.day.reused": DayReused,
    "learning.signals.requested": SignalsRequested,
    "learning.signal.fetched": SignalFetched,
    "learning.day.planned": DayPlanned,
    "learning.day.completed": DayCompleted,
}

CATALOG = register_catalog(EventCatalog(
    domain="learning",
    events=LEARNING_EVENTS,
    # Only the learning API writes these (it checks the learner); producers publish none through /v1/events.
    ingestible=frozenset(),
    stream_id=lambda tenant_id, payload: learner_stream_id(tenant_id, payload.learner),  # type: ignore[attr-defined]
))
