"""The learning API's command side: intent.sync, day.run and day.done validate a learner's request and publish
its event (day.run then waits, bounded, for the plan the worker composes).

Errors answer `{"error": ..., "code": ...}` with the query side's route class (projections.learning.routes).
No `from __future__ import annotations`: FastAPI resolves the routes' annotations, some local to command_router.
"""

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agents.learning.config import LearningSettings
from agents.learning.fold import next_day_hint
from projections.learning.routes import (
    ERRORS,
    ApiError,
    Learner,
    LearnerOf,
    LearningRoute,
    learner_dependency,
)
from projections.learning.views import (
    CompletionView,
    DayRunView,
    events_by_id,
    planned_session,
)
from projections.routes import Pool
from schemas import Envelope, UnstorableEvent, new_event
from schemas.learning import (
    DayCompleted,
    DayRequested,
    IntentSnapshot,
    IntentSynced,
    answer_event_id,
    planned_event_id,
)
from streams.publisher import PublishError
from streams.settings import loaded

Depth = Literal["surface", "informed", "deep", "expert"]


class IntentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    topic: str = Field(min_length=1, max_length=200)
    depth: Depth
    end_goal: str = Field("", max_length=2000)
    time_per_day_min: int = Field(ge=1, le=1440)
    user_tz: str = Field("UTC", max_length=64)
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("user_tz")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory, a name too long for a file
            raise ValueError(f"{value!r} is not an IANA time zone") from None
        return value

    @field_validator("meta")
    @classmethod
    def _meta_size(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(msgspec.json.encode(value)) > 8192:
            raise ValueError("meta exceeds 8192 bytes of JSON")
        return value


class IntentOut(BaseModel):
    intent_id: uuid.UUID
    active: bool
    topic: str
    depth: Depth
    end_goal: str
    time_per_day_min: int
    user_tz: str
    meta: dict[str, Any]
    created_at: datetime


class DayRunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    week: int = Field(ge=1, le=520)
    day: int = Field(ge=1, le=7)
    force_refresh: bool = False


class DayDoneIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session_id: uuid.UUID
    completion_time_min: int = Field(ge=0, le=1440)
    confidence: int = Field(ge=1, le=10)
    notes: str = Field("", max_length=4000)


class CompletionSummary(CompletionView):
    session_id: uuid.UUID


class DayDoneOut(BaseModel):
    ok: bool
    next_day_hint: str
    completion_summary: CompletionSummary


def command_router(learner_of: LearnerOf | None = None) -> APIRouter:
    """The learning command routes (POST), with their settings built now and the given learner dependency (default:
    one of their own)."""
    options = loaded(LearningSettings)
    learner_of = learner_of or learner_dependency(options)
    router = APIRouter(tags=["learning"], route_class=LearningRoute, responses=ERRORS)
    LearnerDep = Annotated[Learner, Depends(learner_of)]

    @router.post("/v1/learning/intent.sync", response_model=IntentOut, summary="Create or replace the active intent")
    async def intent_sync(body: IntentIn, who: LearnerDep, request: Request) -> IntentOut:
        """The learner's new active intent; it replaces any earlier one."""
        now = datetime.now(UTC)
        intent = IntentSnapshot(intent_id=uuid.uuid4(), topic=body.topic, depth=body.depth, end_goal=body.end_goal,
                                time_per_day_min=body.time_per_day_min, user_tz=body.user_tz, meta=body.meta)
        await _publish(request, _event(who, IntentSynced(learner=who.learner, intent=intent), now))
        return IntentOut(intent_id=intent.intent_id, active=True, topic=intent.topic, depth=intent.depth,
                         end_goal=intent.end_goal, time_per_day_min=intent.time_per_day_min,
                         user_tz=intent.user_tz, meta=intent.meta, created_at=now)

    @router.post("/v1/learning/day.run", response_model=DayRunView, summary="Plan a week's day")
    async def day_run(body: DayRunIn, who: LearnerDep, request: Request, pool: Pool) -> DayRunView:
        """The day's plan from the agents' signals; the same week and day answer the same session unless force_refresh."""
        ask = _event(who, DayRequested(learner=who.learner, week=body.week, day=body.day,
                                       force_refresh=body.force_refresh), datetime.now(UTC))
        await _publish(request, ask)
        planned = await _await_plan(pool, who, ask.event_id, options)
        return DayRunView.model_validate(planned)

    @router.post("/v1/learning/day.done", response_model=DayDoneOut, summary="Complete a session")
    async def day_done(body: DayDoneIn, who: LearnerDep, request: Request, pool: Pool) -> DayDoneOut:
        """Record how the session went and get guidance for the next day."""
        session = await planned_session(pool, who.tenant_id, who.stream_id, body.session_id)
        if session is None:
            raise ApiError(404, f"session {body.session_id} not found")
        hint = next_day_hint(body.completion_time_min, session["time_per_day_min"], body.confidence,
                             session["week"], session["day"], options.days_per_week)
        now = datetime.now(UTC)
        done = DayCompleted(learner=who.learner, session_id=body.session_id,
                            completion_time_min=body.completion_time_min, confidence=body.confidence,
                            notes=body.notes, next_day_hint=hint)
        await _publish(request, _event(who, done, now))
        summary = CompletionSummary(session_id=body.session_id, completion_time_min=body.completion_time_min,
                                    confidence=body.confidence, notes=body.notes, completed_at=now)
        return DayDoneOut(ok=True, next_day_hint=hint, completion_summary=summary)

    return router


def _event(who: Learner, payload: Any, now: datetime) -> Envelope:
    return new_event(who.tenant_id, payload, event_id=uuid.uuid4(), occurred_at=now, recorded_at=now,
                     actor=f"learner:{who.learner}")


async def _publish(request: Request, envelope: Envelope) -> None:
    try:
        await request.app.state.publisher.publish([envelope])
    except UnstorableEvent as exc:  # a value the read models cannot hold: the caller's to fix, never a retry
        raise ApiError(400, str(exc), "invalid_request") from None
    except (PublishError, KafkaError) as exc:
        raise ApiError(503, f"the event log did not take the request, retry: {exc}", "log_unavailable",
                       headers={"Retry-After": "1"}) from None


async def _await_plan(pool: Any, who: Learner, request_id: uuid.UUID, options: LearningSettings) -> dict:
    """Wait (bounded) for the fold's answer to a day request and then for the plan it points to."""
    answer_id = answer_event_id(request_id)
    wanted = [answer_id, planned_event_id(answer_id)]
    deadline = time.monotonic() + options.plan_wait_s
    while time.monotonic() < deadline:
        found = await events_by_id(pool, who.tenant_id, wanted)
        for event_id in wanted[1:]:
            if event_id in found:
                return found[event_id]["payload"]
        answer = found.get(answer_id)
        if answer is not None and answer["type"] == "learning.day.rejected":
            raise ApiError(409, "no active learning intent: call intent.sync first")
        if answer is not None and answer["type"] == "learning.day.reused":
            wanted = [answer_id, uuid.UUID(answer["payload"]["planned_event_id"])]
        await asyncio.sleep(options.plan_poll_s)
    raise ApiError(503, "the plan is not ready yet; the same request later answers it", "plan_pending",
                   headers={"Retry-After": "2"})
