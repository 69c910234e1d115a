"""The AsyncAPI 3.0 document of Baton's domain topics, generated from the domain registry.

It says everything a producer on any Kafka client needs to publish an event Baton folds: each domain topic (one
channel per domain, address `settings.topic(domain)`), the record key (the envelope's stream id, its rule per
type, and the murmur2 partitioner of `streams.topics.key_partition`), the JSON envelope, and the payload schema of
every ingestible type (msgspec's JSON Schema of the payload Structs). It is served at `GET /v1/asyncapi.json` and
printed by `baton asyncapi`.

The document describes Baton as the application: each channel's operation is `receive` (Baton consumes what
producers send). Types Baton only emits are left out, so every message here is one a producer may publish.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec
from fastapi import APIRouter, Request

from schemas import EventCatalog, registration
from schemas.codec import (
    _Header,  # the envelope as `schemas.decode` checks it (lengths, time zones, UUIDs)
)
from schemas.envelope import BATON_NAMESPACE
from streams.registry import load_domains
from streams.settings import Settings

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING = "0.5.0"
SCHEMA_REF = "#/components/schemas/{name}"
ENVELOPE = "Envelope"  # the header fields every message shares; each type's envelope is `{type}.envelope`

_KEY_PROBE = re.compile("\x01([ab]):([^\x02]*)\x02")


def asyncapi_document(settings: Settings) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of every registered domain's topic and ingestible event types (a pure function of
    the settings and the registry)."""
    domains = load_domains(settings)
    ingestible = [(d.catalog, t) for d in domains for t in sorted(d.catalog.ingestible)]
    refs, payloads = msgspec.json.schema_components(
        [catalog.events[t] for catalog, t in ingestible], ref_template=SCHEMA_REF)
    schemas: dict[str, Any] = {name: _closed(schema) for name, schema in payloads.items()}
    schemas[ENVELOPE] = _envelope_schema()
    messages: dict[str, Any] = {}
    for (catalog, event_type), payload_ref in zip(ingestible, refs, strict=True):
        cls = catalog.events[event_type]
        template = key_template(catalog, event_type)
        key = _key_text(catalog, event_type, template)
        envelope = _envelope_schema(event_type, registration(event_type).version, cls.__name__, key)
        schemas[f"{event_type}.envelope"] = envelope
        envelope["properties"]["payload"] = payload_ref
        message: dict[str, Any] = {
            "name": event_type,
            "title": event_type,
            "summary": _first_line(cls.__doc__) or event_type,
            "description": (f"`{event_type}` (schema_version {registration(event_type).version}) on "
                            f"`{settings.topic(catalog.domain)}`. Record key: {key}"),
            "contentType": "application/json",
            "payload": {"$ref": SCHEMA_REF.format(name=f"{event_type}.envelope")},
            "correlationId": {"description": "The envelope's correlation_id (the first event's id of a chain).",
                              "location": "$message.payload#/correlation_id"},
            "bindings": {"kafka": {"key": {"type": "string", "minLength": 1, "maxLength": 512,
                                           "description": f"UTF-8 bytes of the envelope's stream_id: {key}"},
                                   "bindingVersion": KAFKA_BINDING}},
            "x-baton-domain": catalog.domain,
            "x-baton-schema-version": registration(event_type).version,
            "x-baton-key-template": template,
        }
        messages[event_type] = message
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for domain in domains:
        types = sorted(domain.catalog.ingestible)
        channels[domain.name] = {
            "address": settings.topic(domain.name),
            "title": f"{domain.name} events",
            "description": _channel_text(settings, domain.catalog, types),
            "messages": {t: {"$ref": f"#/components/messages/{t}"} for t in types},
            "bindings": {"kafka": {"partitions": settings.topic_partitions, "replicas": settings.topic_replication,
                                   "bindingVersion": KAFKA_BINDING}},
        }
        if types:
            operations[f"receive.{domain.name}"] = {
                "action": "receive",
                "title": f"Baton folds {domain.name} events",
                "summary": f"Producers publish these {domain.name} events to {settings.topic(domain.name)}.",
                "channel": {"$ref": f"#/channels/{domain.name}"},
                "messages": [{"$ref": f"#/channels/{domain.name}/messages/{t}"} for t in types],
            }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {"title": "Baton domain events", "version": _version(),
                 "description": _contract(settings)},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"schemas": dict(sorted(schemas.items())), "messages": messages},
    }


