"""The learner fold: active intent, sessions, agents' latest signals and progress; pure rules on days and streaks."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import msgspec
from msgspec.structs import replace

from agents.batching import FoldState, StateCodec
from agents.zones import zone as tz_zone
from schemas import Envelope, emitted
from schemas.learning import (
    AgentSignal,
    CachedSignal,
    DayCompleted,
    DayPlanned,
    DayRejected,
    DayRequested,
    DayReused,
    IntentSnapshot,
    IntentSynced,
    SignalFetched,
    SignalsRequested,
    answer_event_id,
    planned_event_id,
)

COMPLETION_DAYS_KEPT = 400


@dataclass(frozen=True, slots=True)
class FoldConfig:
    """Bounds of a learner's memory."""

    sessions_kept: int = 60
    # A day request still unplanned after this long (event time) no longer blocks a new run of that day.
    pending_expiry: timedelta = timedelta(seconds=60)


class Intent(msgspec.Struct, kw_only=True):
    """The active intent and when it was synced."""

    snapshot: IntentSnapshot
    created_at: datetime


class Signal(msgspec.Struct, kw_only=True):
    """An agent's latest signal for the learner, and how its last fetch went."""

    agent: str
    data: Any = None
    etag: str | None = None
    fetched_at: datetime | None = None  # last time new data arrived
    validated_at: datetime | None = None  # last time the data was fetched or confirmed (304)
    last_status: str = ""
    last_error: str | None = None
    last_attempt_at: datetime | None = None


class Completion(msgspec.Struct, kw_only=True):
    """How a session went."""

    completion_time_min: int
    confidence: int
    notes: str
    completed_at: datetime
    local_date: str  # the completion's date in the learner's zone


class Session(msgspec.Struct, kw_only=True):
    """A planned session (its plan text stays in the day.planned event)."""

    session_id: uuid.UUID
    intent_id: uuid.UUID
    week: int
    day: int
    topic: str
    plan_title: str
    degraded_mode: bool
    created_at: datetime
    planned_event_id: uuid.UUID
    completion: Completion | None = None


class PendingRun(msgspec.Struct, kw_only=True):
    """A day request whose plan is being composed."""

    session_id: uuid.UUID
    intent_id: uuid.UUID
    week: int
    day: int
    requested_at: datetime
    planned_event_id: uuid.UUID


class LearnerState(FoldState, kw_only=True):
    """One learner of one tenant."""

    tenant_id: str
    learner: str
    intent: Intent | None = None
    sessions: list[Session] = []  # oldest first, the last `sessions_kept`
    pending: list[PendingRun] = []
    signals: dict[str, Signal] = {}
    total_sessions: int = 0
    completed_sessions: int = 0
    total_time_min: int = 0
    confidence_sum: int = 0
    completion_days: list[str] = []  # distinct local dates with a completion, ascending


CODEC = StateCodec.json(LearnerState)


def fold(state: LearnerState | None, envelope: Envelope, config: FoldConfig) -> tuple[LearnerState, list[Envelope]]:
    """Apply one learning event; a day request is answered by an event the API waits for."""
    payload = envelope.payload
    state = state or LearnerState(tenant_id=envelope.tenant_id, learner=payload.learner)  # type: ignore[attr-defined]
    out: list[Envelope] = []
    changes: dict[str, Any] = {}
    if isinstance(payload, IntentSynced):
        changes = {"intent": Intent(snapshot=payload.intent, created_at=envelope.occurred_at)}
    elif isinstance(payload, DayRequested):
        changes, answer = _request_day(state, envelope, payload, config)
        out.append(emitted(envelope, 0, answer, actor="fold:learning"))
    elif isinstance(payload, SignalFetched):
        changes = {"signals": _signals_after(state.signals, [payload], envelope.occurred_at)}
    elif isinstance(payload, DayPlanned):
        changes = _planned(state, envelope, payload, config)
    elif isinstance(payload, DayCompleted):
        changes = _completed(state, envelope, payload)
    return replace(state, **changes), out


def _request_day(state: LearnerState, envelope: Envelope, request: DayRequested,
                 config: FoldConfig) -> tuple[dict[str, Any], Any]:
    common = {"learner": request.learner, "request_event_id": envelope.event_id, "week": request.week,
              "day": request.day}
    if state.intent is None:
        return {}, DayRejected(**common, reason="no_active_intent")
    intent = state.intent.snapshot
    now = envelope.occurred_at
    pending = [p for p in state.pending if p.requested_at + config.pending_expiry > now]
    if not request.force_refresh:
        same = (s for s in reversed(state.sessions)
                if (s.intent_id, s.week, s.day) == (intent.intent_id, request.week, request.day))
        waiting = (p for p in reversed(pending) if (p.intent_id, p.week, p.day) == (intent.intent_id, request.week,
                                                                                    request.day))
        if (found := next(same, None) or next(waiting, None)) is not None:
            reused = DayReused(**common, session_id=found.session_id, planned_event_id=found.planned_event_id)
            return {"pending": pending}, reused
    session_id = uuid.uuid5(envelope.event_id, "session")
    cached = [CachedSignal(agent=s.agent, data=s.data, etag=s.etag, fetched_at=s.fetched_at,
                           validated_at=s.validated_at)
              for s in state.signals.values() if s.fetched_at is not None and s.validated_at is not None]
    ask = SignalsRequested(**common, session_id=session_id, intent=intent, cached=cached,
                           force_refresh=request.force_refresh)
    run = PendingRun(session_id=session_id, intent_id=intent.intent_id, week=request.week, day=request.day,
                     requested_at=now, planned_event_id=planned_event_id(answer_event_id(envelope.event_id)))
    return {"pending": [*pending, run]}, ask


