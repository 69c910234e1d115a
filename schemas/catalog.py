"""A domain's event catalog: its types, which of them producers may ingest, and its stream-id rule."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from schemas.envelope import Payload


@dataclass(frozen=True, slots=True)
class EventCatalog:
    """Every event type of one domain, declared once and registered with the codec."""

    domain: str
    events: Mapping[str, type[Payload]]
    ingestible: frozenset[str]
    # (tenant_id, payload) -> stream id, the Kafka key; clients never choose it.
    stream_id: Callable[[str, Payload], str]
    # Current schema version per type (default 1); bump together with an upcaster in schemas.upcasters.
    versions: Mapping[str, int] = field(default_factory=dict)
