"""The one codec: JSON envelopes with typed payloads, built once at import."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, NamedTuple

import msgspec

from schemas.catalog import EventCatalog
from schemas.envelope import Envelope, Payload
from schemas.errors import (
    DecodeError,
    SchemaError,
    UnknownEventType,
    UnstorableEvent,
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
    policy: Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")] | None = None


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


def payload_from_builtins(event_type: str, schema_version: int, document: Any, *, strict: bool = False) -> Payload:
    """Validate a decoded JSON payload document, upcasting older versions first.

    `strict` (the edges) refuses fields the payload does not declare; the log is read leniently, so a record
    written by a newer version with added fields still decodes."""
    reg = registration(event_type)
    if schema_version > reg.version or schema_version < 1:
        raise UnsupportedSchemaVersion(event_type, schema_version, reg.version)
    for version in range(schema_version, reg.version):
        upcast = UPCASTERS.get((event_type, version))
        if upcast is None:
            raise UnsupportedSchemaVersion(event_type, schema_version, reg.version)
        document = upcast(document)
    try:
        payload = msgspec.convert(document, reg.payload)
    except msgspec.ValidationError as exc:
        raise DecodeError(f"{event_type}: {_in_payload(exc)}") from None
    if strict and (unknown := _unknown_field(document, msgspec.to_builtins(payload), "$.payload")):
        name, at = unknown
        raise DecodeError(f"{event_type}: Object contains unknown field `{name}` - at `{at}`")
    return payload


def _unknown_field(document: Any, known: Any, at: str) -> tuple[str, str] | None:
    """The first key of `document` that its converted form `known` does not hold (a field the type lacks)."""
    if isinstance(document, dict) and isinstance(known, dict):
        for key, value in document.items():
            if key not in known:
                return str(key), at
            if found := _unknown_field(value, known[key], f"{at}.{key}"):
                return found
    elif isinstance(document, list) and isinstance(known, list):
        for index, (value, converted) in enumerate(zip(document, known, strict=False)):
            if found := _unknown_field(value, converted, f"{at}[{index}]"):
                return found
    return None


def decode(data: bytes) -> Envelope:
    """Decode log bytes into an envelope; DecodeError names what is wrong."""
    try:
        return _decode(data)
    except RecursionError:  # JSON nested deeper than the decoder recurses: bad bytes like any other
        raise DecodeError("invalid envelope: nested too deeply to decode") from None


def _decode(data: bytes) -> Envelope:
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
        policy=header.policy,
    )


def _in_payload(exc: Exception) -> str:
    return str(exc).replace("at `$", "at `$.payload", 1)


# What PostgreSQL and the read models can hold, checked once at every edge (check_storable).
MAX_DEPTH = 32  # levels of lists and objects in a payload (typed records do not count)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 1, 1, tzinfo=UTC)  # exclusive: folds add days and weeks to event times without overflow


def check_storable(envelope: Envelope, path: str = "") -> Envelope:
    """The envelope, once every value in it can be stored and served back: no NUL or unpaired surrogate in a
    string (keys included), lists and objects nested at most MAX_DEPTH deep, integers within int64, finite
    floats, instants in [EARLIEST, LATEST). UnstorableEvent names the first field that fails, under `path`."""
    prefix = f"{path}." if path else ""
    _check(envelope.payload, f"{prefix}payload", 0)
    for name in ("type", "tenant_id", "stream_id", "actor"):
        _check_text(getattr(envelope, name), f"{prefix}{name}")
    for name in ("occurred_at", "recorded_at"):
        _check_instant(getattr(envelope, name), f"{prefix}{name}")
    return envelope


def to_utc(value: datetime, path: str) -> datetime:
    """An aware instant converted to UTC, once it is in the storable range (the conversion then cannot overflow)."""
    _check_instant(value, path)
    return value.astimezone(UTC)


def _check(value: Any, path: str, depth: int) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise UnstorableEvent(path, "integer outside the 64-bit signed range")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise UnstorableEvent(path, f"{value} is not a finite number")
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            _check(getattr(value, name), f"{path}.{name}", depth)
    elif isinstance(value, dict):
        if depth >= MAX_DEPTH:
            raise UnstorableEvent(path, f"nested deeper than {MAX_DEPTH} levels of lists and objects")
        for key, item in value.items():
            if isinstance(key, str):
                _check_text(key, path, what=f"key {key[:64]!r}")
            else:
                _check(key, path, depth + 1)
            _check(item, _member(path, key), depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        if depth >= MAX_DEPTH:
            raise UnstorableEvent(path, f"nested deeper than {MAX_DEPTH} levels of lists and objects")
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]", depth + 1)
    elif isinstance(value, datetime):
        _check_instant(value, path)


def _check_text(text: str, path: str, what: str = "text") -> None:
    if "\x00" in text:
        raise UnstorableEvent(path, f"{what} contains a NUL character (\\u0000), which cannot be stored")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise UnstorableEvent(path, f"{what} contains an unpaired surrogate, which is not UTF-8") from None


def _check_instant(value: datetime, path: str) -> None:
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not EARLIEST <= aware < LATEST:
        raise UnstorableEvent(path, f"{value.isoformat()} is outside the supported range"
                                    " [1970-01-01T00:00:00Z, 9999-01-01T00:00:00Z)")


def _member(path: str, key: object) -> str:
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key)[:66] if isinstance(key, str) else key}]"
