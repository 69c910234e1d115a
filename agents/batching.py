"""Fold a batch of records with one table write per key (plus one for each state a domain says an event ends)."""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from agents.errors import AgentError
from schemas import DecodeError, Envelope, decode, encode, stream_id_for

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed Kafka record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class BadRecord(AgentError, ValueError):
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
    """What one batch produced: ordered table writes, emitted events, effect requests handed to the effects without
    being logged (each with the record whose fold made it), dead letters."""

    writes: list[tuple[str, S]] = field(default_factory=list)
    emitted: list[Envelope] = field(default_factory=list)
    requests: list[tuple[Record, Envelope]] = field(default_factory=list)
    dead: list[tuple[Record, str]] = field(default_factory=list)
    folded: int = 0
    redelivered: int = 0


# How many applied event ids a state keeps: a duplicate on the log further back than this is folded again.
APPLIED_IDS_KEPT = 1024


class PendingRequest(msgspec.Struct, frozen=True):
    """An unlogged effect request the state's fold made, kept until its outcome is folded in."""

    offset: int  # of the record whose fold made it
    cause: str  # that record's event id, which the request's outcomes name as their cause
    envelope: bytes  # encoded


# How many unlogged requests a state keeps waiting for their outcomes (one whose effect was dead-lettered never
# gets one: the oldest is dropped).
PENDING_REQUESTS_KEPT = 64


class FoldState(msgspec.Struct, kw_only=True):
    """The spine's part of every domain state (folds never touch it).

    applied_event_ids: the events the state includes (with the decisions it emitted onto its own stream), so a
    duplicate on the log changes nothing; log_offset: the offset of the last record folded in, so a redelivered
    record is skipped before it is decoded; pending_requests: the unlogged effect requests (Folder.unlogged) its
    folds made whose outcomes it does not include yet, handed to the effects again when the record that made one
    is redelivered.
    """

    applied_event_ids: list[str] = []
    log_offset: int = -1
    pending_requests: list[PendingRequest] = []


@dataclass(frozen=True, slots=True)
class StateCodec(Generic[S]):
    """How a domain's states are stored in its table and changelog."""

    encode: Callable[[S], bytes]
    decode: Callable[[bytes], S]

    @classmethod
    def json(cls, state_type: Any) -> StateCodec:
        """JSON through msgspec, the encoder and decoder built once (state_type may be a tagged union)."""
        return cls(encode=msgspec.json.Encoder().encode, decode=msgspec.json.Decoder(state_type).decode)


