"""The outbound effect worker (relevance, rendering, sending), the wake-up ticks, the write API and simulate."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import httpx
import msgspec
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from agents.llm import LlmClient
from agents.outbound.config import OutboundSettings
from agents.outbound.effects import OutboundEffects, render_template
from agents.outbound.fold import OutboundConfig, fold
from agents.outbound.simulate import simulate
from agents.outbound.wakeups import due_ticks
from agents.senders import SendError, SendOutcomeUnknown
from agents.tenants import load_tenants
from schemas import Envelope, decode, encode, new_event
from schemas.outbound import (
    MessageData,
    MessageQueued,
    PreferencesUpdated,
    QuietHours,
    Rendering,
    SendRequested,
)
from streams.auth import issue_token
from streams.domains.outbound.commands import command_router, queue_message
from streams.settings import Settings, loaded
from tests.fixtures.anthropic import FakeAnthropic, error_body

NOW = datetime(2026, 6, 2, 8, 0, tzinfo=UTC)
QUEUED = datetime(2026, 6, 1, 23, 0, tzinfo=UTC)


class FakeSender:
    name = "fake"

    def __init__(self, failures: list[str | SendError] | None = None) -> None:
        self.sent: list[tuple[str, str]] = []
        self.failures = failures or []

    async def send(self, tenant, contact: str, text: str, reply_event_id: uuid.UUID) -> str:
        if self.failures:
            failure = self.failures.pop(0)
            raise failure if isinstance(failure, SendError) else SendError(failure)
        self.sent.append((contact, text))
        return f"wamid.{len(self.sent)}"


def request(**changes) -> Envelope:
    fields = {"user_id": "u1", "message_id": "m1", "agent_id": "saga", "contact": "34600000001",
              "message_data": MessageData(type="solution_update",
                                          fields={"findings": {"matchedInnovators": [{"name": "Acme Corp"}]}}),
              "queued_at": QUEUED, **changes}
    return new_event("acme", SendRequested(**fields), event_id=uuid.uuid4(), occurred_at=NOW, recorded_at=NOW,
                     actor="fold:outbound")


def effects(sender: FakeSender, llm: LlmClient | None = None) -> OutboundEffects:
    return OutboundEffects(load_tenants(Settings().tenants_file), sender, llm, loaded(OutboundSettings), clock=lambda: NOW)


def types(events: list[Envelope]) -> list[str]:
    return sorted(e.type for e in events)


async def test_without_a_model_templates_render_and_the_sender_sends() -> None:
    sender = FakeSender()
    cause = request()
    events = await effects(sender).run(cause)
    assert types(events) == ["outbound.message.sent"]  # one outcome: the send, carrying its rendering
    text = "Update on your request: we found 1 match: Acme Corp."
    assert events[0].payload.rendered == Rendering(text=text, method="template")
    assert sender.sent == [("34600000001", text)]
    # Re-running derives the same ids: downstream dedupe holds.
    assert [e.event_id for e in await effects(FakeSender()).run(cause)] == [e.event_id for e in events]


async def test_an_approval_is_its_own_send_request() -> None:
    def event(payload):
        return new_event("acme", payload, event_id=uuid.uuid4(), occurred_at=NOW.replace(hour=12),
                         recorded_at=NOW.replace(hour=12), actor="test")

    state, _ = fold(None, event(PreferencesUpdated(user_id="u1", contact="34600000001")))
    queued = event(MessageQueued(user_id="u1", agent_id="saga", message_data=MessageData(
        type="text", fields={"text": "Hola"})))
    _, emitted = fold(state, queued)
    assert [e.type for e in emitted] == ["outbound.message.approved"]  # no separate send.requested
    sender = FakeSender()
    events = await effects(sender).run(emitted[0])
    assert [(e.type, e.payload.message_id, e.payload.attempt) for e in events] == [
        ("outbound.message.sent", str(queued.event_id), 1)]
    assert sender.sent == [("34600000001", "Hola")]
    # An approval recorded before approvals carried their send order is followed by its send.requested.
    earlier = msgspec.structs.replace(emitted[0], payload=msgspec.structs.replace(emitted[0].payload, send=None))
    assert await effects(sender).run(earlier) == [] and len(sender.sent) == 1


@pytest.mark.parametrize(("changes", "reason"), [
    ({"superseded_by": "m2"}, "superseded by m2"),
    ({"expires_at": NOW - timedelta(minutes=1)}, "expired"),
    ({"last_inbound_at": QUEUED + timedelta(hours=1)}, "the conversation moved on since it was queued"),
])
async def test_rules_find_stale_messages_and_nothing_is_sent(changes: dict, reason: str) -> None:
    sender = FakeSender()
    events = await effects(sender).run(request(check_relevance=True, **changes))
    assert [(e.type, e.payload.relevant, e.payload.reason) for e in events] == [
        ("outbound.relevance.checked", False, reason)]
    assert sender.sent == []


async def test_failures_are_retryable_except_client_errors() -> None:
    events = await effects(FakeSender(["whatsapp 503: busy"])).run(request())
    assert [(e.payload.retryable, e.payload.attempt) for e in events if e.type == "outbound.send.failed"] == [(True, 1)]
    events = await effects(FakeSender(["whatsapp 400: bad number (code 100)"])).run(request(attempt=3, text="hola"))
    failed = [e.payload for e in events if e.type == "outbound.send.failed"]
    assert [(f.retryable, f.attempt, f.rendered) for f in failed] == [(False, 3, None)]  # sent what was rendered
    events = await effects(FakeSender()).run(request(contact=None))
    assert [e.payload.reason for e in events if e.type == "outbound.send.failed"] == [
        "the user has no contact in their preferences"]


async def test_a_send_whose_answer_was_lost_is_never_retried() -> None:
    lost = SendOutcomeUnknown("whatsapp request outcome unknown: ReadError after the request was written")
    events = await effects(FakeSender([lost])).run(request())
    assert [(e.payload.retryable, e.payload.reason) for e in events if e.type == "outbound.send.failed"] == [
        (False, lost.reason)]


async def test_an_interrupted_send_is_reported_failed_with_the_result_id() -> None:
    worker = effects(FakeSender())
    cause = request()
    sent = await worker.run(cause)
    unknown = worker.unknown_outcome(cause)
    assert [e.type for e in unknown] == ["outbound.send.failed"] and not unknown[0].payload.retryable
    assert unknown[0].event_id == next(e.event_id for e in sent if e.type == "outbound.message.sent")


async def test_the_concierge_renders_and_relevance_is_asked_through_the_real_client() -> None:
    def answer(body: dict):
        system = body["system"][0]["text"]
        return None if "concierge" in system else (200, fake.message(body, "RELEVANT the update is new"))

    with FakeAnthropic(reply="¡Hola! Encontramos a Acme Corp para ti.", responder=answer) as fake:
        client = LlmClient(Settings(anthropic_api_key=SecretStr("sk-test"), anthropic_base_url=fake.base_url))
        sender = FakeSender()
        events = await effects(sender, client).run(request(check_relevance=True))
        await client.aclose()
    by_type = {e.type: e.payload for e in events}
    assert by_type["outbound.relevance.checked"].method == "llm" and by_type["outbound.relevance.checked"].relevant
    assert by_type["outbound.message.sent"].rendered.method == "llm"
    assert sender.sent == [("34600000001", "¡Hola! Encontramos a Acme Corp para ti.")]
    costs = [e.payload for e in events if e.type == "llm.call.recorded"]
    assert sorted(c.purpose for c in costs) == ["relevance", "rendering"]
    assert all(c.domain == "outbound" and c.user_id == "u1" and c.agent_id == "saga" and c.input_tokens for c in costs)


async def test_a_failing_model_falls_back_to_rules_and_templates_and_is_recorded() -> None:
    with FakeAnthropic(responder=lambda _body: (529, error_body("overloaded_error", "busy"))) as fake:
        client = LlmClient(Settings(anthropic_api_key=SecretStr("sk-test"), anthropic_base_url=fake.base_url))
        sender = FakeSender()
        events = await effects(sender, client).run(request(check_relevance=True))
        await client.aclose()
    by_type = {e.type: e.payload for e in events if e.type != "llm.call.recorded"}
    assert by_type["outbound.relevance.checked"].method == "rules"
    assert "529" in by_type["outbound.relevance.checked"].fallback_reason
    assert by_type["outbound.message.sent"].rendered.method == "template" and len(sender.sent) == 1
    assert [bool(e.payload.error) for e in events if e.type == "llm.call.recorded"] == [True, True]


def test_templates_per_type() -> None:
    assert render_template(MessageData(type="text", fields={"text": "Hola"})) == "Hola"
    assert render_template(MessageData(type="weekly_summary", fields={"stats": {"introsCompleted": 2}})) == (
        "Your weekly summary: intros completed: 2.")
    assert "payment" in render_template(MessageData(type="payment_required"))
    assert render_template(MessageData(type="event_reminder", fields={"when": "9:00"})) == "Event reminder: when: 9:00."


def test_due_wakeups_become_ticks_with_ids_from_user_and_due_time() -> None:
    import msgspec

    from agents.outbound.wakeups import _Wakeup

    due = NOW - timedelta(seconds=1)
    rows = [(b"outbound:acme:u1", msgspec.json.encode(_Wakeup("acme", "u1", due))),
            (b"outbound:acme:u2", msgspec.json.encode(_Wakeup("acme", "u2", NOW + timedelta(hours=1))))]
    published: dict = {}
    ticks = due_ticks(rows, NOW, published, republish_s=30, monotonic=100.0)
    assert [(t.stream_id, t.payload.due_at, t.occurred_at) for t in ticks] == [("outbound:acme:u1", due, NOW)]
    assert due_ticks(rows, NOW, published, republish_s=30, monotonic=110.0) == []  # just published
    again = due_ticks(rows, NOW + timedelta(seconds=40), published, republish_s=30, monotonic=140.0)
    assert [t.event_id for t in again] == [ticks[0].event_id]  # the same tick: the fold applies it once


# -- write API ---------------------------------------------------------------------------------------------------


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[Envelope] = []

    async def publish(self, envelopes) -> list[uuid.UUID]:
        self.published.extend(decode(encode(e)) for e in envelopes)
        return [e.event_id for e in envelopes]


@pytest.fixture
def api():
    settings = Settings()
    app = FastAPI()
    app.state.settings = settings
    app.state.publisher = FakePublisher()
    app.include_router(command_router())
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {issue_token(settings, 'acme')}"}
    return app.state.publisher, httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers)


MESSAGE = {"user_id": "u1", "agent_id": "saga", "priority": "high",
           "message_data": {"type": "solution_update", "findings": {"matchedInnovators": [{"name": "Acme"}]}}}


async def test_queue_answers_202_and_the_same_idempotency_key_the_same_id(api) -> None:
    publisher, client = api
    first = await client.post("/v1/outbound", json={**MESSAGE, "idempotency_key": "k1"})
    second = await client.post("/v1/outbound", json={**MESSAGE, "idempotency_key": "k1"})
    assert first.status_code == second.status_code == 202
    assert first.json()["message_id"] == second.json()["message_id"] == str(publisher.published[0].event_id)
    queued = publisher.published[0]
    assert queued.stream_id == "outbound:acme:u1" and queued.payload.message_data.type == "solution_update"
    assert queued.payload.message_data.fields == {"findings": {"matchedInnovators": [{"name": "Acme"}]}}


@pytest.mark.parametrize(("body", "field"), [
    ({**MESSAGE, "priority": "asap"}, "priority"),
    ({**MESSAGE, "message_data": {"findings": {}}}, "message_data"),
    ({**MESSAGE, "expires_at": "2026-06-01T10:00:00"}, "expires_at"),
    ({k: v for k, v in MESSAGE.items() if k != "user_id"}, "user_id"),
    ({**MESSAGE, "tenant_id": "globex"}, "tenant_id"),
])
async def test_bad_messages_get_422_naming_the_field_and_reach_no_log(api, body: dict, field: str) -> None:
    publisher, client = api
    response = await client.post("/v1/outbound", json=body)
    assert response.status_code == 422
    assert [e["loc"][-1] for e in response.json()["detail"]] == [field]
    assert publisher.published == []


async def test_preferences_are_checked_then_published_with_the_tz_version(api) -> None:
    publisher, client = api
    good = {"timezone": "Europe/Madrid", "quiet_hours": {"start": "23:00", "end": "07:30"}, "daily_limit": 3,
            "contact": "34600000001"}
    response = await client.put("/v1/users/u1/preferences", json=good)
    assert response.status_code == 202
    payload = publisher.published[0].payload
    assert isinstance(payload, PreferencesUpdated) and payload.quiet_hours == QuietHours(start="23:00", end="07:30")
    assert payload.tz_version == response.json()["tz_version"]
    for bad, field in [({"timezone": "Europe/Atlantis"}, "timezone"), ({"quiet_hours": {"start": "24:00"}}, "start"),
                       ({"quiet_hours": {"start": "7:00"}}, "start"), ({"daily_limit": -1}, "daily_limit")]:
        response = await client.put("/v1/users/u1/preferences", json=bad)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == field, response.text
    assert len(publisher.published) == 1


async def test_queue_message_helper_publishes_one_event() -> None:
    publisher = FakePublisher()
    message_id = await queue_message(publisher, "acme", user_id="u1", agent_id="summary",  # type: ignore[arg-type]
                                     message_data={"type": "weekly_summary", "stats": {"intros": 2}},
                                     priority="low", idempotency_key="week-23")
    [queued] = publisher.published
    assert queued.event_id == message_id and queued.payload.priority == "low"
    with pytest.raises(ValueError, match="type"):
        await queue_message(publisher, "acme", user_id="u1", agent_id="a", message_data={"text": "x"})  # type: ignore[arg-type]


# -- what-if --------------------------------------------------------------------------------------------------


def test_simulate_refolds_under_another_policy_with_its_own_wakeups() -> None:
    """The log as the live fold wrote it (limit 1), re-folded with a limit of 3 and quiet hours from 23:30."""
    from agents.outbound.fold import fold

    config = OutboundConfig()
    log: list[Envelope] = []
    state = None

    def add(payload, at: datetime) -> None:
        nonlocal state
        envelope = new_event("acme", payload, event_id=uuid.uuid4(), occurred_at=at, recorded_at=at, actor="test")
        state, out = fold(state, envelope, config)
        log.extend([envelope, *out])

    add(PreferencesUpdated(user_id="u1", daily_limit=1), datetime(2026, 6, 1, 9, tzinfo=UTC))
    for hour, agent in ((10, "a"), (11, "b"), (23, "a")):
        add(MessageQueued(user_id="u1", agent_id=agent, message_data=MessageData(type="text")),
            datetime(2026, 6, 1, hour, tzinfo=UTC))
    result = simulate(log, OutboundConfig(daily_limit_override=3,
                                          quiet_hours_override=QuietHours(start="23:30", end="07:00")))
    before, after = result.counts()
    assert before == {("sent", "slot_available"): 1, ("deferred", "budget_exhausted"): 1,
                      ("deferred", "quiet_hours"): 1}
    assert after == {("sent", "slot_available"): 3}
    assert len(result.changed()) == 2
    # The unchanged policy gives back exactly what the log says.
    same = simulate(log, config)
    assert same.counts()[0] == same.counts()[1] and same.changed() == []


def test_simulate_releases_at_the_simulated_wakeups_up_to_the_horizon() -> None:
    from agents.outbound.fold import fold

    envelope = new_event("acme", MessageQueued(user_id="u1", agent_id="a", message_data=MessageData(type="text")),
                         event_id=uuid.uuid4(), occurred_at=datetime(2026, 6, 1, 23, tzinfo=UTC),
                         recorded_at=NOW, actor="test")
    _, out = fold(None, envelope, OutboundConfig())
    result = simulate([envelope, *out], OutboundConfig(quiet_hours_override=QuietHours(start="22:00", end="06:00")),
                      horizon=datetime(2026, 6, 2, 12, tzinfo=UTC))
    assert result.counts() == ({("deferred", "quiet_hours"): 1}, {("sent", "slot_available"): 1})
