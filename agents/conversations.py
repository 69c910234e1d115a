"""Thin Faust agents for conversations: the session fold and the effect worker with its ledger."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Sequence

import faust
import msgspec

from agents.batching import Record, fold_batch
from agents.effects import EFFECT_TYPES, Effects
from agents.folders import conversation_folder
from agents.folds.conversations import ConversationState, decode_state, encode_state
from schemas import DecodeError, Envelope, decode, encode
from streams.app import domain_topic, raw_table
from streams.deadletter import dead_letter_record
from streams.settings import Settings

LEDGER_SIZE = 512
_ledger_decoder = msgspec.json.Decoder(list[str])


def register(app: faust.App, settings: Settings, effects: Effects,
             on_fold: Callable[[int], None] | None = None) -> None:
    """Attach the conversation agents and tables to the app; on_fold(n) observes each folded batch."""
    topic = domain_topic(app, settings, "conversations")
    deadletters = app.topic(
        settings.deadletter_topic, key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw", partitions=1,
    )
    sessions = raw_table(app, settings, "sessions")
    ledger = raw_table(app, settings, "effects")
    folder = conversation_folder(settings)

    # The last state this agent wrote per key, with the bytes it wrote: the in-memory table hands the
    # same bytes object back, so it is decoded again only after recovery or a rebalance.
    decoded: dict[bytes, tuple[bytes, ConversationState]] = {}

    def load_session(key: str) -> ConversationState | None:
        data = sessions.get(key.encode())
        if not data:
            return None
        cached = decoded.get(key.encode())
        return cached[1] if cached is not None and cached[0] is data else decode_state(data)

    async def send_all(target: faust.TopicT, records: Iterable[tuple[bytes | None, bytes]]) -> None:
        # The producer directly: Topic.send's per-message bookkeeping costs more than the send itself.
        name = target.get_topic_name()
        futures = [await app.producer.send(name, key, value, None, None, None) for key, value in records]
        await asyncio.gather(*futures)

    async def dead_letter(dead: Sequence[tuple[Record, str]], stage: str) -> None:
        await send_all(deadletters, (
            (record.key, dead_letter_record(
                source_topic=record.topic, partition=record.partition, offset=record.offset,
                key=record.key, value=record.value, reason=reason, stage=stage))
            for record, reason in dead
        ))

    @app.agent(topic, concurrency=1, name="conversations.fold")
    async def conversations_fold(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.worker_batch_max, settings.worker_batch_within_s):
            result = fold_batch([_record(e) for e in events], load_session, folder)
            # Emissions are acknowledged before the state that includes them is written, so a
            # crash in between re-emits the same ids (deduplicated downstream) instead of losing them.
            await send_all(topic, ((e.stream_id.encode(), encode(e)) for e in result.emitted))
            await dead_letter(result.dead, "fold:conversations")
            for key, state in result.writes:
                data = encode_state(state)
                sessions[key.encode()] = data
                decoded[key.encode()] = (data, state)
            if on_fold is not None:
                on_fold(len(events))

    @app.agent(topic, concurrency=1, name="conversations.effects")
    async def conversations_effects(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.worker_batch_max, settings.worker_batch_within_s):
            requests: dict[uuid.UUID, tuple[Record, Envelope]] = {}
            for record, envelope in map(_decode_effect, events):
                # A record redelivered within one batch is one request: its send must not look interrupted.
                if envelope is not None and envelope.event_id not in requests:
                    requests[envelope.event_id] = (record, envelope)
            if requests:
                await _run_effects(list(requests.values()))

    async def _run_effects(requests: list[tuple[Record, Envelope]]) -> None:
        started: dict[str, list[str]] = {}
        todo: list[tuple[Record, Envelope]] = []
        outputs: list[list[Envelope]] = []
        for record, envelope in requests:
            if envelope.type in effects.NOT_REPEATABLE:
                key = envelope.stream_id
                if key not in started:
                    started[key] = _ledger_decoder.decode(ledger.get(key.encode()) or b"[]")
                if envelope.event_id.hex in started[key]:
                    # Started before a crash or redelivered: never send again. The result carries the same
                    # event id as the original outcome, so whichever reached the log first wins.
                    outputs.append(effects.unknown_outcome(envelope))
                    continue
                started[key].append(envelope.event_id.hex)
            todo.append((record, envelope))
        if started:
            # Repeatable effects (routing) just run again after a crash; a send is recorded before it happens.
            for key, ids in started.items():
                ledger[key.encode()] = msgspec.json.encode(ids[-LEDGER_SIZE:])
            await app.producer.flush()
        results = await asyncio.gather(*(effects.run(env) for _, env in todo), return_exceptions=True)
        failed: list[tuple[Record, str]] = []
        for (record, _), result in zip(todo, results, strict=True):
            if isinstance(result, BaseException):
                failed.append((record, f"effect: {type(result).__name__}: {result}"))
            else:
                outputs.append(result)
        await send_all(topic, ((e.stream_id.encode(), encode(e)) for batch in outputs for e in batch))
        await dead_letter(failed, "effects:conversations")


def _record(event: faust.EventT) -> Record:
    message = event.message
    return Record(message.topic, message.partition, message.offset, message.key, message.value)


def _decode_effect(event: faust.EventT) -> tuple[Record, Envelope | None]:
    record = _record(event)
    if record.value is None:
        return record, None
    try:
        envelope = decode(record.value)
    except DecodeError:
        return record, None  # the fold agent dead-letters undecodable records
    return record, envelope if envelope.type in EFFECT_TYPES else None
