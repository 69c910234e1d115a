"""Learning read-model rows: a learner row, a row per kept session and a row per agent's cached signal."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from agents.learning.fold import LearnerState
from projections.readmodel import ReadModel
from schemas.learning import learner_stream_id

_json = msgspec.json.Encoder(order="deterministic")


def _intent(state: LearnerState) -> str | None:
    if state.intent is None:
        return None
    intent = state.intent.snapshot
    return _json.encode({
        "id": intent.intent_id, "topic": intent.topic, "depth": intent.depth, "end_goal": intent.end_goal,
        "time_per_day_min": intent.time_per_day_min, "user_tz": intent.user_tz, "meta": intent.meta,
        "created_at": state.intent.created_at,
    }).decode()


def _latest_session(state: LearnerState) -> str | None:
    if not state.sessions:
        return None
    s = state.sessions[-1]
    completion = None if s.completion is None else {
        "completion_time_min": s.completion.completion_time_min, "confidence": s.completion.confidence,
        "notes": s.completion.notes, "completed_at": s.completion.completed_at,
    }
    return _json.encode({
        "id": s.session_id, "week": s.week, "day": s.day, "topic": s.topic, "plan_title": s.plan_title,
        "degraded_mode": s.degraded_mode, "created_at": s.created_at, "completion": completion,
    }).decode()


def learner_row(state: LearnerState) -> tuple:
    """The learning_learners row of one learner."""
    return (
        learner_stream_id(state.tenant_id, state.learner), state.tenant_id, state.learner, _intent(state),
        _latest_session(state), state.total_sessions, state.completed_sessions, state.total_time_min,
        state.confidence_sum, _json.encode(state.completion_days).decode(),
    )


def session_rows(state: LearnerState) -> Iterator[tuple]:
    """The learning_sessions rows of the sessions a learner's state keeps."""
    stream_id = learner_stream_id(state.tenant_id, state.learner)
    for s in state.sessions:
        c = s.completion
        yield (
            s.session_id, state.tenant_id, state.learner, stream_id, s.intent_id, s.week, s.day, s.topic,
            s.plan_title, s.degraded_mode, s.created_at, s.planned_event_id,
            c.completion_time_min if c else None, c.confidence if c else None, c.notes if c else None,
            c.completed_at if c else None,
        )


def signal_rows(state: LearnerState) -> Iterator[tuple]:
    """The learning_signals rows: each agent's latest signal for the learner."""
    stream_id = learner_stream_id(state.tenant_id, state.learner)
    for agent, s in sorted(state.signals.items()):
        yield (
            f"{stream_id}:{agent}", state.tenant_id, state.learner, stream_id, agent, s.fetched_at is not None,
            s.etag, None if s.fetched_at is None else _json.encode(s.data).decode(), s.fetched_at, s.validated_at,
            s.last_status, s.last_error, s.last_attempt_at,
        )


LEARNERS = ReadModel(
    table="learning_learners",
    columns=(
        ("stream_id", "text"), ("tenant_id", "text"), ("learner", "text"), ("active_intent", "jsonb"),
        ("latest_session", "jsonb"), ("total_sessions", "integer"), ("completed_sessions", "integer"),
        ("total_time_min", "integer"), ("confidence_sum", "integer"), ("completion_days", "jsonb"),
    ),
    row=learner_row,
)

SESSIONS = ReadModel(
    table="learning_sessions",
    columns=(
        ("session_id", "uuid"), ("tenant_id", "text"), ("learner", "text"), ("stream_id", "text"),
        ("intent_id", "uuid"), ("week", "integer"), ("day", "integer"), ("topic", "text"), ("plan_title", "text"),
        ("degraded_mode", "boolean"), ("created_at", "timestamptz"), ("planned_event_id", "uuid"),
        ("completion_time_min", "integer"), ("confidence", "integer"), ("notes", "text"),
        ("completed_at", "timestamptz"),
    ),
    rows=session_rows,
)

SIGNALS = ReadModel(
    table="learning_signals",
    columns=(
        ("signal_key", "text"), ("tenant_id", "text"), ("learner", "text"), ("stream_id", "text"),
        ("agent", "text"), ("available", "boolean"), ("etag", "text"), ("data", "jsonb"),
        ("fetched_at", "timestamptz"), ("last_updated", "timestamptz"), ("last_status", "text"),
        ("last_error", "text"), ("last_attempt_at", "timestamptz"),
    ),
    rows=signal_rows,
)
