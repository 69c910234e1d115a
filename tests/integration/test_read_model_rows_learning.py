"""The learning read models on a real PostgreSQL: rows projected from one learner's known events, read back by name.

Learner lea (New York, UTC-5 in early March) syncs an intent, gets two agents' signals (one fetched then
confirmed by a 304, one failing), has two sessions planned and completes the first at 21:30 local (02:30Z).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from projections.learning.readmodels import LEARNERS, SESSIONS, SIGNALS
from schemas import Payload
from schemas.learning import (
    DayCompleted,
    DayPlanned,
    IntentSnapshot,
    IntentSynced,
    PlanSummary,
    SignalFetched,
)
from tests.fixtures.folds import states_after

pytestmark = pytest.mark.integration

STREAM = "learner:acme:lea"
INTENT = uuid.UUID(int=0x1)
S1, S2 = uuid.UUID(int=0x51), uuid.UUID(int=0x52)
P1, P2 = uuid.UUID(int=0x91), uuid.UUID(int=0x92)  # the day.planned events' ids


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def planned(session_id: uuid.UUID, day: int, topic: str, title: str, degraded: bool) -> DayPlanned:
    return DayPlanned(learner="lea", request_event_id=uuid.UUID(int=0x700 + day), session_id=session_id,
                      intent_id=INTENT, week=1, day=day, topic=topic, time_per_day_min=45, plan_md=f"# {title}",
                      plan_json_summary=PlanSummary(title=title, description="", steps=[]), degraded_mode=degraded,
                      cache_hits=0, cache_misses=2, signal_quality={}, composer="template")


def story() -> dict[str, object]:
    """The learner's state after each named event, folded with the domain's own folder."""
    events: list[tuple[str, str, Payload, uuid.UUID | None]] = [
        ("intent", "2026-03-02 07:00", IntentSynced(learner="lea", intent=IntentSnapshot(
            intent_id=INTENT, topic="Rust ownership", depth="deep", end_goal="give a borrow checker talk",
            time_per_day_min=45, user_tz="America/New_York", meta={"level": "intermediate"})), None),
        ("github", "2026-03-02 07:06", SignalFetched(
            learner="lea", session_id=S1, agent="github", status="fetched", available=True, fresh=True,
            from_cache=False, etag='W/"e1"', data={"repos": 3}, validated_at=utc("2026-03-02 06:59")), None),
        ("calendar", "2026-03-02 07:07", SignalFetched(
            learner="lea", session_id=S1, agent="calendar", status="failed", available=False, fresh=False,
            from_cache=False, error="HTTP 503"), None),
        ("planned_1", "2026-03-02 07:10", planned(S1, 2, "Borrowing", "Borrowing basics", False), P1),
        ("completed_1", "2026-03-03 02:30", DayCompleted(
            learner="lea", session_id=S1, completion_time_min=50, confidence=8, notes="tricky lifetimes"), None),
        ("github_304", "2026-03-03 08:01", SignalFetched(
            learner="lea", session_id=S2, agent="github", status="not_modified", available=True, fresh=True,
            from_cache=True, validated_at=utc("2026-03-03 08:00")), None),
        ("planned_2", "2026-03-03 12:00", planned(S2, 3, "Lifetimes", "Lifetimes in practice", True), P2),
    ]
    states = states_after("learning", [(utc(when), payload, event_id) for _, when, payload, event_id in events])
    return dict(zip((name for name, *_ in events), states, strict=True))


async def test_learning_learners_columns_by_name(project_rows) -> None:
    states = story()
    (row,) = await project_rows(LEARNERS, [states["intent"]])
    assert (row["latest_session"], row["total_sessions"], row["completion_days"]) == (None, 0, [])

    (row,) = await project_rows(LEARNERS, [states["planned_2"]])  # upserted
    assert (row["stream_id"], row["tenant_id"], row["learner"]) == (STREAM, "acme", "lea")
    assert row["active_intent"] == {
        "id": str(INTENT), "topic": "Rust ownership", "depth": "deep", "end_goal": "give a borrow checker talk",
        "time_per_day_min": 45, "user_tz": "America/New_York", "meta": {"level": "intermediate"},
        "created_at": "2026-03-02T07:00:00Z"}
    assert row["latest_session"] == {
        "id": str(S2), "week": 1, "day": 3, "topic": "Lifetimes", "plan_title": "Lifetimes in practice",
        "degraded_mode": True, "created_at": "2026-03-03T12:00:00Z", "completion": None}
    assert (row["total_sessions"], row["completed_sessions"]) == (2, 1)
    assert (row["total_time_min"], row["confidence_sum"]) == (50, 8)
    assert row["completion_days"] == ["2026-03-02"]  # the learner's local date, not the UTC one


async def test_learning_sessions_columns_by_name(project_rows) -> None:
    states = story()
    (row,) = await project_rows(SESSIONS, [states["planned_1"]])
    assert (row["completion_time_min"], row["confidence"], row["notes"], row["completed_at"]) == (None,) * 4

    first, second = await project_rows(SESSIONS, [states["planned_2"]])  # S1 upserted (completed), S2 inserted
    assert first["session_id"] == S1
    assert (first["tenant_id"], first["learner"], first["stream_id"]) == ("acme", "lea", STREAM)
    assert first["intent_id"] == INTENT
    assert (first["week"], first["day"]) == (1, 2)
    assert (first["topic"], first["plan_title"]) == ("Borrowing", "Borrowing basics")
    assert first["degraded_mode"] is False
    assert first["created_at"] == utc("2026-03-02 07:10")
    assert first["planned_event_id"] == P1
    assert (first["completion_time_min"], first["confidence"]) == (50, 8)
    assert first["notes"] == "tricky lifetimes"
    assert first["completed_at"] == utc("2026-03-03 02:30")

    assert (second["session_id"], second["intent_id"], second["planned_event_id"]) == (S2, INTENT, P2)
    assert (second["week"], second["day"], second["topic"], second["plan_title"]) == (
        1, 3, "Lifetimes", "Lifetimes in practice")
    assert (second["degraded_mode"], second["created_at"]) == (True, utc("2026-03-03 12:00"))
    assert (second["completion_time_min"], second["confidence"], second["notes"], second["completed_at"]) == (None,) * 4


async def test_learning_signals_columns_by_name(project_rows) -> None:
    states = story()
    (row,) = await project_rows(SIGNALS, [states["github"]])
    assert (row["fetched_at"], row["last_updated"]) == (utc("2026-03-02 06:59"), utc("2026-03-02 06:59"))

    calendar, github = await project_rows(SIGNALS, [states["planned_2"]])  # github upserted after its 304
    assert github["signal_key"] == f"{STREAM}:github"
    assert (github["tenant_id"], github["learner"], github["stream_id"], github["agent"]) == (
        "acme", "lea", STREAM, "github")
    assert github["available"] is True
    assert (github["etag"], github["data"]) == ('W/"e1"', {"repos": 3})
    assert github["fetched_at"] == utc("2026-03-02 06:59")  # new data last arrived then
    assert github["last_updated"] == utc("2026-03-03 08:00")  # validated by the 304
    assert (github["last_status"], github["last_error"]) == ("not_modified", None)
    assert github["last_attempt_at"] == utc("2026-03-03 08:01")

    assert calendar["signal_key"] == f"{STREAM}:calendar"
    assert (calendar["tenant_id"], calendar["learner"], calendar["stream_id"], calendar["agent"]) == (
        "acme", "lea", STREAM, "calendar")
    assert (calendar["available"], calendar["etag"], calendar["data"]) == (False, None, None)
    assert (calendar["fetched_at"], calendar["last_updated"]) == (None, None)
    assert (calendar["last_status"], calendar["last_error"]) == ("failed", "HTTP 503")
    assert calendar["last_attempt_at"] == utc("2026-03-02 07:07")
