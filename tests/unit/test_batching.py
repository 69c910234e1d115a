"""fold_batch: coalesced writes, session-boundary writes, redelivery versus duplicates, dead letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from agents.batching import Record, UnwrittenStates, fold_batch
from agents.conversations.config import conversation_folder
from agents.conversations.fold import ConversationState
from schemas import Envelope, decode, emitted, encode
from schemas.conversations import MessageAnswered, conversation_stream_id
from streams.settings import Settings
from tests.fixtures.conversation_logs import inbound

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def message(contact: str, wamid: str, at: datetime) -> Envelope:
    return inbound("acme", contact, wamid, at)


def records(envelopes: list[Envelope], first_offset: int = 0) -> list[Record]:
    return [Record("t", 0, first_offset + i, e.stream_id.encode(), encode(e)) for i, e in enumerate(envelopes)]


def run(batch: list[Record], table: dict[str, ConversationState], unwritten: frozenset[str] = frozenset()):
    result = fold_batch(batch, table.get, conversation_folder(Settings()), unwritten)
    for key, state in result.writes:
        table[key] = state
    return result


def test_one_write_per_key_per_batch() -> None:
    table: dict[str, ConversationState] = {}
    result = run(records([message("1", f"w{i}", T0 + timedelta(seconds=i)) for i in range(5)]), table)
    assert [key for key, _ in result.writes] == [conversation_stream_id("acme", "1")]
    assert table[conversation_stream_id("acme", "1")].messages_received == 5


def test_redelivered_records_change_nothing_but_duplicates_on_the_log_are_counted() -> None:
    envelopes = [message("1", f"w{i}", T0 + timedelta(seconds=i)) for i in range(3)]
    table: dict[str, ConversationState] = {}
    run(records(envelopes), table)
    before = table[conversation_stream_id("acme", "1")]

    redelivered = run(records(envelopes), table)  # same offsets again, as after a crash
    assert redelivered.redelivered == 3 and redelivered.emitted == []
    assert table[conversation_stream_id("acme", "1")] == before

    duplicate = run(records(envelopes[:1], first_offset=10), table)  # WhatsApp delivered it twice
    state = table[conversation_stream_id("acme", "1")]
    assert duplicate.redelivered == 0
    assert (state.messages_received, state.duplicates_dropped) == (3, 1)


def test_echoes_of_emitted_events_write_nothing() -> None:
    table: dict[str, ConversationState] = {}
    first = run(records([message("1", "a", T0)]), table)
    echoes = run(records(first.emitted, first_offset=1), table)
    assert [e.type for e in first.emitted] == ["conversation.session.started"]
    assert echoes.folded == 1 and echoes.writes == [] and echoes.emitted == []


def answer(request: Envelope) -> Envelope:
    """The one-run outcome of an unlogged routing request, as the effect runner logs it: caused by the message."""
    payload = request.payload
    outcome = emitted(request, 0, MessageAnswered(session_id=payload.session_id, contact=payload.contact,
                                                  message_event_id=payload.message_event_id, lane="info",
                                                  reply_text="Abrimos a las 9.", sender="log",
                                                  whatsapp_message_id="wamid.1"), actor="effect:sender")
    return msgspec.structs.replace(outcome, causation_id=request.causation_id)


def test_a_routing_request_goes_to_the_effects_unlogged_and_its_state_keeps_it_until_the_outcome() -> None:
    key = conversation_stream_id("acme", "1")
    table: dict[str, ConversationState] = {}
    inbound_record = records([message("1", "a", T0)])
    first = run(inbound_record, table)
    ((source, request),) = first.requests
    assert request.type == "conversation.routing.requested" and source is inbound_record[0]
    assert request.type not in [e.type for e in first.emitted]  # nothing of it reaches the log
    assert [decode(p.envelope) for p in table[key].pending_requests] == [request]

    # Redelivered (a crash before the request ran): the same request is handed over again, from the state.
    again = run(inbound_record, table)
    assert again.redelivered == 1 and [(r.offset, e) for r, e in again.requests] == [(0, request)]

    outcome = run(records([answer(request)], first_offset=1), table)
    assert outcome.requests == [] and table[key].pending_requests == []
    assert table[key].replies_sent == 1
    assert run(inbound_record, table).requests == []  # answered: a redelivery hands nothing over


def test_session_rollover_writes_the_ended_session_first() -> None:
    table: dict[str, ConversationState] = {}
    batch = records([message("1", "a", T0), message("1", "b", T0 + timedelta(hours=25))])
    result = run(batch, table)
    (_, ended), (_, current) = result.writes
    assert ended.session_id != current.session_id
    assert ended.messages_received == 1 and current.session_number == 2


def test_rollover_of_a_state_not_yet_written_writes_the_ended_session_first() -> None:
    # The worker keeps a batch's last state per key in memory until its flush; the next batch may end it.
    key = conversation_stream_id("acme", "1")
    table: dict[str, ConversationState] = {}
    run(records([message("1", "a", T0)]), table)
    later = records([message("1", "b", T0 + timedelta(hours=25))], first_offset=5)
    assert [s.session_number for _, s in run(later, dict(table)).writes] == [2]  # written: the table has it
    (_, ended), (_, current) = run(later, dict(table), unwritten=frozenset({key})).writes
    assert (ended.session_number, ended.messages_received, current.session_number) == (1, 1, 2)


def test_bad_records_become_dead_letters_and_the_rest_is_folded() -> None:
    good = records([message("1", "a", T0)])[0]
    batch = [
        Record("t", 0, 0, b"conversation:acme:1", b"{not json"),
        Record("t", 0, 1, None, b"{}"),
        Record("t", 0, 2, b"conversation:acme:other", good.value),
        Record("t", 0, 3, good.key, good.value),
    ]
    result = run(batch, {})
    reasons = [reason for _, reason in result.dead]
    assert reasons[0].startswith("decode: invalid envelope")
    assert reasons[1] == "record has no key or no value"
    assert "differs from stream_id" in reasons[2]
    assert result.folded == 1



def test_a_kept_state_is_written_once_at_the_next_flush_tick_with_its_newest_value() -> None:
    states: UnwrittenStates[str] = UnwrittenStates()
    assert not states.keep("a", 0, "a1", awaits=False)
    assert not states.keep("a", 0, "a2", awaits=False)
    assert states.get("a") == "a2" and "a" in states
    assert states.tick() == [("a", "a2")]
    assert states.tick() == [] and "a" not in states


def test_a_state_awaiting_its_request_is_due_when_the_outcome_is_folded() -> None:
    states: UnwrittenStates[str] = UnwrittenStates()
    states.keep("turn", 0, "received", awaits=True)
    states.keep("other", 0, "x", awaits=False)
    assert states.tick() == [("other", "x")]  # the awaiting one is not due at a tick
    assert states.keep("turn", 0, "answered", awaits=False)  # due now: the caller writes "answered" alone
    assert "turn" not in states and states.tick() == []


def test_a_state_awaiting_an_outcome_that_does_not_come_is_written_at_the_commit() -> None:
    states: UnwrittenStates[str] = UnwrittenStates()
    states.keep("turn", 0, "routed", awaits=True)
    assert states.tick() == []
    assert not states.keep("turn", 0, "reply requested", awaits=True)  # a chain of requests: still awaiting
    assert states.tick() == []
    assert states.drain() == [("turn", "reply requested")]  # before the offset commit


def test_drain_hands_over_every_kept_state_and_forget_drops_revoked_partitions() -> None:
    states: UnwrittenStates[str] = UnwrittenStates()
    states.keep("p0", 0, "s0", awaits=True)
    states.keep("p1", 1, "s1", awaits=False)
    states.keep("p2", 2, "s2", awaits=True)
    states.forget({1})
    assert sorted(states.drain()) == [("p0", "s0"), ("p2", "s2")]
    assert states.tick() == [] and states.drain() == []
