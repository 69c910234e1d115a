"""Fold a batch of records with one table write per key (plus one at each session boundary)."""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from schemas import DecodeError, Envelope, decode, stream_id_for

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed Kafka record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class BadRecord(ValueError):
    """A record holding no valid envelope for its key; the message is the dead-letter reason."""


def envelope_of(record: Record) -> Envelope:
    """The envelope a domain record holds (any object with bytes `key` and `value`); BadRecord otherwise."""
    if record.key is None or record.value is None:
        raise BadRecord("record has no key or no value")
    try:
        envelope = decode(record.value)
    except DecodeError as exc:
        raise BadRecord(f"decode: {exc}") from None
    key = record.key.decode("utf-8", "replace")
    if envelope.stream_id != key:
        raise BadRecord(f"key {key!r} differs from stream_id {envelope.stream_id!r}")
    if (rule := stream_id_for(envelope.tenant_id, envelope.payload)) != key:
        raise BadRecord(f"stream_id {key!r} is not the payload's stream {rule!r}")
    return envelope


@dataclass(slots=True)
class BatchResult(Generic[S]):
    """What one batch produced: ordered table writes, emitted events, dead letters."""

    writes: list[tuple[str, S]] = field(default_factory=list)
    emitted: list[Envelope] = field(default_factory=list)
    dead: list[tuple[Record, str]] = field(default_factory=list)
    folded: int = 0
    redelivered: int = 0


@dataclass(frozen=True, slots=True)
class Folder(Generic[S]):
    """A domain's pure fold plus the rule saying when a state must be written mid-batch.

    States are msgspec Structs with a `log_offset` field: the offset of the last record they include.
    """

    fold: Callable[[S | None, Envelope, Any], tuple[S | None, list[Envelope]]]
    config: Any
    ends_state: Callable[[Envelope], bool] = lambda _envelope: False


def fold_batch(records: Sequence[Record], load: Callable[[str], S | None], folder: Folder[S],
               unwritten: Container[str] = frozenset()) -> BatchResult[S]:
    """Fold records in log order; coalesce writes per key; never raise for one bad record.

    `unwritten` names keys whose loaded state is not in the table yet: a state they end is written first too.
    """
    result: BatchResult[S] = BatchResult()
    states: dict[str, S | None] = {}
    changed: set[str] = set()
    for record in records:
        if record.value is None or record.key is None:
            result.dead.append((record, "record has no key or no value"))
            continue
        key = record.key.decode("utf-8", "replace")
        state = states[key] if key in states else load(key)
        if state is not None and record.offset <= state.log_offset:
            # A redelivery of a record this state already includes (not a duplicate on the log).
            result.redelivered += 1
            continue
        try:
            envelope = envelope_of(record)
        except BadRecord as exc:
            result.dead.append((record, str(exc)))
            continue
        try:
            new_state, emitted = folder.fold(state, envelope, folder.config)
        except Exception as exc:  # noqa: BLE001 - any fold failure is a dead letter, never a skip
            result.dead.append((record, f"fold: {type(exc).__name__}: {exc}"))
            continue
        result.folded += 1
        if new_state is state and not emitted:
            # A no-op (an echo of an applied event) needs no write; a redelivery of it is a no-op again.
            states[key] = state
            continue
        if (key in changed or key in unwritten) and state is not None and any(folder.ends_state(e) for e in emitted):
            # The changelog must hold the final state of every session, so write it before it is replaced.
            result.writes.append((key, state))
        states[key] = None if new_state is None else msgspec.structs.replace(new_state, log_offset=record.offset)
        changed.add(key)
        result.emitted.extend(emitted)
    result.writes.extend((key, state) for key, state in states.items() if key in changed and state is not None)
    return result
