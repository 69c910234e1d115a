"""The outbound fold's decisions, driven by event timestamps and ticks only (no clock, no sleeps)."""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from agents.outbound.effects import send_request
from agents.outbound.fold import (
    CODEC,
    FoldError,
    OutboundConfig,
    OutboundState,
    fold,
    local_instant,
    quiet_window,
)
from agents.zones import TZ_VERSION, zone
from schemas import Envelope, Payload, new_event
from schemas.outbound import (
    MessageData,
    MessageQueued,
    MessageSent,
    PreferencesUpdated,
    QuietHours,
    RelevanceChecked,
    Rendering,
    SendFailed,
    UserActive,
    UserTicked,
)

_ids = itertools.count(1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


class User:
    """One user's stream: folds events in order and keeps what the fold emitted."""

    def __init__(self, config: OutboundConfig = OutboundConfig(), user_id: str = "u1") -> None:
        self.config, self.user_id = config, user_id
        self.state: OutboundState | None = None
        self.emitted: list[Envelope] = []

    def fold(self, payload: Payload, when: datetime, event_id: uuid.UUID | None = None) -> list[Envelope]:
        envelope = new_event("acme", payload, event_id=event_id or uuid.UUID(int=next(_ids)), occurred_at=when,
                             recorded_at=when, actor="test")
        self.state, out = fold(self.state, envelope, self.config)
        # The state survives the table's codec unchanged.
        assert CODEC.decode(CODEC.encode(self.state)) == self.state
        self.emitted.extend(out)
        return out

    def prefs(self, when: datetime, **changes) -> list[Envelope]:
        return self.fold(PreferencesUpdated(user_id=self.user_id, **changes), when)

    def queue(self, when: datetime, *, agent: str = "agent-a", kind: str = "weekly_summary", **fields) -> str:
        payload = MessageQueued(user_id=self.user_id, agent_id=agent, message_data=MessageData(type=kind), **fields)
        event_id = uuid.UUID(int=next(_ids))
        self.fold(payload, when, event_id)
        return str(event_id)

    def tick(self, when: datetime, event_id: uuid.UUID | None = None) -> list[Envelope]:
        return self.fold(UserTicked(user_id=self.user_id, due_at=when), when, event_id)

    def message(self, message_id: str):
        assert self.state is not None
        return next(m for m in self.state.messages if m.message_id == message_id)

    def decisions(self, out: list[Envelope] | None = None) -> list[tuple[str, str, str]]:
        """(message id, decision, reason) of every decision event, in emission order."""
        return [(e.payload.message_id, e.type.rsplit(".", 1)[1], e.payload.reason)
                for e in (self.emitted if out is None else out) if e.type.startswith("outbound.message.")
                and e.type.rsplit(".", 1)[1] in ("approved", "deferred", "released", "dropped")]

    def sends(self, out: list[Envelope]) -> list[str]:
        """Messages whose send the events request (a first attempt rides on its approval or release)."""
        return [request.message_id for e in out if (request := send_request(e)) is not None]


def last_decision(user: User, message_id: str):
    return user.message(message_id).decisions[-1]


# -- local time -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("zone_name", "day", "wall", "expected"), [
    # Spring forward: 02:00-03:00 does not exist; a boundary in the gap moves to the first valid instant, 03:00.
    ("Europe/Madrid", "2026-03-29", "02:30", "2026-03-29T01:00:00+00:00"),
    ("America/New_York", "2026-03-08", "02:15", "2026-03-08T07:00:00+00:00"),
    # Fall back: 02:00-03:00 (Madrid) and 01:00-02:00 (New York) happen twice; the first occurrence counts.
    ("Europe/Madrid", "2026-10-25", "02:30", "2026-10-25T00:30:00+00:00"),
    ("America/New_York", "2026-11-01", "01:30", "2026-11-01T05:30:00+00:00"),
    ("Europe/Madrid", "2026-06-01", "22:00", "2026-06-01T20:00:00+00:00"),
])
def test_local_boundaries_in_a_gap_or_a_repeated_hour(zone_name: str, day: str, wall: str, expected: str) -> None:
    from datetime import date, time

    hour, minute = map(int, wall.split(":"))
    assert local_instant(date.fromisoformat(day), time(hour, minute), zone(zone_name)) == at(expected)


