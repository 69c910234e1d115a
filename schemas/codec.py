"""The one codec: JSON envelopes with typed payloads, built once at import."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, NamedTuple

import msgspec

from schemas.conversations import (
    CONVERSATION_EVENTS,
    CONVERSATION_INGESTIBLE,
    conversation_stream_id,
)
from schemas.envelope import Envelope, Payload
from schemas.errors import DecodeError, UnknownEventType, UnsupportedSchemaVersion
from schemas.upcasters import UPCASTERS


class Registration(NamedTuple):
    """How one event type is named, versioned, routed and built."""

    type: str
    payload: type[Payload]
    version: int
    domain: str
    ingestible: bool


# Current schema version per type; bump together with an upcaster in schemas.upcasters.
_VERSIONS: dict[str, int] = {}

_REGISTRY: dict[str, Registration] = {
    name: Registration(name, cls, _VERSIONS.get(name, 1), "conversations", name in CONVERSATION_INGESTIBLE)
    for name, cls in CONVERSATION_EVENTS.items()
}
_BY_CLASS: dict[type[Payload], Registration] = {r.payload: r for r in _REGISTRY.values()}

DOMAINS: tuple[str, ...] = tuple(sorted({r.domain for r in _REGISTRY.values()}))

NonEmpty = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


class _Header(msgspec.Struct, frozen=True, kw_only=True):
    event_id: uuid.UUID
    type: NonEmpty
    schema_version: Annotated[int, msgspec.Meta(ge=1)]
    tenant_id: NonEmpty
    stream_id: NonEmpty
    occurred_at: AwareDatetime
    recorded_at: AwareDatetime
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None = None
    actor: NonEmpty
    payload: msgspec.Raw


_encoder = msgspec.json.Encoder()
_header_decoder = msgspec.json.Decoder(_Header)
_payload_decoders = {name: msgspec.json.Decoder(r.payload) for name, r in _REGISTRY.items()}


def registration(event_type: str) -> Registration:
    """The registration of a type name; UnknownEventType names it when absent."""
    try:
        return _REGISTRY[event_type]
    except KeyError:
        raise UnknownEventType(event_type) from None


def registration_of(payload: Payload) -> Registration:
    """The registration of a payload instance."""
    return _BY_CLASS[type(payload)]


def stream_id_for(tenant_id: str, payload: Payload) -> str:
    """The stream id (Kafka key) a payload belongs to; clients never choose it."""
    domain = registration_of(payload).domain
    if domain == "conversations":
        return conversation_stream_id(tenant_id, payload.contact)  # type: ignore[attr-defined]
    raise DecodeError(f"no stream id rule for domain {domain!r}")


def new_event(
    tenant_id: str, payload: Payload, *, event_id: uuid.UUID, occurred_at: datetime, recorded_at: datetime,
    actor: str, correlation_id: uuid.UUID | None = None, causation_id: uuid.UUID | None = None,
) -> Envelope:
    """An envelope for a payload entering Baton; type, version and stream id follow from the payload."""
    reg = registration_of(payload)
    return Envelope(
        event_id=event_id,
        type=reg.type,
        schema_version=reg.version,
        tenant_id=tenant_id,
        stream_id=stream_id_for(tenant_id, payload),
        occurred_at=occurred_at,
        recorded_at=recorded_at,
        correlation_id=correlation_id or event_id,
        causation_id=causation_id,
        actor=actor,
        payload=payload,
    )


def encode(envelope: Envelope) -> bytes:
    """Serialize an envelope to its log form (JSON)."""
    return _encoder.encode(envelope)


def payload_from_builtins(event_type: str, schema_version: int, document: Any) -> Payload:
    """Validate a decoded JSON payload document, upcasting older versions first."""
    reg = registration(event_type)
    if schema_version > reg.version or schema_version < 1:
        raise UnsupportedSchemaVersion(event_type, schema_version, reg.version)
    for version in range(schema_version, reg.version):
        upcast = UPCASTERS.get((event_type, version))
        if upcast is None:
            raise UnsupportedSchemaVersion(event_type, schema_version, reg.version)
        document = upcast(document)
    try:
        return msgspec.convert(document, reg.payload)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"{event_type}: {_in_payload(exc)}") from None


def decode(data: bytes) -> Envelope:
    """Decode log bytes into an envelope; DecodeError names what is wrong."""
    try:
        header = _header_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"invalid envelope: {exc}") from None
    reg = registration(header.type)
    if header.schema_version == reg.version:
        try:
            payload = _payload_decoders[header.type].decode(header.payload)
        except msgspec.DecodeError as exc:
            raise DecodeError(f"{header.type}: {_in_payload(exc)}") from None
    else:
        try:
            document = msgspec.json.decode(header.payload)
        except msgspec.DecodeError as exc:
            raise DecodeError(f"{header.type}: {exc}") from None
        payload = payload_from_builtins(header.type, header.schema_version, document)
    return Envelope(
        event_id=header.event_id,
        type=header.type,
        schema_version=reg.version,
        tenant_id=header.tenant_id,
        stream_id=header.stream_id,
        occurred_at=header.occurred_at,
        recorded_at=header.recorded_at,
        correlation_id=header.correlation_id,
        causation_id=header.causation_id,
        actor=header.actor,
        payload=payload,
    )


def _in_payload(exc: Exception) -> str:
    return str(exc).replace("at `$", "at `$.payload", 1)
