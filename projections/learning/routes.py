"""The learning API's query side: status, learners, and the caller's own events as server-sent events; and what
the command side (streams.domains.learning.commands) shares with it: the error format, the learner a call speaks
for and its per-learner token bucket.

Errors answer `{"error": ..., "code": ...}` (this router's own route class; the global app is left alone).
No `from __future__ import annotations`: FastAPI resolves the routes' annotations, some local to query_router.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, NamedTuple

import msgspec
import structlog
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from agents.learning.config import LearningSettings
from projections.learning.views import (
    StatusView,
    event_offset,
    events_after,
    learner_status,
    list_learners,
)
from projections.routes import Pool
from schemas.learning import learner_stream_id
from streams.auth import AgentOrCallerDep, CallerDep
from streams.edge import UnreadableBody
from streams.publisher import EventTooLarge
from streams.ratelimit import TokenBucket, rate_limited
from streams.settings import loaded

log = structlog.get_logger(__name__)

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


ERRORS = {status: {"description": f'`{{"error": ..., "code": "{code}"}}`'}
          for status, code in CODES.items() if status in (400, 401, 404, 409, 429, 500)}


LearnerOf = Callable[..., Learner]


def learner_dependency(options: LearningSettings | None = None) -> LearnerOf:
    """The dependency naming the learner a call speaks for, with a per-learner token bucket built now: the command
    and query routers of one app share it, so a learner has one bucket for every learning route."""
    options = options or loaded(LearningSettings)
    bucket = TokenBucket(options.rate_per_s, options.burst)

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

    return learner_of


def query_router(learner_of: LearnerOf | None = None) -> APIRouter:
    """The learning query routes (GET), with their settings built now and the given learner dependency (default:
    one of their own)."""
    options = loaded(LearningSettings)
    learner_of = learner_of or learner_dependency(options)
    agents = list(options.agent_urls)
    freshness = {agent: options.freshness(agent) for agent in agents}
    router = APIRouter(tags=["learning"], route_class=LearningRoute, responses=ERRORS)
    LearnerDep = Annotated[Learner, Depends(learner_of)]

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
