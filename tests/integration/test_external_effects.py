"""The worker's real Anthropic and WhatsApp clients against local fake servers, including a SIGKILL mid-send."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from schemas import new_event
from schemas.conversations import ReplyRequested
from streams.auth import issue_token
from streams.settings import Settings
from tests.fixtures.apis import FakeApis
from tests.fixtures.effects import (
    Replies,
    assert_replies_effectively_once,
    assert_sent_ids_came_from_the_fake,
    graph_identity,
    more_messages,
    publish_envelopes,
    reply_totals,
    runtime_with_fakes,
    started_sends,
)
from tests.fixtures.pipeline import acme_messages
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def fake() -> Iterator[FakeApis]:
    apis = FakeApis()
    yield apis
    apis.close()


def test_llm_routing_and_whatsapp_sends_are_recorded(settings: Settings, fake: FakeApis) -> None:
    with runtime_with_fakes(settings, fake).start() as runtime:
        publish_envelopes(runtime.settings, acme_messages(contacts=2, per_contact=1, start=datetime(2026, 11, 1, tzinfo=UTC)))
        eventually(lambda: [v for v in reply_totals(runtime.settings).values() if v[1] == 1] == [(1, 1, 0)] * 2,
                   "two replies sent")
        with psycopg.connect(runtime.settings.database_url) as conn:
            routed = conn.execute("SELECT payload FROM events WHERE type = 'conversation.message.routed'").fetchall()
        # Both calls are on the shared cost ledger, summed by the costs projection.
        token = issue_token(runtime.settings, "acme")
        with httpx.Client(base_url=runtime.api_url, headers={"Authorization": f"Bearer {token}"}) as api:
            report = eventually(lambda: (r := api.get("/v1/costs", params={"group_by": "domain"}).json())["groups"]
                                and r, "the routing calls on the cost ledger")
    (group,) = report["groups"]
    assert (group["key"], group["calls"], group["input_tokens"], group["output_tokens"]) == ("conversations", 2, 240, 4)
    assert report["total_usd"] == pytest.approx(2 * (120 * 1.0 + 2 * 5.0) / 1_000_000)
    assert len(routed) == 2
    for (payload,) in routed:
        assert (payload["lane"], payload["method"], payload["model"]) == ("support", "llm", "claude-haiku-4-5")
        assert (payload["input_tokens"], payload["output_tokens"]) == (120, 2)
        assert payload["cost_usd"] == pytest.approx((120 * 1.0 + 2 * 5.0) / 1_000_000)
    assert sorted(s["to"] for s in fake.sends) == ["34620000000", "34620000001"]
    assert all(s["path"] == "/109876543210/messages" and "ticket" in s["text"]["body"] for s in fake.sends)


def test_classifier_outage_falls_back_to_rules(settings: Settings) -> None:
    fake = FakeApis(anthropic_status=529)
    try:
        with runtime_with_fakes(settings, fake).start() as runtime:
            publish_envelopes(runtime.settings, acme_messages(contacts=1, per_contact=2, start=datetime(2026, 11, 1, tzinfo=UTC)))
            eventually(lambda: list(reply_totals(runtime.settings).values()) == [(2, 2, 0)], "replies sent")
            with psycopg.connect(runtime.settings.database_url) as conn:
                routed = [p for (p,) in conn.execute(  # in the order of the messages they route
                    "SELECT r.payload FROM events r JOIN events m ON m.event_id = (r.payload->>'message_event_id')::uuid"
                    " WHERE r.type = 'conversation.message.routed' ORDER BY m.occurred_at")]
    finally:
        fake.close()
    assert fake.classifications == 2  # one call per message: the classifier does not retry an overloaded model
    assert [(p["method"], p["lane"]) for p in routed] == [("rules", "info"), ("rules", "commerce")]
    assert all("529" in p["fallback_reason"] and "overloaded_error" in p["fallback_reason"] for p in routed), routed


def test_killed_worker_never_sends_a_reply_twice(settings: Settings, fake: FakeApis) -> None:
    contacts, per_contact, later = 10, 8, 2
    start = datetime(2026, 11, 1, tzinfo=UTC)
    envelopes = acme_messages(contacts, per_contact, start)
    after_restart = more_messages(contacts, later, start + timedelta(hours=1), "after-restart")
    with runtime_with_fakes(settings, fake).start() as runtime:
        publish_envelopes(runtime.settings, envelopes)
        eventually(lambda: len(fake.sends) >= 15, "some replies sent")
        runtime.kill("worker", signal.SIGKILL)
        at_kill = Replies.on_log(runtime.settings)  # the worker is dead: nothing answers a started send now
        in_flight = at_kill.in_flight(started_sends(runtime.settings))
        runtime.spawn("worker")
        publish_envelopes(runtime.settings, after_restart)

        def settled():
            totals = reply_totals(runtime.settings)
            total = per_contact + later
            done = len(totals) == contacts and all(r == total and s + f == total for r, s, f in totals.values())
            return totals if done else None

        eventually(settled, "every reply sent or failed", within_s=120)
        replies = Replies.on_log(runtime.settings)
    assert_replies_effectively_once(
        replies, fake.sent(), graph_identity, messages=[e.event_id for e in envelopes + after_restart],
        in_flight_at_kill=in_flight, after_restart=[e.event_id for e in after_restart])
    assert_sent_ids_came_from_the_fake(replies, fake)


def test_request_redelivered_at_once_is_sent_once_and_reported_sent(settings: Settings, fake: FakeApis) -> None:
    at = datetime(2026, 11, 1, tzinfo=UTC)
    request = new_event("acme", ReplyRequested(session_id=uuid.uuid4(), contact="34699000001", in_reply_to=uuid.uuid4(),
                                               lane="info", text="Abrimos a las 9."),
                        event_id=uuid.uuid4(), occurred_at=at, recorded_at=at, actor="effect:router")
    with runtime_with_fakes(settings, fake).start() as runtime:
        publish_envelopes(runtime.settings, [request, request])  # both copies reach the effect worker in one batch

        def outcomes():
            with psycopg.connect(runtime.settings.database_url) as conn:
                return conn.execute("SELECT type FROM events WHERE causation_id = %s", (request.event_id,)).fetchall()

        assert eventually(outcomes, "the send's outcome") == [("conversation.reply.sent",)]
    assert [s["to"] for s in fake.sends] == ["34699000001"]
