"""Event envelope, per-domain payloads, and the one codec (no faust, no psycopg)."""

from schemas.catalog import EventCatalog
from schemas.codec import (
    Registration,
    check_storable,
    decode,
    encode,
    new_event,
    payload_from_builtins,
    register_catalog,
    registration,
    registration_of,
    stream_id_for,
    to_utc,
)
from schemas.envelope import (
    Envelope,
    Payload,
    derived_event_id,
    emitted,
    source_event_id,
)
from schemas.errors import (
    DecodeError,
    SchemaError,
    UnknownEventType,
    UnstorableEvent,
    UnsupportedSchemaVersion,
)

__all__ = [
    "DecodeError", "Envelope", "EventCatalog", "Payload", "Registration", "SchemaError", "UnknownEventType",
    "UnstorableEvent", "UnsupportedSchemaVersion", "check_storable", "decode", "derived_event_id", "emitted",
    "encode", "new_event", "payload_from_builtins", "register_catalog", "registration", "registration_of",
    "source_event_id", "stream_id_for", "to_utc",
]