def test_zones_come_from_the_shipped_tz_database() -> None:
    assert TZ_VERSION and zone("Europe/Madrid").key == "Europe/Madrid"
    for bad in ("Mars/Olympus", "../etc/passwd", "", "Europe/"):
        with pytest.raises(ValueError):
            zone(bad)


def test_quiet_window_on_a_25_hour_night() -> None:
    # Madrid's fall-back night: 22:00 CEST (20:00Z) to 08:00 CET (07:00Z) lasts 11 hours.
    window = quiet_window(at("2026-10-25T03:00:00Z"), zone("Europe/Madrid"), QuietHours())
    assert window == (at("2026-10-24T20:00:00Z"), at("2026-10-25T07:00:00Z"))
    assert quiet_window(at("2026-10-25T07:00:00Z"), zone("Europe/Madrid"), QuietHours()) is None


# -- quiet hours across DST -----------------------------------------------------------------------------------


def test_madrid_spring_forward_quiet_end_in_the_gap_releases_at_three() -> None:
    user = User()
    user.prefs(at("2026-03-28T12:00:00Z"), timezone="Europe/Madrid", quiet_hours=QuietHours(start="22:00", end="02:30"))
    night = user.queue(at("2026-03-28T23:30:00Z"))  # 00:30 CET, quiet
    deferred = last_decision(user, night)
    assert (deferred.decision, deferred.reason) == ("deferred", "quiet_hours")
    assert deferred.due_at == at("2026-03-29T01:00:00Z")  # 03:00 CEST: 02:30 does not exist
    assert deferred.inputs.timezone == "Europe/Madrid" and deferred.inputs.tz_version == TZ_VERSION
    assert deferred.inputs.local_time.startswith("2026-03-29T00:30:00+01:00") and deferred.inputs.in_quiet_hours
    assert user.sends(user.tick(at("2026-03-29T00:59:59Z"))) == []
    assert user.sends(user.tick(at("2026-03-29T01:00:00Z"))) == [night]
    assert last_decision(user, night).inputs.local_time.startswith("2026-03-29T03:00:00+02:00")


def test_madrid_fall_back_quiet_end_in_the_repeated_hour_takes_the_first() -> None:
    user = User()
    user.prefs(at("2026-10-24T12:00:00Z"), timezone="Europe/Madrid", quiet_hours=QuietHours(start="23:00", end="02:30"))
    night = user.queue(at("2026-10-24T22:00:00Z"))  # 00:00 CEST
    assert last_decision(user, night).due_at == at("2026-10-25T00:30:00Z")  # 02:30 CEST, the first 02:30
    assert user.sends(user.tick(at("2026-10-25T00:30:00Z"))) == [night]
    # The second 02:30 (CET) is outside quiet hours too: a message then goes at once.
    later = user.queue(at("2026-10-25T01:30:00Z"))
    assert last_decision(user, later).decision == "approved"


def test_new_york_spring_forward_quiet_start_in_the_gap() -> None:
    user = User()
    user.prefs(at("2026-03-07T12:00:00Z"), timezone="America/New_York",
               quiet_hours=QuietHours(start="02:30", end="06:00"))
    before = user.queue(at("2026-03-08T06:59:00Z"))  # 01:59 EST: quiet starts at 03:00 EDT (07:00Z)
    inside = user.queue(at("2026-03-08T07:00:00Z"))  # 03:00 EDT
    assert last_decision(user, before).decision == "approved"
    assert (last_decision(user, inside).decision, last_decision(user, inside).due_at) == (
        "deferred", at("2026-03-08T10:00:00Z"))  # 06:00 EDT


