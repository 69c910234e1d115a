"""Dead letters from inside a fold and inside an effect: the failing record is dead-lettered with its reason
and stage, and the rest of its batch goes on (DESIGN.md invariant 5: nothing is silently dropped).

The fold agent's body and the effect runner run on a batch handed to them directly, with the worker's log recording
what it would send; a request the fold emits runs once, before it is read back.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from faust.types import TP

from agents import streaming
from agents.batching import Folder, Record, fold_batch
from agents.conversations.config import conversation_folder
from agents.conversations.fold import fold
from schemas import Envelope, decode, encode
from streams.app import create_app
from streams.deadletter import DeadLetter, parse_dead_letter
from streams.domains.conversations import DOMAIN
from streams.settings import Settings
from tests.fixtures.conversation_logs import answers, inbound
from tests.fixtures.policies import NoPolicies

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SETTINGS = Settings(topic_partitions=1)  # every key belongs on partition 0: nothing is re-routed
TOPIC = SETTINGS.topic("conversations")


def message(contact: str, wamid: str, text: str = "hola", at: datetime = T0) -> Envelope:
    return inbound("acme", contact, wamid, at, text=text)


def records(envelopes: Sequence[Envelope | tuple[bytes, bytes]], partition: int = 0) -> list[Record]:
    """Records in log order; a (key, value) pair stands for bytes that are no envelope."""
    out = []
    for offset, item in enumerate(envelopes):
        key, value = item if isinstance(item, tuple) else (item.stream_id.encode(), encode(item))
        out.append(Record(TOPIC, partition, offset, key, value))
    return out


def routing_request(inbound_message: Envelope) -> Envelope:
    """The routing request the fold emits for a contact's first message."""
    _, emitted = fold(None, inbound_message)
    return next(e for e in emitted if e.type == "conversation.routing.requested")


def exploding_folder(settings: Settings) -> Folder:
    """The conversation folder, except that a message saying "boom" makes it raise."""
    real = conversation_folder(settings)

    def explode(state: Any, envelope: Envelope, config: Any) -> Any:
        if getattr(envelope.payload, "text", None) == "boom":
            raise ZeroDivisionError("division by zero")
        return real.fold(state, envelope, config)

    return Folder(fold=explode, config=real.config, ends_state=real.ends_state)


def test_an_exception_inside_the_fold_is_a_dead_letter_and_the_key_goes_on() -> None:
    batch = records([message("1", "w1"), message("1", "w2", "boom", T0 + timedelta(minutes=1)),
                     message("1", "w3", at=T0 + timedelta(minutes=2)), message("2", "w4")])
    result = fold_batch(batch, lambda _key: None, exploding_folder(SETTINGS))
    assert [(record.offset, reason) for record, reason in result.dead] == [(1, "fold: ZeroDivisionError: division by zero")]
    assert result.folded == 3
    states = dict(result.writes)
    one = states["conversation:acme:1"]
    # The failed record is not in the state, but the state moved past it: a redelivery does not retry it.
    assert ([t.whatsapp_message_id for t in one.dialogue], one.log_offset) == (["w1", "w3"], 2)
    assert [t.whatsapp_message_id for t in states["conversation:acme:2"].dialogue] == ["w4"]


def test_a_record_keyed_to_another_contacts_stream_is_dead_lettered_before_the_fold() -> None:
    # Ingest, the webhook and the publisher derive the stream id from the payload; a foreign producer that
    # does not puts the event under another stream's key, and it never reaches that stream's state.
    ana = message("1", "w1")
    stray = msgspec.structs.replace(message("2", "w2", at=T0 + timedelta(minutes=1)), stream_id=ana.stream_id)
    result = fold_batch(records([ana, stray]), lambda _key: None, conversation_folder(SETTINGS))
    ((record, reason),) = result.dead
    assert record.offset == 1
    assert reason == f"stream_id {ana.stream_id!r} is not the payload's stream 'conversation:acme:2'"
    assert dict(result.writes)[ana.stream_id].messages_received == 1


