"""The one codec: JSON envelopes with typed payloads, built once at import."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, NamedTuple

import msgspec

from schemas.catalog import EventCatalog
from schemas.envelope import Envelope, Payload
from schemas.errors import (
    DecodeError,
    SchemaError,
    UnknownEventType,
    UnsupportedSchemaVersion,
)
from schemas.upcasters import UPCASTERS


class Registration(NamedTuple):
    """How one event type is named, versioned, routed and built."""

    type: str
    payload: type[Payload]
    version: int
    domain: str
    ingestible: bool


# Filled by register_catalog when a domain's schemas module is imported.
_REGISTRY: dict[str, Registration] = {}
_BY_CLASS: dict[type[Payload], Registration] = {}
_CATALOGS: dict[str, EventCatalog] = {}

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
_payload_decoders: dict[str, msgspec.json.Decoder] = {}


def register_catalog(catalog: EventCatalog) -> EventCatalog:
    """Make a domain's event types known to the codec; registering the same catalog again is a no-op."""
    if _CATALOGS.get(catalog.domain) is catalog:
        return catalog
    if catalog.domain in _CATALOGS:
        raise SchemaError(f"domain {catalog.domain!r} is registered twice")
    if clash := sorted(set(catalog.events) & _REGISTRY.keys()):
        raise SchemaError(f"event types {clash} of {catalog.domain!r} are already registered")
    if stray := sorted(catalog.ingestible - catalog.events.keys()):
        raise SchemaError(f"{catalog.domain!r} declares unknown ingestible types {stray}")
    _CATALOGS[catalog.domain] = catalog
    for name, cls in catalog.events.items():
        reg = Registration(name, cls, catalog.versions.get(name, 1), catalog.domain, name in catalog.ingestible)
        _REGISTRY[name] = reg
        _BY_CLASS[cls] = reg
        _payload_decoders[name] = msgspec.json.Decoder(cls)
    return catalog


def registration(event_type: str) -> Registration:
    """The registration of a type name; UnknownEventType names it when absent."""
    try:
        return _REGISTRY[event_type]
    except KeyError:
        raise UnknownEventType(event_type) from None


def registration_of(payload: Payload) -> Registration:
    """The registration of a payload instance; SchemaError when its class is not registered."""
    try:
        return _BY_CLASS[type(payload)]
    except KeyError:
        raise SchemaError(f"payload type {type(payload).__name__} is not registered") from None


def stream_id_for(tenant_id: str, payload: Payload) -> str:
    """The stream id (Kafka key) a payload belongs to; clients never choose it."""
    return _CATALOGS[registration_of(payload).domain].stream_id(tenant_id, payload)


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
