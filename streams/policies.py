"""The policy book: every policy adopted on the log (schemas.policies), read from the policies topic.

Edges stamp each event with the hash of its tenant's policy in force (`stamp`); folds resolve a stamped hash to
their section (`config`). Both read the same book, which only grows: a hash once adopted names the same
policy for good, so a stamped event decides the same way live and in every replay.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from schemas import DecodeError, Envelope, decode, new_event
from schemas.policies import DEFAULT_SCOPE, PolicyAdopted, Sections, content_hash
from streams.errors import StreamsError
from streams.settings import Settings
from streams.topics import log_consumer, log_end_offsets, topic_partitions

log = logging.getLogger(__name__)
POLICY_DOMAIN = "policies"


class UnknownPolicy(StreamsError, LookupError):
    """An event names a policy hash that was never adopted on the log."""


class PolicyBook:
    """Adopted policies by hash, and the one in force per scope (in log order)."""

    def __init__(self) -> None:
        self.documents: dict[str, Sections] = {}
        self.current: dict[str, str] = {}
        self.adoptions: list[Envelope] = []
        self._configs: dict[tuple[str, str], Any] = {}

    def adopt(self, envelope: Envelope) -> None:
        adopted: PolicyAdopted = envelope.payload  # type: ignore[assignment]
        if self.current.get(adopted.scope) == adopted.policy and adopted.policy in self.documents:
            return  # a duplicate on the log
        self.documents[adopted.policy] = adopted.sections
        self.current[adopted.scope] = adopted.policy
        self.adoptions.append(envelope)

    def stamp(self, tenant_id: str) -> str | None:
        """The hash of the policy in force for a tenant: its own, else the default; None before any adoption."""
        return self.current.get(tenant_id) or self.current.get(DEFAULT_SCOPE)

    def sections(self, tenant_id: str) -> Sections:
        """The sections in force for a tenant (empty before any adoption)."""
        stamp = self.stamp(tenant_id)
        return dict(self.documents[stamp]) if stamp else {}

    def config(self, policy: str, domain: str, parse: Callable[[dict[str, Any]], Any]) -> Any:
        """A domain's fold configuration under an adopted policy, parsed once per hash."""
        key = (policy, domain)
        if key not in self._configs:
            if policy not in self.documents:
                raise UnknownPolicy(f"policy {policy} was never adopted on the log")
            self._configs[key] = parse(self.documents[policy].get(domain, {}))
        return self._configs[key]


class PolicyReader:
    """Keeps a PolicyBook up to date with the policies topic (one consumer, read to the end on each refresh)."""

    def __init__(self, settings: Settings, book: PolicyBook | None = None) -> None:
        self.settings = settings
        self.book = book or PolicyBook()
        self._consumer: AIOKafkaConsumer | None = None
        self._ends: AIOKafkaConsumer | None = None  # probes the topic's ends (log_end_offsets) at each refresh
        self._partitions: list[TopicPartition] = []
        self._lock = asyncio.Lock()
        self._read_at = float("-inf")

    async def stop(self) -> None:
        for consumer in (self._consumer, self._ends):
            if consumer is not None:
                await consumer.stop()
        self._consumer = self._ends = None

    async def refresh(self) -> PolicyBook:
        """Read every adoption up to the topic's end now (the first call connects)."""
        async with self._lock:
            self._read_at = time.monotonic()
            if self._consumer is None:
                self._consumer = await self._started_consumer("policies")
            if self._ends is None:
                self._ends = await self._started_consumer("policies-ends")
            consumer = self._consumer
            if not self._partitions:  # the topic may be created after this reader started
                self._partitions = await topic_partitions(consumer, [self.settings.topic(POLICY_DOMAIN)])
                if not self._partitions:
                    return self.book
                consumer.assign(self._partitions)
                await consumer.seek_to_beginning(*self._partitions)
            ends = await log_end_offsets(self.settings, self._partitions, consumer=self._ends)
            pending = {tp for tp in self._partitions if await consumer.position(tp) < ends[tp]}
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=500)
                for records in batch.values():  # one scope lives on one partition: its order is kept
                    for record in records:
                        self._read(record.value)
                pending = {tp for tp in pending if await consumer.position(tp) < ends[tp]}
            return self.book

    async def _started_consumer(self, name: str) -> AIOKafkaConsumer:
        consumer = log_consumer(self.settings, f"{self.settings.app_id}-{name}", auto_offset_reset="earliest")
        await consumer.start()
        return consumer

    async def stamp(self, envelopes: Sequence[Envelope]) -> list[Envelope]:
        """The envelopes, each one without a policy stamped with its tenant's policy in force (the topic is read
        again first when the last read is older than policy_refresh_s)."""
        if all(envelope.policy is not None for envelope in envelopes):
            return list(envelopes)
        if time.monotonic() - self._read_at > self.settings.policy_refresh_s:
            await self.refresh()
        return [envelope if envelope.policy is not None
                else msgspec.structs.replace(envelope, policy=self.book.stamp(envelope.tenant_id))
                for envelope in envelopes]

    async def knows(self, policies: Iterable[str | None]) -> None:
        """Read the topic again when a named hash is not in the book yet (a fold then refuses what is still
        unknown: UnknownPolicy, a dead letter)."""
        if any(p is not None and p not in self.book.documents for p in policies):
            await self.refresh()

    def _read(self, value: bytes | None) -> None:
        try:
            envelope = decode(value or b"")
        except DecodeError:
            return  # not an adoption: the policies fold dead-letters it
        if isinstance(envelope.payload, PolicyAdopted) and envelope.payload.policy == content_hash(
                envelope.payload.sections):
            self.book.adopt(envelope)


