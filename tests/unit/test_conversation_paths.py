"""Late messages in the conversation fold: older than the session's last activity, or than the session itself.

The log's order is the truth: a late message joins the session current when it arrives, by event time it never
moves the session's activity or expiry back, and a log folded twice gives the same state.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agents.conversations.fold import ConversationState, FoldConfig, fold
from schemas import Envelope
from tests.fixtures.conversation_logs import inbound

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CONFIG = FoldConfig()
CONTACT = "34600111222"


def message(wamid: str, at: datetime) -> Envelope:
    return inbound("acme", CONTACT, wamid, at, text=f"text of {wamid}")


def run(log: list[Envelope], state: ConversationState | None = None) -> tuple[ConversationState, list[Envelope]]:
    out: list[Envelope] = []
    for envelope in log:
        state, emitted = fold(state, envelope, CONFIG)
        out += emitted
    assert state is not None
    return state, out


def test_late_message_older_than_the_last_activity_joins_the_session_without_moving_time_back() -> None:
    before, _ = run([message("w1", T0), message("w2", T0 + timedelta(hours=1))])
    late = message("w0", T0 + timedelta(minutes=30))
    after, emitted = run([late], before)
    assert (after.session_id, after.session_number) == (before.session_id, 1)
    assert (after.started_at, after.last_activity_at, after.expires_at) == (
        before.started_at, T0 + timedelta(hours=1), T0 + timedelta(hours=25))
    assert after.messages_received == 3
    # Dialogue is in log order with each turn's own event time, so the late one is last.
    assert [(t.seq, t.whatsapp_message_id, t.at) for t in after.dialogue] == [
        (1, "w1", T0), (2, "w2", T0 + timedelta(hours=1)), (3, "w0", T0 + timedelta(minutes=30))]
    # It is still a message to answer: routed like any other, once.
    (request,) = emitted
    assert request.type == "conversation.routing.requested" and request.payload.message_event_id == late.event_id
    assert request.occurred_at == late.occurred_at
    assert run([late], after)[0].duplicates_dropped == 1 and run([late], after)[1] == []


def test_late_message_older_than_the_session_start_does_not_move_the_start_back() -> None:
    before, _ = run([message("w1", T0)])
    after, _ = run([message("w0", T0 - timedelta(hours=3))], before)
    assert (after.started_at, after.last_activity_at, after.expires_at) == (T0, T0, T0 + timedelta(hours=24))
    assert [t.whatsapp_message_id for t in after.dialogue] == ["w1", "w0"]
    # In log order the same two messages give an earlier start: the log's order is what counts.
    in_order, _ = run([message("w0", T0 - timedelta(hours=3)), message("w1", T0)])
    assert (in_order.started_at, in_order.last_activity_at, in_order.messages_received) == (
        T0 - timedelta(hours=3), T0, after.messages_received)


def test_late_message_from_before_a_rollover_joins_the_current_session() -> None:
    first, _ = run([message("w1", T0)])
    current, emitted = run([message("w2", T0 + timedelta(hours=30))], first)
    assert current.session_number == 2 and [e.type for e in emitted][:2] == [
        "conversation.session.expired", "conversation.session.started"]
    # By event time it belongs to the ended session, whose final state is already written; it neither
    # reopens that session nor starts a third one.
    late, emitted = run([message("w1b", T0 + timedelta(hours=2))], current)
    assert (late.session_id, late.session_number, late.started_at) == (current.session_id, 2, current.started_at)
    assert (late.last_activity_at, late.expires_at) == (current.last_activity_at, current.expires_at)
    assert (late.messages_received, [t.whatsapp_message_id for t in late.dialogue]) == (2, ["w2", "w1b"])
    assert [e.type for e in emitted] == ["conversation.routing.requested"]


def test_late_redelivery_of_a_message_of_an_ended_session_is_a_duplicate() -> None:
    current, _ = run([message("w1", T0), message("w2", T0 + timedelta(hours=30))])
    after, emitted = run([message("w1", T0)], current)
    assert (after.duplicates_dropped, after.messages_received, emitted) == (1, 1, [])


def test_a_log_with_late_messages_folds_to_the_same_state_twice() -> None:
    log = [message("w1", T0), message("w2", T0 + timedelta(hours=1)), message("w0", T0 - timedelta(minutes=5)),
           message("w3", T0 + timedelta(hours=40)), message("w1c", T0 + timedelta(hours=3))]
    first, first_out = run(log)
    second, second_out = run(log)
    assert first == second and [e.event_id for e in first_out] == [e.event_id for e in second_out]
    assert (first.session_number, first.messages_received) == (2, 2)
