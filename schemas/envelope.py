"""The event envelope shared by every domain, and deterministic event ids."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

BATON_NAMESPACE = uuid.UUID("6f1c1f9e-7d7a-4f43-9a8e-2b7d0c1e5a10")


class Payload(msgspec.Struct, frozen=True, kw_only=True):
    """Base class of every event payload; subclasses are registered with a type tag."""


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """One event on the log: metadata plus a typed payload."""

    event_id: uuid.UUID
    type: str
    schema_version: int
    tenant_id: str
    stream_id: str
    occurred_at: datetime
    recorded_at: datetime
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None = None
    actor: str
    payload: Payload
    # The content hash of the tenant's policy in force where the event entered Baton (schemas.policies): folds
    # decide with that policy, live and in replay; None (old logs, producers that leave it out): the defaults.
    policy: str | None = None


def source_event_id(tenant_id: str, source: str, source_id: str) -> uuid.UUID:
    """Id of an event that has an external source id, so redelivery gives the same id."""
    return uuid.uuid5(BATON_NAMESPACE, f"{tenant_id}:{source}:{source_id}")


def derived_event_id(cause_id: uuid.UUID, index: int) -> uuid.UUID:
    """Id of the index-th event emitted because of cause_id; re-processing re-derives it."""
    return uuid.uuid5(cause_id, f"emit:{index}")


def emitted(cause: Envelope, index: int, payload: Payload, *, actor: str,
            occurred_at: datetime | None = None) -> Envelope:
    """Envelope for an event caused by `cause`; event time defaults to the cause's.

    The stream id follows from the payload, so an event for another domain goes under that domain's key.
    """
    from schemas.codec import (  # the registry imports this module
        registration_of,
        stream_id_for,
    )

    registration = registration_of(payload)
    return Envelope(
        event_id=derived_event_id(cause.event_id, index),
        type=registration.type,
        schema_version=registration.version,
        tenant_id=cause.tenant_id,
        stream_id=stream_id_for(cause.tenant_id, payload),
        occurred_at=occurred_at or cause.occurred_at,
        recorded_at=occurred_at or cause.recorded_at,
        correlation_id=cause.correlation_id,
        causation_id=cause.event_id,
        actor=actor,
        payload=payload,
        policy=cause.policy,
    )