def _signals_after(signals: dict[str, Signal], fetched: list[AgentSignal], at: datetime) -> dict[str, Signal]:
    return {**signals, **{f.agent: _signal_after(signals.get(f.agent), f, at) for f in fetched}}


def _signal_after(signal: Signal | None, fetched: AgentSignal, at: datetime) -> Signal:
    signal = signal or Signal(agent=fetched.agent)
    if fetched.status == "cached":
        return signal
    common = {"last_status": fetched.status, "last_attempt_at": at, "last_error": fetched.error}
    if fetched.status == "fetched":
        return replace(signal, **common, data=fetched.data, etag=fetched.etag, fetched_at=fetched.validated_at,
                       validated_at=fetched.validated_at)
    if fetched.status == "not_modified":
        return replace(signal, **common, etag=fetched.etag or signal.etag, validated_at=fetched.validated_at)
    return replace(signal, **common)


def _planned(state: LearnerState, envelope: Envelope, planned: DayPlanned, config: FoldConfig) -> dict[str, Any]:
    if any(s.session_id == planned.session_id for s in state.sessions):
        return {}
    session = Session(session_id=planned.session_id, intent_id=planned.intent_id, week=planned.week, day=planned.day,
                      topic=planned.topic, plan_title=planned.plan_json_summary.title,
                      degraded_mode=planned.degraded_mode, created_at=envelope.occurred_at,
                      planned_event_id=envelope.event_id)
    return {"sessions": [*state.sessions, session][-config.sessions_kept:],
            "pending": [p for p in state.pending if p.session_id != planned.session_id],
            "total_sessions": state.total_sessions + 1,
            "signals": _signals_after(state.signals, planned.signals, envelope.occurred_at)}


def _completed(state: LearnerState, envelope: Envelope, done: DayCompleted) -> dict[str, Any]:
    index = next((i for i, s in enumerate(state.sessions) if s.session_id == done.session_id), None)
    if index is None:
        return {}  # a session no longer kept: its completion is in the log, not in the stats
    session = state.sessions[index]
    zone = tz_zone(state.intent.snapshot.user_tz if state.intent else "UTC")
    local = envelope.occurred_at.astimezone(zone).date().isoformat()
    completion = Completion(completion_time_min=done.completion_time_min, confidence=done.confidence,
                            notes=done.notes, completed_at=envelope.occurred_at, local_date=local)
    before = session.completion
    sessions = list(state.sessions)
    sessions[index] = replace(session, completion=completion)
    return {
        "sessions": sessions,
        "completed_sessions": state.completed_sessions + (before is None),
        "total_time_min": state.total_time_min + done.completion_time_min - (before.completion_time_min if before else 0),
        "confidence_sum": state.confidence_sum + done.confidence - (before.confidence if before else 0),
        "completion_days": sorted({*state.completion_days, local})[-COMPLETION_DAYS_KEPT:],
    }


def next_position(week: int, day: int, days_per_week: int) -> tuple[int, int]:
    """The (week, day) after a given one."""
    return (week + 1, 1) if day >= days_per_week else (week, day + 1)


def next_day_hint(completion_time_min: int, target_min: int, confidence: int, week: int, day: int,
                  days_per_week: int) -> str:
    """Guidance for the next day from time spent against the daily target and from confidence (docs/learning.md)."""
    ratio = completion_time_min / target_min if target_min > 0 else 1.0
    if ratio < 0.5:
        effort = "Short session today: try to protect more of your daily time."
    elif ratio <= 1.25:
        effort = "Good time investment!"
    else:
        effort = "Great dedication, but you went well past your daily target: pace yourself."
    next_week, next_day = next_position(week, day, days_per_week)
    when = f"day {next_day}" if next_week == week else f"week {next_week}, day {next_day}"
    if confidence <= 4:
        advice = "revisit today's material before moving on."
    elif confidence <= 7:
        advice = "focus on reinforcing concepts to build confidence."
    else:
        advice = "you are ready to take on new material."
    return f"{effort} For {when}, {advice}"


def current_streak(completion_days: list[str], today: date) -> int:
    """Consecutive local days with a completion, ending today or yesterday (else 0)."""
    days = {date.fromisoformat(d) for d in completion_days}
    cursor = today if today in days else today - timedelta(days=1)
    streak = 0
    while cursor in days:
        streak += 1
        cursor -= timedelta(days=1)
    return streak


def next_run_at(now: datetime, user_tz: str, run_hour_local: int) -> datetime:
    """The configured local hour on the learner's next local day, in UTC (a DST change shifts the UTC hour)."""
    zone = tz_zone(user_tz)
    tomorrow = now.astimezone(zone).date() + timedelta(days=1)
    return datetime.combine(tomorrow, time(run_hour_local), tzinfo=zone).astimezone(UTC)