@dataclass(frozen=True, slots=True)
class Folder(Generic[S]):
    """A domain's pure fold as the spine applies it: once per event, with the rule for mid-batch writes."""

    fold: Callable[[S | None, Envelope, Any], tuple[S | None, list[Envelope]]]
    config: Any
    ends_state: Callable[[Envelope], bool] = lambda _envelope: False
    # What a duplicate does to the state (the conversations fold counts them); None: nothing.
    on_duplicate: Callable[[S, Envelope], S] | None = None
    applied_ids_kept: int = APPLIED_IDS_KEPT
    # The config under the policy an event is stamped with (streams.policies); `config` decides unstamped events.
    config_of: Callable[[str], Any] | None = None
    # Effect requests (types) the fold emits onto its own stream that are handed to the effects without being
    # logged: their fold changes nothing and their outcome event carries what an audit needs. Their outcomes name
    # the logged event the request was made from as their cause; the state keeps each request until an event
    # caused by that event is folded in.
    unlogged: frozenset[str] = frozenset()

    def apply(self, state: S | None, envelope: Envelope) -> tuple[S | None, list[Envelope]]:
        """Fold one envelope unless the state already includes its event; record the event as applied."""
        event_id = str(envelope.event_id)
        if state is not None and event_id in state.applied_event_ids:  # type: ignore[attr-defined]
            return (self.on_duplicate(state, envelope) if self.on_duplicate else state), []
        config = self.config if envelope.policy is None or self.config_of is None else self.config_of(envelope.policy)
        new_state, emitted = self.fold(state, envelope, config)
        if new_state is None or (new_state is state and not emitted):
            return new_state, emitted
        # A decision the fold emits onto its own stream is applied as it is made: its echo is a duplicate.
        own = [str(e.event_id) for e in emitted if e.stream_id == envelope.stream_id and e.type not in self.unlogged]
        applied = [*new_state.applied_event_ids, event_id, *own][-self.applied_ids_kept:]  # type: ignore[attr-defined]
        return msgspec.structs.replace(new_state, applied_event_ids=applied), emitted

    def pending_after(self, state: S | None, envelope: Envelope, offset: int,
                      made: list[Envelope]) -> list[PendingRequest]:
        """The pending requests of a state once `envelope` (at `offset`) is folded into it: less those it is an
        outcome of, plus the unlogged requests its fold made."""
        pending: list[PendingRequest] = [] if state is None else state.pending_requests  # type: ignore[attr-defined]
        if envelope.causation_id is not None and pending:
            cause = str(envelope.causation_id)
            pending = [p for p in pending if p.cause != cause]
        if not made:
            return pending
        made_from = str(envelope.event_id)
        return [*pending, *(PendingRequest(offset, made_from, encode(e)) for e in made)][-PENDING_REQUESTS_KEPT:]


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
            # A redelivery of a record this state already includes (not a duplicate on the log). The unlogged
            # requests it made that have no outcome yet are handed to the effects again (the ledger tells whether
            # one started).
            result.redelivered += 1
            result.requests.extend((record, decode(p.envelope)) for p in state.pending_requests
                                   if p.offset == record.offset)
            continue
        try:
            envelope = envelope_of(record)
        except BadRecord as exc:
            result.dead.append((record, str(exc)))
            continue
        try:
            new_state, emitted = folder.apply(state, envelope)
        except Exception as exc:  # noqa: BLE001 - any fold failure is a dead letter, never a skip
            result.dead.append((record, f"fold: {type(exc).__name__}: {exc}"))
            continue
        result.folded += 1
        if new_state is state and not emitted:
            # A no-op (an echo of an applied event) needs no write; a redelivery of it is a no-op again.
            states[key] = state
            continue
        if (key in changed or key in unwritten) and state is not None and any(folder.ends_state(e) for e in emitted):
            # The changelog must hold every state an event ends (a conversation's session): write it before it is
            # replaced.
            result.writes.append((key, state))
        made: list[Envelope] = []  # the unlogged requests among the emitted events
        for event in emitted:
            (made if event.type in folder.unlogged and event.stream_id == key else result.emitted).append(event)
        if new_state is not None:
            pending = folder.pending_after(state, envelope, record.offset, made)
            new_state = msgspec.structs.replace(new_state, log_offset=record.offset, pending_requests=pending)
        states[key] = new_state
        changed.add(key)
        result.requests.extend((record, request) for request in made)
    result.writes.extend((key, state) for key, state in states.items() if key in changed and state is not None)
    return result


@dataclass(slots=True)
class _Unwritten(Generic[S]):
    partition: int
    state: S
    awaits: bool  # its last fold emitted an effect request onto its own stream


class UnwrittenStates(Generic[S]):
    """States folded but not written to the table yet, coalesced per key, and when each is due.

    A state is due at the next flush tick; when its fold emitted an effect request onto its own stream, it awaits the
    effect's outcome instead and is due once the outcome is folded in (request and outcome then cost one table
    write). The caller writes everything before each offset commit (drain), so every state is written by then, and a
    committed record's effect is always on the changelog.
    """

    def __init__(self) -> None:
        self._states: dict[str, _Unwritten[S]] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._states

    def get(self, key: str) -> S | None:
        entry = self._states.get(key)
        return None if entry is None else entry.state

    def keep(self, key: str, partition: int, state: S, awaits: bool) -> bool:
        """Keep a key's newest state; True when it is due now (the outcome it awaited is in), and no longer kept."""
        entry = self._states.get(key)
        if entry is not None and entry.awaits and not awaits:
            del self._states[key]
            return True
        self._states[key] = _Unwritten(partition, state, awaits)
        return False

    def tick(self) -> list[tuple[str, S]]:
        """The states due at a flush tick (all but those awaiting an outcome), no longer kept."""
        due = [(key, entry.state) for key, entry in self._states.items() if not entry.awaits]
        for key, _ in due:
            del self._states[key]
        return due

    def drain(self) -> list[tuple[str, S]]:
        """Every state kept, no longer kept."""
        states = [(key, entry.state) for key, entry in self._states.items()]
        self._states.clear()
        return states

    def forget(self, partitions: Container[int]) -> None:
        """Drop the states of keys on these partitions (another worker folds them again)."""
        for key in [k for k, entry in self._states.items() if entry.partition in partitions]:
            del self._states[key]
