"""The edge refuses what PostgreSQL and the read models cannot hold: NUL, depth, int64, instants; nothing is published."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from schemas import UnstorableEvent, check_storable, new_event, to_utc
from schemas.codec import EARLIEST, INT64_MAX, INT64_MIN, LATEST, MAX_DEPTH
from schemas.workflow import SprintCreated
from streams.auth import issue_token
from streams.ingest import parse_json
from streams.publisher import Publisher
from streams.server import create_api
from streams.settings import Settings
from tests.fixtures.policies import NoPolicies

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def nested(levels: int, leaf: Any = 1) -> Any:
    """`levels` objects nested in each other: {"a": {"a": ... leaf}}."""
    for _ in range(levels):
        leaf = {"a": leaf}
    return leaf


def nested_list(levels: int) -> Any:
    """`levels` lists nested in each other: [[... 1]]."""
    leaf: Any = 1
    for _ in range(levels):
        leaf = [leaf]
    return leaf


def sprint(fields: Any = None, occurred_at: datetime = NOW, **payload: Any) -> Any:
    body = {"sprint_code": "S1", "title": "Sprint", "fields": fields or {}, **payload}
    return new_event("acme", SprintCreated(**body), event_id=uuid.uuid4(), occurred_at=occurred_at,
                     recorded_at=NOW, actor="test")


@pytest.mark.parametrize(("event", "path", "problem"), [
    (sprint({"note": "a\u0000b"}), "payload.fields.note", "NUL"),
    (sprint(title="a\u0000b"), "payload.title", "NUL"),
    (sprint({"no\u0000te": "ab"}), "payload.fields", "key 'no\\x00te' contains a NUL"),
    (sprint({"list": ["ok", {"deep": "\u0000"}]}), "payload.fields.list[1].deep", "NUL"),
    (sprint({"odd key": "\u0000"}), 'payload.fields["odd key"]', "NUL"),
    (sprint({"s": "\ud800"}), "payload.fields.s", "unpaired surrogate"),
    (sprint(nested(MAX_DEPTH + 1)), "payload.fields" + ".a" * MAX_DEPTH, f"deeper than {MAX_DEPTH}"),
    (sprint({"l": nested_list(MAX_DEPTH)}), "payload.fields.l" + "[0]" * (MAX_DEPTH - 1), f"deeper than {MAX_DEPTH}"),
    (sprint({"n": INT64_MAX + 1}), "payload.fields.n", "64-bit"),
    (sprint({"n": INT64_MIN - 1}), "payload.fields.n", "64-bit"),
    (sprint({"n": 10**5000}), "payload.fields.n", "64-bit"),
    (sprint({"x": float("inf")}), "payload.fields.x", "not a finite number"),
    (sprint({"x": float("nan")}), "payload.fields.x", "not a finite number"),
    (sprint(occurred_at=LATEST), "occurred_at", "outside the supported range"),
    (sprint(occurred_at=EARLIEST - timedelta(microseconds=1)), "occurred_at", "outside the supported range"),
])
def test_each_unstorable_shape_names_its_field(event: Any, path: str, problem: str) -> None:
    with pytest.raises(UnstorableEvent) as caught:
        check_storable(event)
    assert caught.value.path == path and problem in caught.value.problem
    with pytest.raises(UnstorableEvent, match=r"^events\[3\]\." + path.replace("[", r"\[").replace(".", r"\.")):
        check_storable(event, "events[3]")


def test_the_bounds_themselves_are_storable() -> None:
    assert check_storable(sprint(nested(MAX_DEPTH)))  # the fields object itself is the first level
    assert check_storable(sprint({"l": nested_list(MAX_DEPTH - 1)}))
    assert check_storable(sprint({"max": INT64_MAX, "min": INT64_MIN, "f": 1e308, "t": "üñí ✓ 🎉", "b": True}))
    assert check_storable(sprint(occurred_at=EARLIEST))
    assert check_storable(sprint(occurred_at=LATEST - timedelta(microseconds=1)))


def test_to_utc_refuses_an_instant_whose_conversion_would_overflow() -> None:
    with pytest.raises(UnstorableEvent, match=r"^occurred_at: 9999-12-31T23:59:59-12:00 is outside"):
        to_utc(datetime.fromisoformat("9999-12-31T23:59:59-12:00"), "occurred_at")
    with pytest.raises(UnstorableEvent, match=r"^at: 0001-01-01T00:00:00\+14:00 is outside"):
        to_utc(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))), "at")
    assert to_utc(datetime.fromisoformat("2026-01-01T10:00:00+02:00"), "x") == datetime(2026, 1, 1, 8, tzinfo=UTC)


class RecordingProducer:
    """Stands in for the Kafka producer behind a real Publisher: what would have been sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future:
        self.sent.append((topic, key, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def recording_publisher(settings: Settings) -> tuple[Publisher, RecordingProducer]:
    publisher = Publisher.__new__(Publisher)  # the real publish(), without a broker connection
    publisher.settings = settings
    publisher._producer = producer = RecordingProducer()
    publisher.policies = NoPolicies(settings)
    return publisher, producer


@pytest.fixture
def edge() -> tuple[TestClient, RecordingProducer, Settings]:
    settings = Settings()
    app = create_api(settings)
    publisher, producer = recording_publisher(settings)
    app.state.publisher = publisher
    app.state.pool = None  # no route here reads before it publishes
    return TestClient(app), producer, settings


DEEP = nested(MAX_DEPTH + 1)
TOO_LATE = "9999-12-31T23:59:59-12:00"


def event(payload: dict[str, Any], occurred_at: str = "2026-03-01T12:00:00Z") -> dict[str, Any]:
    return {"type": "workflow.sprint.created", "occurred_at": occurred_at, "payload": payload}


@pytest.mark.parametrize(("url", "body", "field"), [
    ("/v1/sprints", {"sprint_code": "S1", "title": "t", "fields": {"note": "a\u0000b"}}, "payload.fields.note"),
    ("/v1/sprints", {"sprint_code": "S1", "title": "t", "fields": {"no\u0000te": 1}}, "payload.fields"),
    ("/v1/sprints", {"sprint_code": "S1", "title": "t", "fields": DEEP}, "payload.fields.a.a"),
    ("/v1/sprints", {"sprint_code": "S1", "title": "t", "fields": {"n": 2**64}}, "payload.fields.n"),
    ("/v1/tasks/T-1/start", {"actor": "a\u0000"}, "actor"),
    ("/v1/events", event({"sprint_code": "S1", "title": "t"}, TOO_LATE), "occurred_at"),
    ("/v1/events", {"events": [event({"sprint_code": "S1", "title": "t"}),
                               event({"sprint_code": "S2", "title": "t", "fields": {"x": "\u0000"}})]},
     "events[1].payload.fields.x"),
    ("/v1/events", [event({"sprint_code": "S1", "title": "t", "fields": DEEP})], "[0].payload.fields.a"),
    ("/v1/executions", {"agent_id": "a", "user_id": "u",
                        "steps": [{"step_id": "s", "intent": "generate", "input": DEEP}]}, "payload.steps[0].input.a"),
    ("/v1/executions", {"agent_id": "a", "user_id": "u", "context": "\u0000",
                        "steps": [{"step_id": "s", "intent": "generate"}]}, "payload.context"),
    ("/v1/outbound", {"user_id": "u", "agent_id": "a", "message_data": {"type": "text", "text": "hi"},
                      "occurred_at": TOO_LATE}, "occurred_at"),
    ("/v1/outbound", {"user_id": "u", "agent_id": "a", "message_data": {"type": "text", "text": "hi"},
                      "expires_at": "0001-01-01T00:00:00+14:00"}, "expires_at"),
    ("/v1/outbound", {"user_id": "u", "agent_id": "a", "message_data": {"type": "text", "text": "a\u0000"}},
     "payload.message_data.fields.text"),
    ("/v1/budgets", {"scope": "user", "id": "u1", "tokens": 2**63}, "payload.limit.tokens"),
])
def test_every_write_route_answers_422_naming_the_field_and_publishes_nothing(edge, url, body, field) -> None:
    client, producer, settings = edge
    method = client.put if url == "/v1/budgets" else client.post
    response = method(url, json=body, headers={"Authorization": f"Bearer {issue_token(settings, 'acme')}"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(field), response.json()
    assert producer.sent == []


def test_a_learning_route_answers_its_own_400_naming_the_field(edge) -> None:
    client, producer, settings = edge
    token = issue_token(settings, "acme", subject="ada")
    response = client.post("/v1/learning/intent.sync", headers={"Authorization": f"Bearer {token}"},
                           json={"topic": "ML", "depth": "deep", "time_per_day_min": 30, "meta": DEEP})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_request"
    assert response.json()["error"].startswith("payload.intent.meta.a")
    assert producer.sent == []


def test_a_storable_request_still_reaches_the_log(edge) -> None:
    client, producer, settings = edge
    response = client.post("/v1/sprints", json={"sprint_code": "S1", "title": "t", "fields": nested(MAX_DEPTH)},
                           headers={"Authorization": f"Bearer {issue_token(settings, 'acme')}"})
    assert response.status_code == 202, response.text
    assert len(producer.sent) == 1


def test_json_nested_beyond_the_parser_is_a_4xx_not_a_500(edge) -> None:
    client, producer, settings = edge
    body = b'{"type": "x", "occurred_at": "2026-03-01T12:00:00Z", "payload": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = client.post("/v1/events", content=body, headers={
        "Authorization": f"Bearer {issue_token(settings, 'acme')}", "Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text  # the API's edge guard may answer before the route
    assert producer.sent == []
    with pytest.raises(HTTPException) as caught:  # the parser every ingest route shares, webhook included
        parse_json(body)
    assert caught.value.status_code == 400 and "nested too deeply" in caught.value.detail


def test_the_python_publisher_refuses_before_sending_anything() -> None:
    publisher, producer = recording_publisher(Settings())
    good, bad = sprint({"ok": 1}), sprint({"bad": "\u0000"})
    with pytest.raises(UnstorableEvent, match=r"^payload\.fields\.bad: "):
        asyncio.run(publisher.publish([good, bad]))
    assert producer.sent == []
    asyncio.run(publisher.publish([good]))
    assert len(producer.sent) == 1


@pytest.mark.parametrize(("url", "body", "field"), [
    ("/v1/executions", {"agent_id": "a", "user_id": "u", "tokn_budget": 5,
                        "steps": [{"step_id": "s1", "intent": "summarize"}]}, "tokn_budget"),
    ("/v1/executions", {"agent_id": "a", "user_id": "u",
                        "steps": [{"step_id": "s1", "intent": "summarize", "dependson": ["s0"]}]}, "dependson"),
    ("/v1/ops/deadletters/redrive", {"ids": [], "all": True}, "all"),
])
def test_unknown_fields_are_refused_by_name(edge, url, body, field) -> None:
    client, producer, settings = edge
    token = issue_token(settings, "acme", service=url.startswith("/v1/ops"))
    response = client.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 422, response.text
    assert field in str(response.json()["detail"]), response.json()
    assert producer.sent == []


def test_a_learning_route_refuses_an_unknown_field_by_name(edge) -> None:
    client, producer, settings = edge
    token = issue_token(settings, "acme", subject="ada")
    response = client.post("/v1/learning/day.run", headers={"Authorization": f"Bearer {token}"},
                           json={"week": 1, "day": 1, "force_refesh": True})
    assert (response.status_code, response.json()["code"]) == (400, "invalid_request"), response.text
    assert "force_refesh" in response.json()["error"]
    assert producer.sent == []
