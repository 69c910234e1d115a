"""The conversation fold: sessions, 24 h rollover, duplicates, replies and replay determinism."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from agents.batching import APPLIED_IDS_KEPT, Folder
from agents.conversations.fold import (
    CODEC,
    ConversationState,
    FoldConfig,
    FoldError,
    PendingStatus,
    count_duplicate,
)
from agents.conversations.fold import fold as conversation_fold
from schemas import Envelope, derived_event_id, emitted, source_event_id
from schemas.conversations import (
    Location,
    MessageAnswered,
    MessageReceived,
    MessageRouted,
    ReplyFailed,
    ReplyRequested,
    ReplySent,
    StatusUpdated,
    TicketOpened,
    conversation_stream_id,
)

TENANT = "acme"
CONTACT = "34600111222"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CONFIG = FoldConfig()


def envelope(payload, at: datetime, event_id: uuid.UUID, *, tenant: str = TENANT, type_: str | None = None) -> Envelope:
    from schemas import registration_of

    return Envelope(
        event_id=event_id,
        type=type_ or registration_of(payload).type,
        schema_version=1,
        tenant_id=tenant,
        stream_id=conversation_stream_id(tenant, payload.contact),
        occurred_at=at,
        recorded_at=at,
        correlation_id=event_id,
        actor="ingest:whatsapp",
        payload=payload,
    )


def received(wamid: str, at: datetime, text: str | None = "hola", message_type: str = "text", **extra) -> Envelope:
    payload = MessageReceived(contact=CONTACT, whatsapp_message_id=wamid, message_type=message_type, text=text,
                              **extra)
    return envelope(payload, at, source_event_id(TENANT, "whatsapp", wamid))


def status(wamid: str, value: str, at: datetime) -> Envelope:
    payload = StatusUpdated(contact=CONTACT, whatsapp_message_id=wamid, status=value)
    return envelope(payload, at, source_event_id(TENANT, "whatsapp-status", f"{wamid}:{value}"))


def fold(state: ConversationState | None, event: Envelope, config: FoldConfig = CONFIG,
         applied_ids_kept: int = APPLIED_IDS_KEPT) -> tuple[ConversationState | None, list[Envelope]]:
    """The conversation fold as the spine applies it: each event once, a message delivered again counted."""
    folder = Folder(conversation_fold, config, on_duplicate=count_duplicate, applied_ids_kept=applied_ids_kept)
    return folder.apply(state, event)


def run(events: list[Envelope], config: FoldConfig = CONFIG, state: ConversationState | None = None,
        applied_ids_kept: int = APPLIED_IDS_KEPT):
    """Fold a log in order; returns the final state and everything emitted."""
    out: list[Envelope] = []
    for event in events:
        state, new = fold(state, event, config, applied_ids_kept)
        out.extend(new)
    return state, out


def reply_cycle(request: Envelope, lane: str, at: datetime) -> list[Envelope]:
    """What the router and sender effects put on the log for one routing request."""
    p = request.payload
    routed = emitted(request, 0, MessageRouted(session_id=p.session_id, contact=p.contact,
                                               message_event_id=p.message_event_id, lane=lane, method="rules"),
                     actor="effect:router", occurred_at=at)
    reply = emitted(request, 2, ReplyRequested(session_id=p.session_id, contact=p.contact,
                                               in_reply_to=p.message_event_id, lane=lane, text=f"answer {lane}"),
                    actor="effect:router", occurred_at=at)
    events = [routed]
    if lane == "support":
        events.append(emitted(request, 1, TicketOpened(session_id=p.session_id, contact=p.contact,
                                                       message_event_id=p.message_event_id,
                                                       ticket_id=f"T-{p.message_event_id.hex[:8]}", summary=p.text),
                              actor="effect:router", occurred_at=at))
    return [*events, reply]


def sent(reply: Envelope, wamid: str, at: datetime) -> Envelope:
    p = reply.payload
    return emitted(reply, 0, ReplySent(session_id=p.session_id, contact=p.contact, reply_event_id=reply.event_id,
                                       whatsapp_message_id=wamid, sender="log"),
                   actor="effect:sender", occurred_at=at)


def test_first_message_starts_a_session_and_requests_routing():
    message = received("wamid.1", T0, "¿Cuál es el horario?", contact_name="Ana")
    state, out = fold(None, message, CONFIG)

    assert [e.type for e in out] == ["conversation.session.started", "conversation.routing.requested"]
    assert [e.event_id for e in out] == [derived_event_id(message.event_id, 0), derived_event_id(message.event_id, 1)]
    assert all(e.actor == "fold:conversations" and e.causation_id == message.event_id for e in out)
    started, routing = out[0].payload, out[1].payload
    assert started.session_id == state.session_id == uuid.uuid5(message.event_id, "session")
    assert started.previous_session_id is None
    assert routing.message_event_id == message.event_id and routing.text == "¿Cuál es el horario?"
    assert (state.session_number, state.messages_received, state.contact_name) == (1, 1, "Ana")
    assert state.started_at == state.last_activity_at == T0
    assert state.expires_at == T0 + timedelta(hours=24)
    assert [(t.seq, t.role, t.text) for t in state.dialogue] == [(1, "contact", "¿Cuál es el horario?")]
    assert {str(message.event_id), *(str(e.event_id) for e in out)} <= set(state.applied_event_ids)
    assert state.seen_message_ids == ["wamid.1"]


def test_emitted_events_coming_back_from_the_log_change_nothing():
    state, out = fold(None, received("wamid.1", T0), CONFIG)
    after, more = run(out, state=state)
    assert more == [] and after == state


def test_activity_within_timeout_keeps_the_session_and_extends_expiry():
    first = received("wamid.1", T0)
    at_expiry = received("wamid.2", T0 + timedelta(hours=24))
    state, out = run([first, at_expiry])
    assert state.session_number == 1 and state.messages_received == 2
    assert state.expires_at == T0 + timedelta(hours=48)
    assert [e.type for e in out].count("conversation.session.started") == 1


def test_message_after_24h_of_inactivity_rolls_over_to_a_new_session():
    first = received("wamid.1", T0, "no funciona")
    state, out = fold(None, first, CONFIG)
    request = out[1]
    state, _ = run(reply_cycle(request, "support", T0), state=state)
    old = state

    late = received("wamid.2", T0 + timedelta(hours=24, seconds=1), "hola otra vez")
    state, out = fold(state, late, CONFIG)

    assert [e.type for e in out] == [
        "conversation.session.expired", "conversation.session.started", "conversation.routing.requested"]
    expired, started = out[0].payload, out[1].payload
    assert expired.session_id == old.session_id and expired.last_activity_at == T0
    assert started.previous_session_id == old.session_id
    assert state.session_id == started.session_id != old.session_id
    assert state.session_number == 2
    assert state.started_at == late.occurred_at
    assert (state.messages_received, state.replies_requested, state.lane, state.tickets, state.routed) == (
        1, 0, None, [], {})
    assert [t.text for t in state.dialogue] == ["hola otra vez"] and state.dialogue[0].seq == 1
    assert old.lane == "support" and old.tickets  # the previous session had them

    # Dedupe survives the rollover: the first webhook redelivered now is still a duplicate.
    again, out = fold(state, first, CONFIG)
    assert out == [] and again.duplicates_dropped == 1 and again.session_id == state.session_id
    assert again.messages_received == 1


def test_duplicate_messages_are_counted_and_never_emit():
    first = received("wamid.1", T0)
    state, _ = fold(None, first, CONFIG)

    same_event, out = fold(state, first, CONFIG)
    assert out == [] and same_event.duplicates_dropped == 1
    assert same_event.dialogue == state.dialogue and same_event.messages_received == 1

    other_route = replace(first, event_id=uuid.uuid4())  # same WhatsApp id reached us another way
    twice, out = fold(same_event, other_route, CONFIG)
    assert out == [] and twice.duplicates_dropped == 2 and twice.messages_received == 1


def test_duplicate_effect_results_are_skipped_without_counting():
    state, out = fold(None, received("wamid.1", T0, "precio del café"), CONFIG)
    cycle = reply_cycle(out[1], "commerce", T0)
    once, _ = run(cycle, state=state)
    twice, out = run(cycle, state=once)
    assert twice == once and out == []
    assert once.routed == {"commerce": 1} and once.replies_requested == 1


def test_non_routable_messages_are_stored_but_not_routed():
    image = received("wamid.img", T0, "mira esto", "image")
    sticker = received("wamid.stk", T0 + timedelta(minutes=1), None, "sticker")
    place = received("wamid.loc", T0 + timedelta(minutes=2), None, "location",
                     location=Location(latitude=40.4, longitude=-3.7, name="Plaza del Sol"))
    blank = received("wamid.blank", T0 + timedelta(minutes=3), "   ")
    state, out = run([image, sticker, place, blank])

    assert "conversation.routing.requested" not in [e.type for e in out]
    assert [(t.message_type, t.text) for t in state.dialogue] == [
        ("image", "mira esto"), ("sticker", None), ("location", "Plaza del Sol"), ("text", "   ")]
    assert state.messages_received == 4


def test_button_replies_are_routed():
    _, out = fold(None, received("wamid.btn", T0, "Ver precios", "button"), CONFIG)
    assert out[-1].type == "conversation.routing.requested" and out[-1].payload.text == "Ver precios"


def test_reply_cycle_sets_lane_ticket_and_agent_turn():
    message = received("wamid.1", T0, "mi pedido llegó roto")
    state, out = fold(None, message, CONFIG)
    cycle = reply_cycle(out[1], "support", T0 + timedelta(seconds=2))
    reply = cycle[-1]
    state, _ = run([*cycle, sent(reply, "wamid.out.1", T0 + timedelta(seconds=3))], state=state)

    assert state.lane == "support" and state.routed == {"support": 1}
    assert [(c.lane, c.message_event_id, c.method) for c in state.lane_history] == [
        ("support", message.event_id, "rules")]
    assert state.tickets == [f"T-{message.event_id.hex[:8]}"]
    assert (state.replies_requested, state.replies_sent, state.replies_failed) == (1, 1, 0)
    contact, agent = state.dialogue
    assert contact.lane == "support"
    assert (agent.seq, agent.role, agent.event_id, agent.text, agent.lane) == (
        2, "agent", reply.event_id, "answer support", "support")
    assert (agent.status, agent.whatsapp_message_id) == ("sent", "wamid.out.1")


def test_failed_reply_marks_the_turn_failed():
    state, out = fold(None, received("wamid.1", T0), CONFIG)
    cycle = reply_cycle(out[1], "info", T0)
    reply = cycle[-1]
    failed = emitted(reply, 0, ReplyFailed(session_id=reply.payload.session_id, contact=CONTACT,
                                           reply_event_id=reply.event_id, reason="whatsapp 400", sender="whatsapp"),
                     actor="effect:sender")
    state, _ = run([*cycle, failed], state=state)
    assert (state.replies_sent, state.replies_failed) == (0, 1)
    assert state.dialogue[-1].status == "failed"


def test_delivery_status_never_regresses_and_failed_wins():
    state, out = fold(None, received("wamid.1", T0), CONFIG)
    cycle = reply_cycle(out[1], "info", T0)
    state, _ = run([*cycle, sent(cycle[-1], "wamid.out", T0)], state=state)

    def turn_status(*statuses: str) -> str:
        final, _ = run([status("wamid.out", s, T0 + timedelta(seconds=i)) for i, s in enumerate(statuses)],
                       state=state)
        return final.dialogue[-1].status

    assert turn_status("delivered") == "delivered"
    assert turn_status("read", "delivered") == "read"
    assert turn_status("delivered", "read", "sent") == "read"
    assert turn_status("read", "failed") == "failed"
    assert turn_status("failed", "read") == "failed"


def answered(lane: str = "info", at: datetime = T0, wamid: str = "wamid.1") -> tuple[ConversationState, Envelope]:
    """A state whose last turn is a requested (not yet sent) reply, and that reply."""
    state, out = fold(None, received(wamid, at), CONFIG)
    cycle = reply_cycle(out[1], lane, at)
    state, _ = run(cycle, state=state)
    return state, cycle[-1]


def statuses(wamid: str, values: list[str], at: datetime = T0) -> list[Envelope]:
    return [status(wamid, value, at + timedelta(seconds=i + 1)) for i, value in enumerate(values)]


@pytest.mark.parametrize("values", [["sent"], ["delivered"], ["read"], ["failed"], ["delivered", "read"],
                                    ["read", "failed"], ["failed", "read"], ["sent", "delivered", "read"]])
def test_statuses_before_or_after_reply_sent_give_the_same_turn(values):
    state, reply = answered()
    outcome = sent(reply, "wamid.out", T0)
    after, _ = run([outcome, *statuses("wamid.out", values)], state=state)
    before, _ = run([*statuses("wamid.out", values), outcome], state=state)

    expected = max(["sent", *values], key=["sent", "delivered", "read", "failed"].index)
    assert after.dialogue[-1].status == before.dialogue[-1].status == expected
    assert before.dialogue == after.dialogue
    assert before.dialogue[-1].whatsapp_message_id == "wamid.out"
    assert before.pending_statuses == after.pending_statuses == []
    assert before.replies_sent == after.replies_sent == 1


def test_status_overtaking_its_reply_sent_waits_in_the_state():
    state, reply = answered()
    early, _ = fold(state, status("wamid.out", "delivered", T0 + timedelta(seconds=1)), CONFIG)
    assert early.dialogue == state.dialogue  # nothing to apply it to yet
    assert early.pending_statuses == [PendingStatus(whatsapp_message_id="wamid.out", status="delivered",
                                                    at=T0 + timedelta(seconds=1))]
    landed, _ = fold(early, sent(reply, "wamid.out", T0 + timedelta(seconds=2)), CONFIG)
    assert landed.dialogue[-1].status == "delivered" and landed.pending_statuses == []


def test_statuses_out_of_order_before_the_reply_sent_end_at_read():
    state, reply = answered()
    final, _ = run([*statuses("wamid.out", ["read", "delivered", "sent"]), sent(reply, "wamid.out", T0)],
                   state=state)
    assert final.dialogue[-1].status == "read" and final.pending_statuses == []


def test_a_status_matching_a_turn_applies_at_once():
    state, reply = answered()
    state, _ = fold(state, sent(reply, "wamid.out", T0), CONFIG)
    read, _ = fold(state, status("wamid.out", "read", T0 + timedelta(seconds=1)), CONFIG)
    assert read.dialogue[-1].status == "read" and read.pending_statuses == []


def test_a_pending_status_waits_only_for_its_own_message_id():
    state, reply = answered()
    other = status("wamid.other", "read", T0 + timedelta(seconds=1))
    final, _ = run([other, sent(reply, "wamid.out", T0 + timedelta(seconds=2))], state=state)
    assert final.dialogue[-1].status == "sent"
    assert [(p.whatsapp_message_id, p.status) for p in final.pending_statuses] == [("wamid.other", "read")]


def one_run(request: Envelope, lane: str, wamid: str | None, at: datetime, ticket_id: str | None = None) -> Envelope:
    """The message.answered an effect run without a model reports for a routing request."""
    p = request.payload
    answer = MessageAnswered(session_id=p.session_id, contact=p.contact, message_event_id=p.message_event_id,
                             lane=lane, ticket_id=ticket_id, reply_text="Abrimos a las 8.", sender="log",
                             whatsapp_message_id=wamid, failure_reason=None if wamid else "whatsapp 400")
    return emitted(request, 0, answer, actor="effect:sender", occurred_at=at)


def test_one_answered_event_routes_answers_and_sends_the_turn():
    message = received("wamid.1", T0, "Mi pedido llegó roto")
    state, out = fold(None, message, CONFIG)
    answered_, _ = fold(state, one_run(out[1], "support", "wamid.out", T0 + timedelta(seconds=1), "TKT-1"), CONFIG)
    assert (answered_.lane, answered_.routed, answered_.tickets) == ("support", {"support": 1}, ["TKT-1"])
    assert (answered_.replies_requested, answered_.replies_sent, answered_.replies_failed) == (1, 1, 0)
    assert [(t.role, t.lane, t.status, t.whatsapp_message_id, t.seq) for t in answered_.dialogue] == [
        ("contact", "support", None, "wamid.1", 1), ("agent", "support", "sent", "wamid.out", 2)]
    assert answered_.lane_history[-1].message_event_id == message.event_id

    # A status that overtook the outcome waits for it, as one that overtook reply.sent does.
    early, _ = run([status("wamid.out", "read", T0 + timedelta(seconds=1)),
                    one_run(out[1], "support", "wamid.out", T0 + timedelta(seconds=2))], state=state)
    assert early.dialogue[-1].status == "read" and early.pending_statuses == []

    failed, _ = fold(state, one_run(out[1], "info", None, T0 + timedelta(seconds=1)), CONFIG)
    assert (failed.replies_sent, failed.replies_failed, failed.dialogue[-1].status) == (0, 1, "failed")


def test_pending_statuses_are_bounded_dropping_the_oldest():
    config = FoldConfig(max_pending_statuses=2)
    state, replies, at = None, [], T0
    for n in range(3):
        state, out = fold(state, received(f"wamid.in.{n}", at, f"mensaje {n}"), config)
        cycle = reply_cycle(out[-1], "info", at)
        state, _ = run(cycle, config, state)
        replies.append(cycle[-1])
        at += timedelta(minutes=1)
    early = [status(f"wamid.out.{n}", "read", at + timedelta(seconds=n)) for n in range(3)]
    state, _ = run(early, config, state)
    assert [p.whatsapp_message_id for p in state.pending_statuses] == ["wamid.out.1", "wamid.out.2"]

    state, _ = run([sent(reply, f"wamid.out.{n}", at) for n, reply in enumerate(replies)], config, state)
    assert [t.status for t in state.dialogue if t.role == "agent"] == ["sent", "read", "read"]
    assert state.pending_statuses == []


def test_a_pending_status_redelivered_beyond_the_dedupe_window_is_held_once():
    state, _ = answered()
    early = status("wamid.out", "read", T0 + timedelta(seconds=1))
    other = status("wamid.other", "read", T0 + timedelta(seconds=2))
    state, _ = run([early, other, early], CONFIG, state, applied_ids_kept=1)  # `other` pushed `early` out of the applied ids
    assert [(p.whatsapp_message_id, p.status) for p in state.pending_statuses] == [
        ("wamid.out", "read"), ("wamid.other", "read")]


def test_pending_statuses_do_not_survive_a_session_rollover():
    state, reply = answered()
    state, _ = fold(state, status("wamid.out", "read", T0 + timedelta(seconds=1)), CONFIG)
    assert state.pending_statuses
    rolled, _ = fold(state, received("wamid.2", T0 + timedelta(days=2)), CONFIG)
    assert rolled.session_id != state.session_id and rolled.pending_statuses == []
    # The ended session's reply.sent changes nothing in the new session: nothing there could take the status.
    late, _ = fold(rolled, sent(reply, "wamid.out", T0 + timedelta(days=2)), CONFIG)
    assert late.dialogue == rolled.dialogue and late.replies_sent == 0


def test_a_state_stored_before_pending_statuses_existed_still_decodes():
    state, _ = answered()
    document = msgspec.json.decode(CODEC.encode(state))
    del document["pending_statuses"]
    old = CODEC.decode(msgspec.json.encode(document))
    assert old == state and old.pending_statuses == []


def test_status_for_unknown_stream_is_ignored():
    assert fold(None, status("wamid.x", "read", T0), CONFIG) == (None, [])


def test_events_of_an_older_session_do_not_touch_the_current_one():
    state, out = fold(None, received("wamid.1", T0, "precio"), CONFIG)
    stale_request = out[1]
    state, _ = fold(state, received("wamid.2", T0 + timedelta(days=2), "hola"), CONFIG)
    before = state

    routed = reply_cycle(stale_request, "commerce", T0 + timedelta(days=2))[0]
    state, out = fold(state, routed, CONFIG)
    assert out == []
    assert (state.lane, state.routed, state.lane_history) == (None, {}, [])
    assert str(routed.event_id) in state.applied_event_ids and before.applied_event_ids != state.applied_event_ids


def test_dialogue_and_memories_are_bounded_dropping_the_oldest():
    config = FoldConfig(max_dialogue_turns=5, max_seen_message_ids=4)
    messages = [received(f"wamid.{i}", T0 + timedelta(minutes=i), f"mensaje {i}") for i in range(12)]
    state, _ = run(messages, config, applied_ids_kept=8)
    assert [t.text for t in state.dialogue] == [f"mensaje {i}" for i in range(7, 12)]
    assert [t.seq for t in state.dialogue] == [8, 9, 10, 11, 12]
    assert state.messages_received == 12
    assert len(state.applied_event_ids) == 8 and str(messages[-1].event_id) in state.applied_event_ids
    assert state.seen_message_ids == [f"wamid.{i}" for i in range(8, 12)]


def test_fold_does_not_mutate_its_input_state():
    state, out = fold(None, received("wamid.1", T0), CONFIG)
    snapshot = CODEC.encode(state)
    cycle = reply_cycle(out[1], "support", T0)
    run([*cycle, sent(cycle[-1], "wamid.out", T0), status("wamid.out", "read", T0),
         received("wamid.1", T0), received("wamid.2", T0 + timedelta(days=3))], state=state)
    assert CODEC.encode(state) == snapshot


def test_non_conversation_event_raises_fold_error():
    message = received("wamid.1", T0)
    with pytest.raises(FoldError, match="outbound.message.queued"):
        fold(None, replace(message, type="outbound.message.queued"), CONFIG)
    with pytest.raises(FoldError, match="conversation.reply.sent"):
        fold(None, replace(message, type="conversation.reply.sent"), CONFIG)


def test_event_of_another_stream_raises_fold_error():
    state, _ = fold(None, received("wamid.1", T0), CONFIG)
    foreign = envelope(MessageReceived(contact=CONTACT, whatsapp_message_id="wamid.g", message_type="text", text="x"),
                       T0, uuid.uuid4(), tenant="globex")
    with pytest.raises(FoldError, match="globex"):
        fold(state, foreign, CONFIG)


# Replay determinism ---------------------------------------------------------------------------

GAPS = [timedelta(seconds=5), timedelta(hours=3), timedelta(hours=23, minutes=59),
        timedelta(hours=24, seconds=1), timedelta(days=3)]
message_plans = st.tuples(
    st.sampled_from(GAPS),
    st.sampled_from(["text", "button", "image", "sticker"]),
    st.sampled_from(["info", "commerce", "support"]),
    st.sampled_from(["sent", "failed"]),
    st.lists(st.sampled_from(["sent", "delivered", "read", "failed"]), max_size=3),
    st.booleans(),  # the statuses overtake the reply.sent on the log
)


def live_log(plans, config: FoldConfig, early: bool | None = None) -> list[Envelope]:
    """The log a live system writes: inbound events, the fold's emissions echoed back, effect results.

    `early` overrides every plan's choice of statuses before (True) or after (False) their reply.sent.
    """
    log: list[Envelope] = []
    state, at = None, T0
    for n, (gap, message_type, lane, outcome, statuses, statuses_first) in enumerate(plans):
        at += gap
        pending = [received(f"wamid.in.{n}", at, f"mensaje {n}", message_type)]
        while pending:
            event = pending.pop(0)
            log.append(event)
            state, out = fold(state, event, config)
            pending.extend(out)
            if event.type == "conversation.routing.requested":
                cycle = reply_cycle(event, lane, at)
                reply, wamid = cycle[-1], f"wamid.out.{n}"
                if outcome == "sent":
                    reports = [status(wamid, s, at) for s in statuses]
                    first = statuses_first if early is None else early
                    cycle.extend([*reports, sent(reply, wamid, at)] if first else [sent(reply, wamid, at), *reports])
                else:
                    cycle.append(emitted(reply, 0, ReplyFailed(session_id=reply.payload.session_id, contact=CONTACT,
                                                                reply_event_id=reply.event_id, reason="x",
                                                                sender="whatsapp"), actor="effect:sender"))
                pending.extend(cycle)
    return log


def with_duplicates(log: list[Envelope], picks: list[tuple[int, int, bool]]) -> list[Envelope]:
    """The log with copies re-inserted after their originals (some as webhooks redelivered under a new id)."""
    result = list(log)
    for source, offset, new_id in picks:
        original = log[source % len(log)]
        copy = original
        if new_id and original.type == "conversation.message.received":
            copy = replace(original, event_id=uuid.uuid5(original.event_id, "redelivered"))
        start = result.index(original) + 1
        result.insert(start + offset % (len(result) - start + 1), copy)
    return result


@settings(max_examples=150, deadline=None)
@given(
    plans=st.lists(message_plans, min_size=1, max_size=10),
    picks=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 10_000), st.booleans()), max_size=12),
)
def test_replay_with_duplicates_gives_the_same_state(plans, picks):
    config = FoldConfig(max_dialogue_turns=6, max_lane_history=3, max_tickets=2)
    log = live_log(plans, config)
    clean, clean_out = run(log, config)
    again, again_out = run(log, config)
    assert again == clean and again_out == clean_out

    noisy_log = with_duplicates(log, picks)
    noisy, noisy_out = run(noisy_log, config)
    assert noisy_out == clean_out
    # The spine also remembers the ids of copies redelivered under a new id; everything else is the same.
    assert set(clean.applied_event_ids) <= set(noisy.applied_event_ids)
    assert replace(noisy, duplicates_dropped=0, applied_event_ids=[]) == replace(clean, duplicates_dropped=0,
                                                                                 applied_event_ids=[])
    # Every copy of an inbound message is a counted duplicate (the memories are far larger than the log), copies
    # of other events are skipped uncounted, and the count is per session: the copies after the last session's
    # first message are exactly the inbound messages there that the clean log does not have.
    assert clean.duplicates_dropped == 0
    assert noisy.duplicates_dropped == inbound_since_start(noisy_log, noisy) - inbound_since_start(log, clean)


def inbound_since_start(log: list[Envelope], state: ConversationState) -> int:
    """Inbound messages on the log from the one that started the state's session on."""
    inbound = [e.type == "conversation.message.received" for e in log]
    start = next(i for i, e in enumerate(log) if inbound[i] and uuid.uuid5(e.event_id, "session") == state.session_id)
    return sum(inbound[start:])


@settings(max_examples=100, deadline=None)
@given(plans=st.lists(message_plans, min_size=1, max_size=8))
def test_statuses_overtaking_their_reply_sent_give_the_same_state(plans):
    config = FoldConfig(max_dialogue_turns=6, max_lane_history=3, max_tickets=2)
    after, _ = run(live_log(plans, config, early=False), config)
    before, _ = run(live_log(plans, config, early=True), config)
    assert before.pending_statuses == after.pending_statuses == []
    assert sorted(before.applied_event_ids) == sorted(after.applied_event_ids)
    assert replace(before, applied_event_ids=[]) == replace(after, applied_event_ids=[])


def test_state_survives_the_table_codec():
    plans = [(timedelta(seconds=5), "text", "support", "sent", ["delivered", "read"], False)] * 3
    state, _ = run(live_log(plans, CONFIG))
    decoded = msgspec.json.decode(CODEC.encode(state), type=ConversationState)
    assert decoded == state
