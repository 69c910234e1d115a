"""The learner fold and its pure rules: idempotent day runs, signals, completions, streaks and runs across DST."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta

from agents.learning.fold import (
    CODEC,
    FoldConfig,
    LearnerState,
    current_streak,
    fold,
    next_day_hint,
    next_run_at,
)
from projections.learning.readmodels import learner_row
from projections.learning.views import status_of
from schemas import Envelope, emitted, new_event
from schemas.learning import (
    AgentSignal,
    DayCompleted,
    DayPlanned,
    DayRejected,
    DayRequested,
    DayReused,
    IntentSnapshot,
    IntentSynced,
    PlanSummary,
    SignalFetched,
    SignalQuality,
    SignalsRequested,
    answer_event_id,
    planned_event_id,
)

CONFIG = FoldConfig(sessions_kept=3, pending_expiry=timedelta(seconds=60))
T0 = datetime(2026, 10, 28, 14, 0, tzinfo=UTC)


def event(payload, at: datetime = T0) -> Envelope:
    return new_event("acme", payload, event_id=uuid.uuid4(), occurred_at=at, recorded_at=at, actor="test")


def intent(tz: str = "America/New_York", minutes: int = 60) -> IntentSynced:
    return IntentSynced(learner="ada", intent=IntentSnapshot(intent_id=uuid.uuid4(), topic="Machine Learning",
                                                             depth="informed", end_goal="ship models",
                                                             time_per_day_min=minutes, user_tz=tz))


def apply(state, *envelopes):
    out = []
    for envelope in envelopes:
        state, emitted_now = fold(state, envelope, CONFIG)
        out.extend(emitted_now)
    return state, out


def plan_for(ask: Envelope, at: datetime, signals: list[AgentSignal] | None = None) -> Envelope:
    """The day.planned an effect would emit for a signals request."""
    request = ask.payload
    assert isinstance(request, SignalsRequested)
    planned = DayPlanned(learner="ada", request_event_id=request.request_event_id, session_id=request.session_id,
                         intent_id=request.intent.intent_id, week=request.week, day=request.day,
                         topic=request.intent.topic, time_per_day_min=request.intent.time_per_day_min,
                         plan_md="# plan", plan_json_summary=PlanSummary(title=f"Day {request.day}", description="d",
                                                                         steps=["a"]),
                         degraded_mode=False, cache_hits=0, cache_misses=4,
                         signal_quality={"clo": SignalQuality(available=True, fresh=True)}, composer="template",
                         signals=signals or [])
    return emitted(ask, 0, planned, actor="effect:learning", occurred_at=at)


def run_day(state, week: int, day: int, at: datetime, force: bool = False):
    """Request a day, and plan it when the fold asks for signals; returns (state, answer, planned or None)."""
    request = event(DayRequested(learner="ada", week=week, day=day, force_refresh=force), at)
    state, (answer,) = apply(state, request)
    assert answer.event_id == answer_event_id(request.event_id)
    if not isinstance(answer.payload, SignalsRequested):
        return state, answer, None
    planned = plan_for(answer, at + timedelta(seconds=1))
    assert planned.event_id == planned_event_id(answer.event_id)
    state, _ = apply(state, planned)
    return state, answer, planned


def test_a_day_request_without_an_intent_is_rejected():
    state, (answer,) = apply(None, event(DayRequested(learner="ada", week=1, day=1)))
    assert isinstance(answer.payload, DayRejected) and answer.payload.reason == "no_active_intent"
    assert state.sessions == [] and state.pending == []


def test_the_same_week_and_day_reuse_the_session_unless_forced():
    state, _ = apply(None, event(intent()))
    state, first, planned = run_day(state, 1, 3, T0)
    state, again, _ = run_day(state, 1, 3, T0 + timedelta(minutes=5))
    assert isinstance(again.payload, DayReused)
    assert (again.payload.session_id, again.payload.planned_event_id) == (first.payload.session_id, planned.event_id)
    state, forced, _ = run_day(state, 1, 3, T0 + timedelta(minutes=6), force=True)
    assert isinstance(forced.payload, SignalsRequested) and forced.payload.session_id != first.payload.session_id
    assert state.total_sessions == 2
    # A new intent plans its days anew.
    state, _ = apply(state, event(intent(), T0 + timedelta(minutes=7)))
    state, fresh, _ = run_day(state, 1, 3, T0 + timedelta(minutes=8))
    assert isinstance(fresh.payload, SignalsRequested)


def test_a_day_being_planned_is_reused_until_its_request_expires():
    state, _ = apply(None, event(intent()))
    state, (ask,) = apply(state, event(DayRequested(learner="ada", week=1, day=1), T0))
    state, (waiting,) = apply(state, event(DayRequested(learner="ada", week=1, day=1), T0 + timedelta(seconds=5)))
    assert isinstance(waiting.payload, DayReused)
    assert waiting.payload.planned_event_id == planned_event_id(ask.event_id)
    state, (retry,) = apply(state, event(DayRequested(learner="ada", week=1, day=1), T0 + timedelta(seconds=61)))
    assert isinstance(retry.payload, SignalsRequested)


def test_signals_are_kept_per_agent_and_passed_to_the_next_request():
    state, _ = apply(None, event(intent()))
    state, (ask,) = apply(state, event(DayRequested(learner="ada", week=1, day=1), T0))
    fetched = AgentSignal(agent="clo", status="fetched", available=True, fresh=True, from_cache=False, attempts=1,
                          etag='"v1"', data={"focus": "Backprop"}, validated_at=T0)
    failed = AgentSignal(agent="ta", status="failed", available=False, fresh=False, from_cache=False, attempts=4,
                         error="503")
    state, _ = apply(state, plan_for(ask, T0, [fetched, failed]))  # the plan carries every agent's answer
    assert (state.signals["clo"].data, state.signals["clo"].validated_at) == ({"focus": "Backprop"}, T0)
    later = T0 + timedelta(hours=2)
    # A log written before plans carried the answers has one event per agent's answer: it updates the cache too.
    confirmed = SignalFetched(learner="ada", session_id=ask.payload.session_id, agent="clo", status="not_modified",
                              available=True, fresh=True, from_cache=True, attempts=1, etag='"v1"', validated_at=later)
    state, _ = apply(state, event(confirmed, later))
    clo = state.signals["clo"]
    assert (clo.data, clo.etag, clo.fetched_at, clo.validated_at) == ({"focus": "Backprop"}, '"v1"', T0, later)
    assert state.signals["ta"].fetched_at is None and state.signals["ta"].last_error == "503"
    state, next_ask, _ = run_day(state, 1, 2, later)
    (cached,) = next_ask.payload.cached
    assert (cached.agent, cached.etag, cached.data, cached.validated_at) == ("clo", '"v1"', {"focus": "Backprop"}, later)


def test_a_forced_run_asks_the_effect_to_revalidate_and_its_answers_update_the_cache():
    state, _ = apply(None, event(intent()))
    state, plain, _ = run_day(state, 1, 1, T0)
    assert plain.payload.force_refresh is False
    fetched = SignalFetched(learner="ada", session_id=plain.payload.session_id, agent="clo", status="fetched",
                            available=True, fresh=True, from_cache=False, attempts=1, etag='"v1"',
                            data={"focus": "Backprop"}, validated_at=T0)
    state, _ = apply(state, event(fetched))
    later = T0 + timedelta(minutes=5)  # the clo signal is still fresh
    state, forced, _ = run_day(state, 1, 1, later, force=True)
    assert forced.payload.force_refresh is True and [c.etag for c in forced.payload.cached] == ['"v1"']
    # A 200 to the forced revalidation replaces the signal; a later 304 only revalidates it.
    replaced = SignalFetched(learner="ada", session_id=forced.payload.session_id, agent="clo", status="fetched",
                             available=True, fresh=True, from_cache=False, attempts=1, etag='"v2"',
                             data={"focus": "Gradients"}, validated_at=later)
    confirmed = SignalFetched(learner="ada", session_id=forced.payload.session_id, agent="clo",
                              status="not_modified", available=True, fresh=True, from_cache=True, attempts=1,
                              etag='"v2"', validated_at=later + timedelta(minutes=1))
    state, _ = apply(state, event(replaced, later))
    clo = state.signals["clo"]
    assert (clo.data, clo.etag, clo.fetched_at, clo.validated_at) == ({"focus": "Gradients"}, '"v2"', later, later)
    state, _ = apply(state, event(confirmed, later + timedelta(minutes=1)))
    clo = state.signals["clo"]
    assert (clo.data, clo.fetched_at, clo.validated_at) == ({"focus": "Gradients"}, later, later + timedelta(minutes=1))


def test_replaying_an_event_changes_nothing_and_the_state_round_trips():
    synced = event(intent())
    state, _ = apply(None, synced)
    assert apply(state, synced) == (state, [])
    assert CODEC.decode(CODEC.encode(state)) == state


def test_completions_count_once_per_session_and_keep_only_recent_sessions():
    state, _ = apply(None, event(intent()))
    sessions = []
    for day in range(1, 5):
        state, ask, _ = run_day(state, 1, day, T0 + timedelta(days=day))
        sessions.append(ask.payload.session_id)
    assert [s.day for s in state.sessions] == [2, 3, 4] and state.total_sessions == 4
    done = lambda minutes, confidence: event(  # noqa: E731
        DayCompleted(learner="ada", session_id=sessions[-1], completion_time_min=minutes, confidence=confidence),
        T0 + timedelta(days=4, hours=1))
    state, _ = apply(state, done(30, 6), done(45, 8))
    assert (state.completed_sessions, state.total_time_min, state.confidence_sum) == (1, 45, 8)
    state, _ = apply(state, event(DayCompleted(learner="ada", session_id=sessions[0], completion_time_min=10,
                                               confidence=2)))
    assert state.completed_sessions == 1  # a session no longer kept leaves the stats alone


def complete_at(state: LearnerState, at: datetime, day: int) -> LearnerState:
    state, ask, _ = run_day(state, 1, day, at - timedelta(minutes=30))
    state, _ = apply(state, event(DayCompleted(learner="ada", session_id=ask.payload.session_id,
                                               completion_time_min=30, confidence=7), at))
    return state


def test_the_streak_counts_local_days_across_midnight_and_the_end_of_dst():
    state, _ = apply(None, event(intent("America/New_York"), datetime(2026, 10, 29, tzinfo=UTC)))
    # 23:50 and 00:40 local (EDT) on Oct 30 and 31 are one UTC day (Oct 31) but two local days.
    state = complete_at(state, datetime(2026, 10, 31, 3, 50, tzinfo=UTC), 1)
    state = complete_at(state, datetime(2026, 10, 31, 4, 40, tzinfo=UTC), 2)
    # Nov 1 has 25 hours (EDT -> EST): 23:30 EST is Nov 2 04:30 UTC, still local Nov 1.
    state = complete_at(state, datetime(2026, 11, 2, 4, 30, tzinfo=UTC), 3)
    assert state.completion_days == ["2026-10-30", "2026-10-31", "2026-11-01"]
    assert current_streak(state.completion_days, date(2026, 11, 1)) == 3
    assert current_streak(state.completion_days, date(2026, 11, 2)) == 3  # yesterday still counts
    assert current_streak(state.completion_days, date(2026, 11, 3)) == 0
    row = dict(zip(("active_intent", "latest_session", "total_sessions", "completed_sessions", "total_time_min",
                    "confidence_sum", "completion_days"), learner_row(state)[3:], strict=True))
    row = {**row, **{k: json.loads(row[k]) for k in ("active_intent", "latest_session", "completion_days")},
           "signals": []}
    status = status_of(
        row, "ada", now=datetime(2026, 11, 2, 14, 0, tzinfo=UTC), agents=["clo"], freshness={"clo": timedelta(hours=1)},
        run_hour_local=7, days_per_week=7)
    assert status.learning_stats.current_streak_days == 3
    assert status.learning_stats.average_confidence == 7.0 and status.learning_stats.total_time_min == 90
    assert (status.next_scheduled_run.week, status.next_scheduled_run.day) == (1, 4)
    assert status.next_scheduled_run.estimated_time == datetime(2026, 11, 3, 12, 0, tzinfo=UTC)  # 07:00 EST
    assert status.signal_freshness["clo"].available is False


def test_the_next_run_is_the_local_hour_of_the_next_local_day_across_dst():
    # Saturday Oct 31, 20:00 EDT: the next day is Nov 1 (EST), 07:00 local = 12:00 UTC, not 11:00.
    assert next_run_at(datetime(2026, 11, 1, 0, 0, tzinfo=UTC), "America/New_York", 7) == \
        datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    assert next_run_at(datetime(2026, 10, 30, 0, 0, tzinfo=UTC), "America/New_York", 7) == \
        datetime(2026, 10, 30, 11, 0, tzinfo=UTC)
    assert next_run_at(datetime(2026, 3, 7, 20, 0, tzinfo=UTC), "Europe/Madrid", 9) == \
        datetime(2026, 3, 8, 8, 0, tzinfo=UTC)


def test_next_day_hints_follow_time_against_the_target_and_confidence():
    assert next_day_hint(45, 60, 7, 1, 3, 7) == \
        "Good time investment! For day 4, focus on reinforcing concepts to build confidence."
    assert next_day_hint(20, 60, 3, 1, 3, 7).startswith("Short session today")
    assert next_day_hint(20, 60, 3, 1, 3, 7).endswith("For day 4, revisit today's material before moving on.")
    assert next_day_hint(90, 60, 9, 2, 7, 7) == ("Great dedication, but you went well past your daily target: pace "
                                                 "yourself. For week 3, day 1, you are ready to take on new material.")