def test_new_york_fall_back_quiet_start_in_the_repeated_hour() -> None:
    user = User()
    user.prefs(at("2026-10-31T12:00:00Z"), timezone="America/New_York",
               quiet_hours=QuietHours(start="01:30", end="05:00"))
    early = user.queue(at("2026-11-01T05:15:00Z"))  # 01:15 EDT, before the first 01:30
    quiet = user.queue(at("2026-11-01T05:45:00Z"))  # 01:45 EDT, after the first 01:30
    assert last_decision(user, early).decision == "approved"
    deferred = last_decision(user, quiet)
    assert (deferred.decision, deferred.due_at) == ("deferred", at("2026-11-01T10:00:00Z"))  # 05:00 EST


def test_quiet_hours_in_two_zones_at_the_same_instant() -> None:
    madrid, new_york = User(user_id="ana"), User(user_id="bob")
    madrid.prefs(at("2026-06-01T00:00:00Z"), timezone="Europe/Madrid")
    new_york.prefs(at("2026-06-01T00:00:00Z"), timezone="America/New_York")
    instant = at("2026-06-01T21:00:00Z")  # 23:00 in Madrid, 17:00 in New York
    a, b = madrid.queue(instant), new_york.queue(instant)
    assert last_decision(madrid, a).reason == "quiet_hours" and last_decision(new_york, b).reason == "slot_available"


# -- budget -----------------------------------------------------------------------------------------------------


def test_budget_resets_at_local_midnight_and_a_25_hour_day_is_one_day() -> None:
    user = User()
    user.prefs(at("2026-10-24T10:00:00Z"), timezone="Europe/Madrid", quiet_hours=QuietHours(start="00:00", end="00:00"),
               daily_limit=2)
    # 2026-10-25 in Madrid lasts 25 hours: 2026-10-24T22:00Z to 2026-10-25T23:00Z.
    first, second, third = (user.queue(at(t)) for t in
                            ("2026-10-24T22:30:00Z", "2026-10-25T12:00:00Z", "2026-10-25T22:30:00Z"))
    assert [last_decision(user, m).decision for m in (first, second, third)] == ["approved", "approved", "deferred"]
    held = last_decision(user, third)
    assert (held.reason, held.due_at, held.inputs.budget_before) == ("budget_exhausted", at("2026-10-25T23:00:00Z"), 2)
    assert held.inputs.local_date == "2026-10-25"
    assert user.sends(user.tick(at("2026-10-25T22:59:59Z"))) == []
    assert user.sends(user.tick(at("2026-10-25T23:00:00Z"))) == [third]
    released = last_decision(user, third)
    assert (released.decision, released.inputs.local_date) == ("released", "2026-10-26")
    assert (released.inputs.budget_before, released.inputs.budget_after) == (0, 1)


def test_budget_is_shared_across_agents() -> None:
    user = User()
    user.prefs(at("2026-06-01T08:00:00Z"), daily_limit=2)
    ids = [user.queue(at("2026-06-01T10:00:00Z"), agent=agent) for agent in ("saga", "summary", "saga")]
    assert [last_decision(user, m).decision for m in ids] == ["approved", "approved", "deferred"]
    assert last_decision(user, ids[2]).reason == "budget_exhausted"
    assert user.state.sent_on_date == 2  # type: ignore[union-attr]


def test_urgent_bypasses_quiet_hours_and_the_limit_and_still_counts() -> None:
    user = User()
    user.prefs(at("2026-06-01T08:00:00Z"), daily_limit=1)
    user.queue(at("2026-06-01T10:00:00Z"))
    urgent = user.queue(at("2026-06-01T23:00:00Z"), kind="payment_required", priority="urgent", can_delay=False)
    decision = last_decision(user, urgent)
    assert (decision.decision, decision.reason, decision.inputs.rule) == ("approved", "urgent",
                                                                          "urgent_bypass:quiet_hours+budget")
    assert (decision.inputs.budget_before, decision.inputs.budget_after) == (1, 2)