def adoption(book: PolicyBook, scope: str, sections: Sections, *, reason: str, actor: str,
             at: datetime | None = None) -> Envelope | None:
    """The event adopting `sections` for `scope`, or None when they are already in force there."""
    policy = content_hash(sections)
    previous = book.current.get(scope)
    if previous == policy:
        return None
    at = at or datetime.now(UTC)
    payload = PolicyAdopted(scope=scope, policy=policy, sections=sections, previous=previous, reason=reason)
    # The same change adopted twice (two processes starting at once) is one event.
    event_id = uuid.uuid5(uuid.NAMESPACE_URL, f"baton:policy:{scope}:{previous}:{policy}")
    return new_event(scope, payload, event_id=event_id, occurred_at=at, recorded_at=at, actor=actor)


def configured_sections(settings: Settings) -> Sections:
    """Every domain's policy section as the environment configures it now."""
    from streams.registry import load_domains

    return {d.name: d.policy.configured() for d in load_domains(settings) if d.policy is not None}


async def adopt_configured(reader: PolicyReader, configured: Sections,
                           publish: Callable[[Sequence[Envelope]], Awaitable[object]]) -> str | None:
    """At start: adopt the configured default policy when it differs from the one in force on the log, so an
    environment change is an explicit, audited event; returns the hash adopted, if any."""
    await reader.refresh()
    current = reader.book.documents.get(reader.book.current.get(DEFAULT_SCOPE, ""), {})
    envelope = adoption(reader.book, DEFAULT_SCOPE, {**current, **configured}, reason="configured", actor="baton")
    if envelope is None:
        return None
    await publish([envelope])
    await reader.refresh()
    log.info("adopted the configured policy %s (was %s)", envelope.payload.policy,  # type: ignore[attr-defined]
             envelope.payload.previous)  # type: ignore[attr-defined]
    return envelope.payload.policy  # type: ignore[attr-defined]


async def adopt_configured_once_reachable(
        reader: PolicyReader, configured: Sections, publish: Callable[[Sequence[Envelope]], Awaitable[object]], *,
        first_delay_s: float = 0.5, max_delay_s: float = 10.0,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> str | None:
    """adopt_configured, tried again with a doubling delay while the broker cannot be reached (a worker's broker
    may be away for a while, as its consumers wait for it; the adoption is one idempotent event)."""
    delay = first_delay_s
    while True:
        try:
            return await adopt_configured(reader, configured, publish)
        except KafkaError as exc:
            log.warning("adopting the configured policy failed (%s: %s); trying again in %.1f s",
                        type(exc).__name__, exc, delay)
            await sleep(delay)
            delay = min(delay * 2, max_delay_s)
