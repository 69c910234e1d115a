"""HTTP ingest: producers' events and WhatsApp webhooks, validated whole before anything reaches the log.

`POST /v1/events` takes a JSON body in one of three shapes:

- one event object: `{"type": ..., "occurred_at": ..., "payload": {...}}`;
- a batch object: `{"events": [event, ...]}`;
- a JSON array of events: `[event, ...]`.

Each event has `type`, `occurred_at` (ISO-8601 with a timezone), `payload`, and optionally
`schema_version` (default: current), `source_id` (gives a deterministic event id, so a retried
request yields the same ids), `correlation_id`, `causation_id` and `actor` (default "ingest").
Any other field, `tenant_id` included, is rejected: the tenant comes from the bearer token and
the stream id from the payload. Error paths are relative to the body: `payload.contact`,
`events[3].payload.contact` or `[3].payload.contact`.

Besides its schema, an event must hold only what the read models can store (schemas.check_storable: no NUL in
any string or key, at most 32 levels of lists and objects, integers within int64, `occurred_at` and every other
instant from 1970 to before 9999); otherwise 422 naming the field. Every write route publishes through `publish`
below or the Publisher, which apply the same check.

Validation is all or nothing: one bad event rejects the whole body with a 4xx and nothing reaches the log.
Publishing is not: Kafka without transactions cannot append a batch spread over several partitions
atomically, so a broker failure part-way through answers 503 after some of the events may have been
stored. Retrying the same request is safe for events with a `source_id`: they get the same ids again, and
the log then holds some of them twice with one id, which folds skip and projections upsert, so each is
applied once. An event without a `source_id` gets a new id per request, so a retry may apply it twice
(an inbound message is still deduplicated by its `whatsapp_message_id`): give a `source_id` to every event
that must not be applied twice. The WhatsApp webhook has the same contract, and Meta's retries reuse the
message ids its event ids derive from.

Dependencies come from `request.app.state`: `settings` and `publisher`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, HTTPException, Request

from schemas import (
    DecodeError,
    Envelope,
    UnknownEventType,
    UnstorableEvent,
    UnsupportedSchemaVersion,
    check_storable,
    new_event,
    payload_from_builtins,
    registration,
    source_event_id,
    to_utc,
)
from schemas.errors import locate
from streams.auth import Tenant
from streams.publisher import Publisher, PublishError

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]


class _EventIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    type: Text
    schema_version: Annotated[int, msgspec.Meta(ge=1)] | None = None
    occurred_at: Annotated[datetime, msgspec.Meta(tz=True)]
    payload: Any
    source_id: Text | None = None
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None
    actor: Text = "ingest"


class _Batch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    events: Annotated[list[Any], msgspec.Meta(min_length=1)]


_NonEmpty = Annotated[list[Any], msgspec.Meta(min_length=1)]


async def json_body(request: Request) -> bytes:
    """FastAPI dependency: the raw body, once it is JSON by content type and within max_request_bytes."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(415, f"Content-Type must be application/json, got {media_type or 'none'!r}")
    limit = request.app.state.settings.max_request_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise HTTPException(400, f"invalid Content-Length {declared!r}")
        if int(declared) > limit:
            raise HTTPException(413, f"body of {declared} bytes exceeds the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"body exceeds the limit of {limit} bytes")
    return bytes(body)


JsonBody = Annotated[bytes, Depends(json_body)]


def parse_json(body: bytes) -> Any:
    """The decoded JSON document, or 400."""
    try:
        return msgspec.json.decode(body)
    except ValueError as exc:
        raise HTTPException(400, f"malformed JSON: {exc}") from None
    except RecursionError:
        raise HTTPException(400, "malformed JSON: nested too deeply") from None


def ingest_router() -> APIRouter:
    """The route producers publish any domain's ingestible events through."""
    router = APIRouter(tags=["ingest"])
    router.add_api_route("/v1/events", ingest_events, methods=["POST"], status_code=202)
    return router


async def ingest_events(request: Request, tenant_id: Tenant, body: JsonBody) -> dict[str, list[str]]:
    """Validate every event of the body for the caller's tenant (any error: 4xx, nothing published), then
    publish them: 202 once the broker has them all, 503 when it may have only some (retry: module docstring)."""
    settings = request.app.state.settings
    path, documents = _events_of(parse_json(body))
    if len(documents) > settings.max_batch_events:
        raise HTTPException(
            413, f"{len(documents)} events exceed the limit of {settings.max_batch_events} per request"
        )
    recorded_at = datetime.now(UTC)
    envelopes = [
        _envelope(tenant_id, document, path.format(i), recorded_at) for i, document in enumerate(documents)
    ]
    await publish(request.app.state.publisher, envelopes)
    return {"event_ids": [str(envelope.event_id) for envelope in envelopes]}


def _events_of(document: Any) -> tuple[str, list[Any]]:
    """The event documents of a body, and the template naming the i-th in errors."""
    if isinstance(document, dict) and "events" in document:
        return "events[{}]", _convert(document, _Batch, "").events
    if isinstance(document, list):
        return "[{}]", _convert(document, _NonEmpty, "")
    return "", [document]


def _envelope(tenant_id: str, document: Any, path: str, recorded_at: datetime) -> Envelope:
    event = _convert(document, _EventIn, path)
    try:
        reg = registration(event.type)
    except UnknownEventType as exc:
        raise _unprocessable(path, "type", str(exc)) from None
    if not reg.ingestible:
        raise _unprocessable(path, "type", f"{event.type!r} is emitted by Baton, not ingestible")
    version = event.schema_version or reg.version
    try:
        payload = payload_from_builtins(event.type, version, event.payload, strict=True)
    except UnsupportedSchemaVersion as exc:
        raise _unprocessable(path, "schema_version", str(exc)) from None
    except DecodeError as exc:
        raise HTTPException(422, locate(str(exc).removeprefix(f"{event.type}: "), path)) from None
    event_id = source_event_id(tenant_id, "ingest", event.source_id) if event.source_id else uuid.uuid4()
    try:
        occurred_at = to_utc(event.occurred_at, f"{path}.occurred_at".lstrip("."))
        return check_storable(new_event(
            tenant_id, payload, event_id=event_id, occurred_at=occurred_at,
            recorded_at=recorded_at, actor=event.actor, correlation_id=event.correlation_id,
            causation_id=event.causation_id,
        ), path)
    except UnstorableEvent as exc:
        raise HTTPException(422, str(exc)) from None


def _convert(document: Any, kind: Any, path: str) -> Any:
    try:
        return msgspec.convert(document, kind)
    except msgspec.ValidationError as exc:
        raise HTTPException(422, locate(str(exc), path)) from None


def _unprocessable(path: str, field: str, message: str) -> HTTPException:
    return HTTPException(422, f"{path}.{field}: {message}".lstrip("."))


async def publish(publisher: Publisher, envelopes: list[Envelope]) -> None:
    """Publish envelopes and return once the broker has them all; otherwise 503 naming the broker error.

    Some of the envelopes may be on the log after a 503 (no transactions): callers retry with the same ids.
    An envelope the read models could not hold (schemas.check_storable) is a 422 naming its field; nothing is sent.
    """
    try:
        await publisher.publish(envelopes)
    except UnstorableEvent as exc:
        raise HTTPException(422, str(exc)) from None
    except (PublishError, KafkaError) as exc:
        raise HTTPException(503, f"events may be only partly stored, retry the request: {exc}") from None