def test_active_user_gets_messages_now_even_at_night_while_budget_remains() -> None:
    user = User(OutboundConfig(active_window=timedelta(minutes=10)))
    user.fold(UserActive(user_id="u1", contact="+34600", message_event_id="m1"), at("2026-06-01T23:00:00Z"))
    now = user.queue(at("2026-06-01T23:05:00Z"))
    later = user.queue(at("2026-06-01T23:11:00Z"))
    assert last_decision(user, now).reason == "active_user" and last_decision(user, now).inputs.active
    assert last_decision(user, later).reason == "quiet_hours"


def test_a_message_that_cannot_wait_is_dropped_in_quiet_hours_and_over_budget() -> None:
    user = User()
    user.prefs(at("2026-06-01T08:00:00Z"), daily_limit=1)
    user.queue(at("2026-06-01T10:00:00Z"))
    over = user.queue(at("2026-06-01T11:00:00Z"), can_delay=False)
    night = user.queue(at("2026-06-02T02:00:00Z"), can_delay=False)
    assert user.decisions()[1:] == [(over, "dropped", "budget_exhausted"), (night, "dropped", "quiet_hours")]
    assert last_decision(user, night).inputs.rule == "quiet_hours:cannot_delay"


# -- release --------------------------------------------------------------------------------------------------


def test_release_in_priority_order_then_fifo_across_two_agents() -> None:
    user = User()
    user.prefs(at("2026-06-01T12:00:00Z"), daily_limit=2)
    low_a = user.queue(at("2026-06-01T23:00:00Z"), agent="a", priority="low")
    high_b = user.queue(at("2026-06-01T23:10:00Z"), agent="b", priority="high")
    medium_a = user.queue(at("2026-06-01T23:20:00Z"), agent="a", priority="medium")
    high_a = user.queue(at("2026-06-01T23:30:00Z"), agent="a", priority="high")
    wakeups = [e.payload.due_at for e in user.emitted if e.type == "outbound.wakeup.scheduled"]
    assert wakeups == [at("2026-06-02T08:00:00Z")]  # one wake-up request for all four
    out = user.tick(at("2026-06-02T08:00:00Z"))
    assert user.sends(out) == [high_b, high_a]
    assert user.decisions(out) == [(high_b, "released", "slot_available"), (high_a, "released", "slot_available")]
    assert {user.message(m).status for m in (low_a, medium_a)} == {"deferred"}
    # The next day's budget takes the medium one, then the low one.
    assert user.sends(user.tick(at("2026-06-03T08:00:00Z"))) == [medium_a, low_a]


def test_a_redelivered_tick_sends_nothing_twice() -> None:
    user = User()
    message = user.queue(at("2026-06-01T23:00:00Z"))
    tick_id = uuid.uuid4()
    assert user.sends(user.tick(at("2026-06-02T08:00:00Z"), tick_id)) == [message]
    assert user.tick(at("2026-06-02T08:00:00Z"), tick_id) == []
    assert user.sends(user.tick(at("2026-06-02T08:00:05Z"))) == []  # another tick: nothing left to release


def test_stale_message_is_dropped_and_frees_its_budget() -> None:
    user = User()
    user.prefs(at("2026-06-01T12:00:00Z"), daily_limit=1, contact="+34600000001")
    old = user.queue(at("2026-06-01T23:00:00Z"), kind="solution_update", requires_fresh_context=True)
    user.queue(at("2026-06-01T23:30:00Z"), kind="solution_update", priority="low")
    newest = user.queue(at("2026-06-01T23:40:00Z"), kind="weekly_summary", priority="low")
    out = user.tick(at("2026-06-02T08:00:00Z"))
    request = next(r for e in out if (r := send_request(e)) is not None)
    assert (request.message_id, request.check_relevance, request.contact) == (old, True, "+34600000001")
    assert request.superseded_by is not None  # the newer solution_update
    out = user.fold(RelevanceChecked(user_id="u1", message_id=old, relevant=False, method="rules",
                                     reason="superseded"), at("2026-06-02T08:00:01Z"))
    assert user.decisions(out)[0] == (old, "dropped", "stale")
    # The budget it gave back goes to the next waiting message.
    assert user.sends(out) == [user.state.messages[1].message_id]  # type: ignore[union-attr]
    assert user.message(newest).status == "deferred"