class RecordingLog(streaming.WorkerLog):
    """The worker's log, recording what it would send instead of sending it."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.policies = NoPolicies(settings)

    async def send_all(self, topic: str, records: Any) -> list[Record]:
        records = list(records)
        stored = [Record(topic, 0, len(self.sent) + i, key, value) for i, (key, value) in enumerate(records)]
        self.sent += [(topic, key, value) for key, value in records]
        return stored

    def dead_letters(self) -> list[DeadLetter]:
        return [parse_dead_letter(value) for topic, _, value in self.sent if topic == SETTINGS.deadletter_topic]

    def events(self) -> list[Envelope]:
        return [decode(value) for topic, _, value in self.sent if topic == TOPIC]


class _Message:
    def __init__(self, record: Record) -> None:
        self.topic, self.partition, self.offset = record.topic, record.partition, record.offset
        self.tp = (record.topic, record.partition)
        self.key, self.value = record.key, record.value
        self.refcount, self.acks = 1, 0  # the fold agent's reference

    def incref(self) -> None:
        self.refcount += 1

    def ack(self, _consumer: Any) -> bool:
        self.refcount -= 1
        self.acks += self.refcount == 0
        return self.refcount == 0


class _Event:
    def __init__(self, record: Record) -> None:
        self.message = _Message(record)


class _Stream:
    """A stream handing the agent one batch, as take_events does."""

    def __init__(self, batch: list[Record]) -> None:
        self.batch = batch

    async def take_events(self, max_: int, within: float) -> AsyncIterator[list[_Event]]:
        yield [_Event(record) for record in self.batch]


class ExplodingEffects:
    """Routing that answers like the router, except for a message saying "boom"."""

    effect_types = frozenset({"conversation.routing.requested"})
    not_repeatable: frozenset[str] = frozenset()

    async def run(self, envelope: Envelope) -> list[Envelope]:
        if envelope.payload.text == "boom":
            raise RuntimeError("classifier exploded")
        return answers(envelope, "info", True)[:2]

    def unknown_outcome(self, envelope: Envelope) -> list[Envelope]:
        raise AssertionError("routing is repeatable")


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, RecordingLog, streaming.EffectRunner]:
    """A worker app with the conversations domain, its fold exploding on "boom" and its router too."""
    app = create_app(SETTINGS)
    log = RecordingLog(SETTINGS)
    monkeypatch.setitem(streaming._logs, id(app), log)
    domain = dataclasses.replace(DOMAIN, folder=exploding_folder, effects=lambda _settings: ExplodingEffects())
    runner = streaming.register_domain(app, SETTINGS, domain)
    assert runner is not None
    return app, log, runner


async def test_the_fold_agent_dead_letters_a_failing_fold_with_its_stage_and_folds_the_rest(worker) -> None:
    app, log, _ = worker
    garbage = (b"conversation:acme:1", b"\xff not an envelope")
    batch = records([message("1", "w1"), message("1", "w2", "boom"), garbage, message("1", "w3")])
    await app.agents["conversations.fold"].fun(_Stream(batch))

    fold_letter, decode_letter = log.dead_letters()
    assert (fold_letter.stage, fold_letter.reason) == ("fold:conversations", "fold: ZeroDivisionError: division by zero")
    assert (fold_letter.source_topic, fold_letter.partition, fold_letter.offset) == (TOPIC, 0, 1)
    assert fold_letter.raw_key() == b"conversation:acme:1" and decode(fold_letter.raw_value()).payload.text == "boom"
    assert decode_letter.stage == "fold:conversations" and decode_letter.reason.startswith("decode: ")
    assert (decode_letter.offset, decode_letter.raw_value()) == (2, garbage[1])
    # The others were folded: their routing requests are on the log, in order (their states wait for the
    # next flush, which needs a running producer and is the fold_batch test's business).
    requested = [e for e in log.events() if e.type == "conversation.routing.requested"]
    assert [e.causation_id for e in requested] == [message("1", "w1").event_id, message("1", "w3").event_id]


async def test_an_effect_exception_is_a_dead_letter_and_the_other_results_are_published(worker) -> None:
    _, log, runner = worker
    boom = routing_request(message("1", "w1", "boom"))
    fine = routing_request(message("2", "w2", "hola"))
    batch = records([message("1", "w1", "boom"), boom, fine])
    events = [_Event(record) for record in batch]
    await runner.hand_over([(record, event.message) for record, event in zip(batch, events, strict=True)])
    for event in events:
        event.message.ack(None)  # the fold agent's ack, once hand_over returns
    # The requests stay uncommittable until their effects have run; the inbound message is no request.
    assert [e.message.acks for e in events] == [1, 0, 0]
    await runner.run_next()
    assert [e.message.acks for e in events] == [1, 1, 1]

    (letter,) = log.dead_letters()
    assert (letter.stage, letter.reason) == ("effects:conversations", "effect: RuntimeError: classifier exploded")
    assert (letter.source_topic, letter.partition, letter.offset) == (TOPIC, 0, 1)
    assert decode(letter.raw_value()).event_id == boom.event_id
    assert [(e.type, e.causation_id) for e in log.events()] == [
        ("conversation.message.routed", fine.event_id), ("conversation.reply.requested", fine.event_id)]


async def test_a_request_the_fold_emits_runs_once_the_broker_has_it_and_its_copy_read_back_is_only_released(
        worker) -> None:
    app, log, runner = worker
    await app.agents["conversations.fold"].fun(_Stream(records([message("3", "w9")])))
    (request,) = [e for e in log.events() if e.type == "conversation.routing.requested"]
    await runner.run_next()
    outcomes = [(e.type, e.event_id) for e in log.events() if e.causation_id == request.event_id]
    assert [kind for kind, _ in outcomes] == ["conversation.message.routed", "conversation.reply.requested"]

    # The fold agent reads the request's own record from the log later: it is released, not run again.
    (offset,) = [i for i, (_, _, value) in enumerate(log.sent) if decode(value).event_id == request.event_id]
    copy = Record(TOPIC, 0, offset, *log.sent[offset][1:])
    read_back = _Event(copy)
    await runner.hand_over([(copy, read_back.message)])
    read_back.message.ack(None)  # the fold agent's ack
    assert read_back.message.acks == 0
    await runner.run_next()
    assert read_back.message.acks == 1
    assert [(e.type, e.event_id) for e in log.events() if e.causation_id == request.event_id] == outcomes


async def test_a_rebalance_waits_for_the_runs_handed_over_before_it_gives_the_partitions_away(worker) -> None:
    app, log, runner = worker
    await app.agents["conversations.fold"].fun(_Stream(records([message("4", "w10")])))
    (request,) = [e for e in log.events() if e.type == "conversation.routing.requested"]
    revoking = asyncio.ensure_future(app.on_partitions_revoked.send({TP(TOPIC, 0)}))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not revoking.done()  # the emitted request holds no message Faust would wait for
    await runner.run_next()
    await revoking
    assert [e.type for e in log.events() if e.causation_id == request.event_id] == [
        "conversation.message.routed", "conversation.reply.requested"]


async def test_an_unlogged_routing_request_runs_from_the_fold_and_holds_its_inbound_record_until_it_has_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(SETTINGS)
    log = RecordingLog(SETTINGS)
    monkeypatch.setitem(streaming._logs, id(app), log)
    runner = streaming.register_domain(app, SETTINGS, dataclasses.replace(
        DOMAIN, effects=lambda _settings: ExplodingEffects()))  # the real folder: routing requests unlogged
    assert runner is not None
    inbound_message = message("5", "w11")
    (event,) = events = [_Event(record) for record in records([inbound_message])]

    class Stream:
        async def take_events(self, max_: int, within: float) -> AsyncIterator[list[_Event]]:
            yield events

    await app.agents["conversations.fold"].fun(Stream())
    event.message.ack(None)  # the fold agent's ack
    assert [e.type for e in log.events()] == ["conversation.session.started"]  # no request on the log
    assert event.message.acks == 0  # the inbound record stays uncommittable until its request has run
    await runner.run_next()
    assert event.message.acks == 1
    # Its outcomes carry the ids a run of it derives and name the inbound message, which is on the log, as cause.
    request = routing_request(inbound_message)
    assert [(e.type, e.event_id, e.causation_id) for e in log.events()[1:]] == [
        (e.type, e.event_id, inbound_message.event_id) for e in answers(request, "info", True)[:2]]


class CountingSends:
    """A non-repeatable effect (like a WhatsApp send) that counts its runs."""

    effect_types = frozenset({"conversation.routing.requested"})
    not_repeatable = effect_types

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, envelope: Envelope) -> list[Envelope]:
        self.runs += 1
        return answers(envelope, "info", True)[:2]

    def unknown_outcome(self, envelope: Envelope) -> list[Envelope]:
        raise AssertionError("a request handed over twice is no interrupted run")


async def test_a_request_handed_over_again_before_its_first_copy_ran_runs_once(monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(SETTINGS)
    log = RecordingLog(SETTINGS)
    monkeypatch.setitem(streaming._logs, id(app), log)
    sends = CountingSends()
    runner = streaming.register_domain(app, SETTINGS, dataclasses.replace(DOMAIN, effects=lambda _settings: sends))
    assert runner is not None
    inbound_message = message("6", "w12")
    request = routing_request(inbound_message)
    (record,) = records([inbound_message])
    # The fold hands the unlogged request over; a rebalance redelivers its record before the request ran, and the
    # fold hands it over again from the state that keeps it.
    first, again = _Message(record), _Message(record)
    await runner.hand_over([(record, first)], unlogged=[(record, request)])
    await runner.hand_over([(record, again)], unlogged=[(record, request)])
    first.ack(None), again.ack(None)  # the fold agent's acks
    await runner.run_next()
    assert sends.runs == 1
    assert (first.acks, again.acks) == (1, 1)
    assert [(e.type, e.causation_id) for e in log.events()] == [
        ("conversation.message.routed", inbound_message.event_id),
        ("conversation.reply.requested", inbound_message.event_id)]
