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

Dependencies come from `request.app.state`: `settings`, `publisher` and `tenants`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import PlainTextResponse

from schemas import (
    DecodeError,
    Envelope,
    UnknownEventType,
    UnsupportedSchemaVersion,
    new_event,
    payload_from_builtins,
    registration,
    source_event_id,
)
from streams import whatsapp
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


def ingest_router() -> APIRouter:
    """Routes for event ingest and the WhatsApp webhook."""
    router = APIRouter(tags=["ingest"])
    router.add_api_route("/v1/events", ingest_events, methods=["POST"], status_code=202)
    router.add_api_route("/v1/webhooks/whatsapp", verify_whatsapp, methods=["GET"],
                         response_class=PlainTextResponse)
    router.add_api_route("/v1/webhooks/whatsapp", receive_whatsapp, methods=["POST"])
    return router


async def ingest_events(request: Request, tenant_id: Tenant, body: JsonBody) -> dict[str, list[str]]:
    """Validate every event of the body for the caller's tenant, then publish them all (202) or none."""
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
    await _publish(request.app.state.publisher, envelopes)
    return {"event_ids": [str(envelope.event_id) for envelope in envelopes]}


async def verify_whatsapp(request: Request) -> PlainTextResponse:
    """Meta's subscription handshake: echo hub.challenge when hub.verify_token matches."""
    challenge = whatsapp.verify_subscription(
        request.query_params, request.app.state.settings.whatsapp_verify_token
    )
    if challenge is None:
        raise HTTPException(403, "verification failed: needs hub.mode=subscribe, the configured "
                                 "hub.verify_token and a hub.challenge")
    return PlainTextResponse(challenge)


async def receive_whatsapp(request: Request, body: JsonBody) -> dict[str, Any]:
    """A signed webhook delivery: normalised and published whole, then 200 so Meta does not retry."""
    state = request.app.state
    header = request.headers.get("x-hub-signature-256")
    if not whatsapp.verify_signature(state.settings.whatsapp_app_secret.get_secret_value(), body, header):
        raise HTTPException(
            401, "missing X-Hub-Signature-256 header" if header is None
            else "X-Hub-Signature-256 does not match the body"
        )
    try:
        normalized = whatsapp.normalize(parse_json(body), state.tenants, datetime.now(UTC))
    except whatsapp.WebhookError as exc:
        raise HTTPException(422, str(exc)) from None
    await _publish(state.publisher, normalized.envelopes)
    return {"accepted": len(normalized.envelopes), "skipped": normalized.skipped}


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
        payload = payload_from_builtins(event.type, version, event.payload)
    except UnsupportedSchemaVersion as exc:
        raise _unprocessable(path, "schema_version", str(exc)) from None
    except DecodeError as exc:
        raise HTTPException(422, whatsapp.locate(str(exc).removeprefix(f"{event.type}: "), path)) from None
    event_id = source_event_id(tenant_id, "ingest", event.source_id) if event.source_id else uuid.uuid4()
    return new_event(
        tenant_id, payload, event_id=event_id, occurred_at=event.occurred_at.astimezone(UTC),
        recorded_at=recorded_at, actor=event.actor, correlation_id=event.correlation_id,
        causation_id=event.causation_id,
    )


def _convert(document: Any, kind: Any, path: str) -> Any:
    try:
        return msgspec.convert(document, kind)
    except msgspec.ValidationError as exc:
        raise HTTPException(422, whatsapp.locate(str(exc), path)) from None


def _unprocessable(path: str, field: str, message: str) -> HTTPException:
    return HTTPException(422, f"{path}.{field}: {message}".lstrip("."))


async def _publish(publisher: Publisher, envelopes: list[Envelope]) -> None:
    try:
        await publisher.publish(envelopes)
    except (PublishError, KafkaError) as exc:
        raise HTTPException(503, f"events not stored, retry: {exc}") from None