def test_expired_messages_are_dropped_when_queued_or_while_waiting() -> None:
    user = User()
    gone = user.queue(at("2026-06-01T10:00:00Z"), expires_at=at("2026-06-01T09:00:00Z"))
    assert user.decisions()[0] == (gone, "dropped", "expired")
    waiting = user.queue(at("2026-06-01T23:00:00Z"), expires_at=at("2026-06-02T03:00:00Z"))
    assert user.state.wakeup_at == at("2026-06-02T03:00:00Z")  # type: ignore[union-attr]
    out = user.tick(at("2026-06-02T03:00:00Z"))
    assert user.decisions(out) == [(waiting, "dropped", "expired")]


def test_nothing_waits_longer_than_the_maximum_deferral() -> None:
    user = User(OutboundConfig(max_deferral=timedelta(hours=72)))
    user.prefs(at("2026-06-01T12:00:00Z"), daily_limit=0)
    held = user.queue(at("2026-06-01T13:00:00Z"))
    assert last_decision(user, held).due_at == at("2026-06-04T13:00:00Z")
    user.tick(at("2026-06-03T13:00:00Z"))
    assert user.message(held).status == "deferred"
    out = user.tick(at("2026-06-04T13:00:00Z"))
    assert user.decisions(out) == [(held, "dropped", "max_deferral")]


def test_the_same_idempotency_key_gives_one_message() -> None:
    user = User()
    first = user.queue(at("2026-06-01T10:00:00Z"), idempotency_key="saga-42:update-1")
    user.queue(at("2026-06-01T10:00:01Z"), idempotency_key="saga-42:update-1")
    assert [m.message_id for m in user.state.messages] == [first]  # type: ignore[union-attr]
    assert len(user.decisions()) == 1


def test_a_failed_send_is_retried_with_backoff_then_fails_and_refunds() -> None:
    user = User(OutboundConfig(max_send_attempts=2, retry_backoff=timedelta(seconds=30)))
    message = user.queue(at("2026-06-01T10:00:00Z"))
    failure = SendFailed(user_id="u1", message_id=message, attempt=1, reason="whatsapp 503", retryable=True,
                         sender="whatsapp", rendered=Rendering(text="Your weekly summary is ready.", method="llm"))
    user.fold(failure, at("2026-06-01T10:00:01Z"))
    assert user.message(message).status == "retrying" and user.state.wakeup_at == at("2026-06-01T10:00:31Z")  # type: ignore[union-attr]
    assert user.sends(user.tick(at("2026-06-01T10:00:20Z"))) == []
    out = user.tick(at("2026-06-01T10:00:31Z"))
    # The retry sends the text the first attempt rendered, without rendering again.
    assert [(e.payload.message_id, e.payload.attempt, e.payload.text) for e in out
            if e.type == "outbound.send.requested"] == [(message, 2, "Your weekly summary is ready.")]
    user.fold(SendFailed(user_id="u1", message_id=message, attempt=2, reason="whatsapp 503", retryable=True,
                         sender="whatsapp"), at("2026-06-01T10:00:32Z"))
    assert user.message(message).status == "failed" and user.state.sent_on_date == 0  # type: ignore[union-attr]


def test_sent_records_last_message_time() -> None:
    user = User()
    message = user.queue(at("2026-06-01T10:00:00Z"))
    user.fold(MessageSent(user_id="u1", message_id=message, attempt=1, whatsapp_message_id="wamid.1",
                          sender="log"), at("2026-06-01T10:00:02Z"))
    assert user.message(message).status == "sent" and user.state.last_message_at == at("2026-06-01T10:00:02Z")  # type: ignore[union-attr]


