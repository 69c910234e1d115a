"""The learning API: intent.sync, day.run, day.done, status, and the caller's own events as server-sent events.

Errors answer `{"error": ..., "code": ...}` (this router's own route class; the global app is left alone).
No `from __future__ import annotations`: FastAPI resolves the routes' annotations, some local to learning_router.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import structlog
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from agents.learning.config import LearningSettings
from agents.learning.fold import next_day_hint
from projections.learning.views import (
    CompletionView,
    DayRunView,
    StatusView,
    event_offset,
    events_after,
    events_by_id,
    learner_status,
    list_learners,
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
    learner_stream_id,
    planned_event_id,
)
from streams.auth import AgentOrCallerDep, CallerDep
from streams.edge import UnreadableBody
from streams.publisher import EventTooLarge, PublishError
from streams.ratelimit import TokenBucket, rate_limited

log = structlog.get_logger(__name__)

Depth = Literal["surface", "informed", "deep", "expert"]
CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "session_not_found",
         409: "no_active_intent", 413: "too_large", 429: "rate_limited", 500: "internal", 503: "unavailable"}


class ApiError(HTTPException):
    """An error answered as {"error", "code"} with this status."""

    def __init__(self, status: int, error: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(status, error, headers=headers)
        self.code = code or CODES.get(status, "error")


def error_response(status: int, error: str, code: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, "code": code, **extra}, status_code=status, headers=headers)


class LearningRoute(APIRoute):
    """Turns every failure of a learning route (dependencies and body validation included) into {error, code}."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(part) for part in first["loc"] if part not in ("body", "header", "query"))
                return error_response(400, f"{field or 'body'}: {first['msg']}", "invalid_request",
                                      field=field or None)
            except UnreadableBody:  # the edge guard's 422, in the shape the OpenAPI document gives every route
                raise
            except StarletteHTTPException as exc:  # FastAPI's subclass and Starlette's own (an unparsable body)
                code = getattr(exc, "code", None) or CODES.get(exc.status_code, "error")
                return error_response(exc.status_code, str(exc.detail), code, exc.headers)
            except EventTooLarge as exc:  # the broker will never take it: not a retry
                return error_response(413, str(exc)[:500], "too_large")
            except Exception:  # the API logs tracebacks without locals and values bounded (streams.edge)
                log.exception("learning.internal_error", path=request.url.path)
                return error_response(500, "internal error", "internal")

        return handle


class Learner(NamedTuple):
    """The learner a call speaks for: the token's subject, or X-User-ID under a service token."""

    tenant_id: str
    learner: str

    @property
    def stream_id(self) -> str:
        return learner_stream_id(self.tenant_id, self.learner)


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


ERRORS = {status: {"description": f'`{{"error": ..., "code": "{code}"}}`'}
          for status, code in CODES.items() if status in (400, 401, 404, 409, 429, 500)}


def learning_router() -> APIRouter:
    """The learning routes, with their settings and per-learner token bucket built now."""
    options = LearningSettings()
    bucket = TokenBucket(options.rate_per_s, options.burst)
    agents = list(options.agent_urls)
    freshness = {agent: options.freshness(agent) for agent in agents}
    router = APIRouter(tags=["learning"], route_class=LearningRoute, responses=ERRORS)

    def learner_of(caller: AgentOrCallerDep,
                   x_user_id: Annotated[str | None, Header(max_length=200)] = None) -> Learner:
        if caller.service:
            if not x_user_id:
                raise ApiError(400, "X-User-ID: required with a service token")
            learner = x_user_id
        elif caller.subject == f"tenant:{caller.tenant_id}":
            raise ApiError(401, "the token names no learner: issue one with `baton token --subject`")
        else:
            learner = caller.subject  # a user token's X-User-ID is ignored: the learner is who signed in
        wait = bucket.take(f"{caller.tenant_id}:{learner}", time.monotonic())
        if wait is not None:
            limited = rate_limited(f"learner {learner!r}", wait)
            raise ApiError(429, limited.detail, headers=limited.headers)
        return Learner(caller.tenant_id, learner)

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

    @router.get("/v1/learning/status", response_model=StatusView, summary="A learner's status")
    async def status(who: LearnerDep, pool: Pool) -> StatusView:
        """Active intent, latest session, signal freshness, next scheduled run and stats, as projected."""
        return await learner_status(pool, who.tenant_id, who.stream_id, who.learner, now=datetime.now(UTC),
                                    agents=agents, freshness=freshness, run_hour_local=options.run_hour_local,
                                    days_per_week=options.days_per_week)

    @router.get("/v1/learning/learners", response_model=list[StatusView], summary="Every learner's status")
    async def learners(caller: CallerDep, pool: Pool) -> list[StatusView]:
        """The status of each learner of the tenant, for its operators (service tokens only)."""
        if not caller.service:
            raise ApiError(403, "the list of learners needs a service token", "forbidden")
        return await list_learners(pool, caller.tenant_id, now=datetime.now(UTC), agents=agents,
                                   freshness=freshness, run_hour_local=options.run_hour_local,
                                   days_per_week=options.days_per_week)

    @router.get("/v1/events/stream", summary="The caller's own events, as server-sent events",
                response_class=StreamingResponse,
                responses={200: {"content": {"text/event-stream": {}},
                                 "description": "`id` is the event id, `event` its type, `data` the event as JSON."}})
    async def event_stream(
        who: LearnerDep, pool: Pool,
        types: Annotated[str | None, Query(description="Only these event types (comma-separated).")] = None,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> StreamingResponse:
        """Every event of the caller's learner stream as it is projected; resume after Last-Event-ID."""
        wanted = [t.strip() for t in types.split(",") if t.strip()] if types else None
        after = await _resume_offset(pool, who, last_event_id)
        return StreamingResponse(_sse(pool, who, after, wanted, options), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

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


async def _resume_offset(pool: Any, who: Learner, last_event_id: str | None) -> int:
    if last_event_id is None:
        return await event_offset(pool, who.tenant_id, who.stream_id, None)  # type: ignore[return-value]
    try:
        event_id = uuid.UUID(last_event_id)
    except ValueError:
        raise ApiError(400, "Last-Event-ID: not an event id") from None
    offset = await event_offset(pool, who.tenant_id, who.stream_id, event_id)
    if offset is None:
        raise ApiError(400, "Last-Event-ID: not one of your events")
    return offset


_json = msgspec.json.Encoder()


async def _sse(pool: Any, who: Learner, after: int, types: list[str] | None,
               options: LearningSettings) -> AsyncIterator[bytes]:
    yield b"retry: 2000\n\n"
    quiet_since = time.monotonic()
    while True:
        rows = await events_after(pool, who.tenant_id, who.stream_id, after, types)
        for row in rows:
            after = row["offset"]
            data = _json.encode({"event_id": row["event_id"], "type": row["type"],
                                 "occurred_at": row["occurred_at"], "payload": row["payload"]})
            yield b"id: %s\nevent: %s\ndata: %s\n\n" % (str(row["event_id"]).encode(), row["type"].encode(), data)
        if rows:
            quiet_since = time.monotonic()
            continue
        if time.monotonic() - quiet_since >= options.sse_keepalive_s:
            yield b": keepalive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(options.sse_poll_s)