def asyncapi_router() -> APIRouter:
    """`GET /v1/asyncapi.json`: the document for the API's settings, built once per app. Like `/openapi.json` it
    takes no token: it holds the published schemas and topic names only, no tenant's data."""
    router = APIRouter(tags=["docs"])

    @router.get("/v1/asyncapi.json", summary="The AsyncAPI 3.0 document of the domain topics")
    def asyncapi(request: Request) -> dict[str, Any]:
        state = request.app.state
        if getattr(state, "asyncapi", None) is None:
            state.asyncapi = asyncapi_document(state.settings)
        return state.asyncapi

    return router


def key_template(catalog: EventCatalog, event_type: str) -> str | None:
    """The type's stream id as a template over the tenant and payload fields, e.g.
    `conversation:{tenant_id}:{payload.contact}`; None when the catalog's rule computes it otherwise (a hash).

    Found by calling the rule on a payload whose every field holds a marker, twice with different markers: the
    template is exact when both keys are the markers spliced into the same text.
    """
    cls = catalog.events[event_type]
    fields = msgspec.structs.fields(cls)

    def probe(mark: str) -> str:
        payload = cls(**{f.name: f"\x01{mark}:payload.{f.encode_name}\x02" for f in fields})
        return catalog.stream_id(f"\x01{mark}:tenant_id\x02", payload)

    try:
        first, second = probe("a"), probe("b")
    except Exception:  # noqa: BLE001 - the rule does more than splice fields in: no template
        return None
    template = _KEY_PROBE.sub(lambda m: "{" + m[2] + "}" if m[1] == "a" else "\x00", first)
    if "\x00" in template or "\x01" in template or "\x02" in template:
        return None
    return template if _KEY_PROBE.sub(lambda m: "{" + m[2] + "}", second) == template else None


def _key_text(catalog: EventCatalog, event_type: str, template: str | None) -> str:
    if template is not None:
        return f"`{template}`, with the envelope's tenant_id and the payload's fields."
    rule = _rule_doc(catalog.stream_id)
    return (f"computed by Baton ({rule.rstrip('.') if rule else 'see the domain'}), not a plain template: publish "
            f"`{event_type}` through `POST /v1/events` or Baton's Publisher, which set it.")


def _rule_doc(rule: Callable[..., str]) -> str | None:
    """The docstring of the catalog's stream-id rule, or (for a lambda) of the functions it calls."""
    if rule.__doc__:
        return " ".join(rule.__doc__.split())
    code = getattr(rule, "__code__", None)
    called = [getattr(rule, "__globals__", {}).get(name) for name in (code.co_names if code else ())]
    docs = [" ".join(f.__doc__.split()) for f in called if callable(f) and f.__doc__]
    return " ".join(docs) or None


def _channel_text(settings: Settings, catalog: EventCatalog, types: list[str]) -> str:
    rule = _rule_doc(catalog.stream_id)
    lines = [f"Every event of the `{catalog.domain}` domain, keyed by its stream id"
             + (f" ({rule.rstrip('.')})." if rule else ".")]
    if types:
        lines.append("Producers may publish: " + ", ".join(f"`{t}`" for t in types)
                     + f". Every other type on `{settings.topic(catalog.domain)}` is emitted by Baton itself.")
    else:
        lines.append("Producers publish nothing here: Baton emits every event of this topic.")
    lines.append(f"{settings.topic_partitions} partitions; a key's partition is "
                 f"`(murmur2(key) & 0x7fffffff) % {settings.topic_partitions}` (the info's description).")
    return "\n\n".join(lines)