def test_preferences_link_the_contact_to_the_user_in_the_conversations_topic() -> None:
    user = User()
    out = user.prefs(at("2026-06-01T10:00:00Z"), contact="+34600000001")
    assert [(e.type, e.stream_id) for e in out] == [("conversation.contact.linked", "conversation:acme:+34600000001")]
    out = user.prefs(at("2026-06-01T11:00:00Z"), contact="+34600000002")
    assert [e.type for e in out] == ["conversation.contact.unlinked", "conversation.contact.linked"]
    with pytest.raises(FoldError, match="Mars/Olympus"):
        user.prefs(at("2026-06-01T12:00:00Z"), timezone="Mars/Olympus")


def test_policy_overrides_in_the_config_replace_every_preference() -> None:
    user = User(OutboundConfig(daily_limit_override=5, quiet_hours_override=QuietHours(start="23:30", end="06:00")))
    user.prefs(at("2026-06-01T10:00:00Z"), daily_limit=1)
    ids = [user.queue(at("2026-06-01T23:00:00Z")) for _ in range(3)]
    assert [last_decision(user, m).decision for m in ids] == ["approved"] * 3


# -- the decision trail keeps when a deferred message was due ---------------------------------------------------


def test_every_deferral_records_its_due_instant_in_utc_and_local_time_for_good() -> None:
    from projections.outbound.readmodels import message_rows
    from projections.outbound.views import DecisionView

    user = User(OutboundConfig(max_send_attempts=1))
    user.prefs(at("2026-06-01T00:00:00Z"), timezone="Europe/Madrid", daily_limit=1)
    night = user.queue(at("2026-06-01T21:00:00Z"))  # 23:00 CEST: quiet until 08:00 CEST
    (deferral,) = [e.payload for e in user.emitted if e.type == "outbound.message.deferred"]
    until = deferral.deferred_until
    assert until is not None and until.at == at("2026-06-02T06:00:00Z") == deferral.due_at
    assert (until.local_time, until.timezone, until.abbreviation, until.tz_version) == (
        "2026-06-02T08:00:00+02:00", "Europe/Madrid", "CEST", TZ_VERSION)
    # Released at 08:00 CEST, then its only send attempt fails: the trail still says what it was deferred until.
    assert user.sends(user.tick(at("2026-06-02T06:00:00Z"))) == [night]
    user.fold(SendFailed(user_id="u1", message_id=night, attempt=1, reason="whatsapp 503", retryable=True,
                         sender="whatsapp"), at("2026-06-02T06:00:01Z"))
    # Over budget (the failed send gave its budget back; another message spends it): due at the next local
    # date's first instant outside quiet hours.
    user.queue(at("2026-06-02T10:00:00Z"))
    over = last_decision(user, user.queue(at("2026-06-02T11:00:00Z")))
    assert over.reason == "budget_exhausted" and over.deferred_until is not None
    assert (over.deferred_until.at, over.deferred_until.local_time) == (
        at("2026-06-03T06:00:00Z"), "2026-06-03T08:00:00+02:00")
    assert user.message(night).status == "failed"
    # What GET /v1/outbound/messages/{id} answers is the read model's decisions column, parsed by the view.
    row = next(r for r in message_rows(user.state) if r[0] == night)  # type: ignore[arg-type]
    trail = [DecisionView.model_validate(d) for d in json.loads(row[-1])]
    assert [d.decision for d in trail] == ["deferred", "released"]
    shown = trail[0].deferred_until
    assert shown is not None and (shown.at, shown.local_time, shown.abbreviation, shown.timezone) == (
        at("2026-06-02T06:00:00Z"), "2026-06-02T08:00:00+02:00", "CEST", "Europe/Madrid")
    assert trail[1].deferred_until is None


def test_a_deferral_in_winter_time_records_the_winter_offset() -> None:
    user = User()
    user.prefs(at("2026-11-01T00:00:00Z"), timezone="America/New_York")
    held = user.queue(at("2026-11-02T04:00:00Z"))  # 23:00 EST
    until = last_decision(user, held).deferred_until
    assert until is not None and (until.at, until.local_time, until.abbreviation) == (
        at("2026-11-02T13:00:00Z"), "2026-11-02T08:00:00-05:00", "EST")