def _contract(settings: Settings) -> str:
    return f"""\
Every domain of Baton has one Kafka topic (a channel below). A producer on any Kafka client publishes an event
as one record:

- **Value**: the envelope, a JSON object in UTF-8 (RFC 8259), as the message's `{{type}}.envelope` schema says.
  Instants are RFC 3339 strings with a time zone (`2025-01-31T09:00:00Z` or `+01:00`; without one the event is
  refused), UUIDs are canonical strings, `causation_id` may be null.
- **`type` and `schema_version`** must be the message's type and its current version (the `const`s); the payload
  must match that type's schema. A type not listed here is Baton's own: `POST /v1/events` refuses it, and a
  producer must not put it on a topic, where Baton would take it for one it emitted.
- **Key**: the UTF-8 bytes of `stream_id`, and `stream_id` must be the stream id the type's rule gives for the
  envelope's `tenant_id` and payload (each message's `x-baton-key-template`, e.g.
  `conversation:{{tenant_id}}:{{payload.contact}}`). A record whose key differs from `stream_id`, or whose
  `stream_id` is not its payload's (another tenant's stream, say), is dead-lettered to
  `{settings.deadletter_topic}` with the reason, never folded.
- **Partition**: the one Baton's producers choose, `(murmur2(key) & 0x7fffffff) % partitions`, murmur2 being
  Kafka's (seed 0x9747b28c), i.e. the default partitioner of Kafka's Java client, aiokafka and kafka-python;
  librdkafka clients (confluent-kafka) need `partitioner=murmur2_random`. A record on another partition is
  forwarded by Baton's worker to its key's partition (one extra record) before it is folded.
- **`event_id`**: a UUID. A fold skips an id its stream has recently applied, so an event that may be published
  again (a retry, a redelivery from your source) must get the same id each time: `uuid5({BATON_NAMESPACE},
  "{{tenant_id}}:{{source}}:{{source_id}}")` with your system's name as `source` and the source's own id as
  `source_id` (what `schemas.source_event_id` computes; `POST /v1/events` uses source `ingest`). A random id
  (uuid4) makes every publish a new event. `correlation_id` is the event_id for a new chain.
- **`policy`**: the hash of the tenant's policy in force, from `GET /v1/policies` (`in_force.policy`); Baton's
  own edges stamp it. Folds decide an event under the policy it names, so a replay decides as the live fold did;
  an event without one is decided under the built-in defaults, not the deployment's configured policy.
- **Unknown fields** are not part of the contract (`additionalProperties: false`). Baton's codec does not refuse
  them: it drops them when decoding, so a misspelt optional field is silently lost. Validate before publishing.
- **Storable values**: no NUL (U+0000) in any string or key, at most 32 levels of lists and objects in a payload,
  integers within int64, finite numbers, instants from 1970-01-01 to before 9999-01-01; Baton's own edges refuse
  anything else.

`POST /v1/events` (OpenAPI at `/docs`) takes the same payloads with the tenant from a token and sets the key,
partition and stream id itself."""


def _envelope_schema(event_type: str | None = None, version: int | None = None, payload: str | None = None,
                     key: str | None = None) -> dict[str, Any]:
    """The envelope's JSON Schema (from the codec's header); with a type: that type's envelope."""
    (ref,), defs = msgspec.json.schema_components([_Header], ref_template=SCHEMA_REF)
    schema = _closed(defs[ref["$ref"].rsplit("/", 1)[1]])
    properties = schema["properties"]
    schema["title"] = f"{payload} envelope" if event_type else ENVELOPE
    schema["description"] = (f"One `{event_type}` event: the envelope with a {payload} payload." if event_type
                             else "The envelope every event shares; `payload` is the type's payload.")
    properties["event_id"]["description"] = "The event's id; deterministic when it may be published again."
    properties["correlation_id"]["description"] = "The first event's id of a causal chain (event_id for a new one)."
    properties["causation_id"]["description"] = "The id of the event that caused this one, or null."
    properties["occurred_at"]["description"] = "When it happened (RFC 3339 with a time zone)."
    properties["recorded_at"]["description"] = "When the producer recorded it (RFC 3339 with a time zone)."
    properties["actor"]["description"] = "Who publishes: your service's name (shown in re-routing and audit)."
    properties["tenant_id"]["description"] = "The tenant the event belongs to."
    properties["policy"]["description"] = (
        "The content hash of the tenant's policy in force (GET /v1/policies: in_force.policy); folds decide the "
        "event under it. Null or absent: decided under the built-in defaults, whatever the deployment configures.")
    properties["stream_id"]["description"] = f"The record key: {key}" if key else "The record key (stream id)."
    properties["payload"] = {"type": "object", "description": "The type's payload."}
    if event_type is not None:
        properties["type"] = {"const": event_type, "description": "The event type."}
        properties["schema_version"] = {"const": version, "description": "The type's current schema version."}
    return schema


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """A Struct's object schema, refusing fields it does not name (dict-typed fields stay open)."""
    if schema.get("type") == "object" and "properties" in schema:
        schema.setdefault("additionalProperties", False)
    return schema


def _first_line(doc: str | None) -> str:
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("baton")
    except PackageNotFoundError:
        return "0.0.0"
