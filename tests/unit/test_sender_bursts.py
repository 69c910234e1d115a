"""The reply sender under a burst, over real sockets: a fake Graph API that refuses, throttles and resets.

Every reply ends sent or honestly unknown (never failed for a transient cause, never sent twice), and the fake
never has more requests of one business number in flight than the cap.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from agents.conversations.effects import Effects
from agents.senders import WhatsAppSender
from agents.tenants import load_tenants
from schemas import Envelope, new_event
from schemas.conversations import ReplyFailed, ReplyRequested, ReplySent
from tests.fixtures.graph import (
    DELIVER,
    HOLD,
    RESET,
    Answer,
    Arrival,
    FakeGraph,
    throttle,
)

TENANTS = load_tenants(Path(__file__).resolve().parents[2] / "examples" / "tenants.toml")
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
UNKNOWN_AFTER_SENT = "outcome unknown: whatsapp request failed after it was sent: "


def reply(i: int) -> Envelope:
    """Reply i of the burst, alternating between the two tenants (two business numbers)."""
    tenant = ("acme", "globex")[i % 2]
    payload = ReplyRequested(session_id=uuid.uuid5(uuid.NAMESPACE_URL, f"s{i}"), contact=f"346{i:08d}",
                             in_reply_to=uuid.uuid5(uuid.NAMESPACE_URL, f"m{i}"), lane="info", text=f"reply {i}")
    return new_event(tenant, payload, event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"r{i}"), occurred_at=NOW,
                     recorded_at=NOW, actor="effect:router")


def index(identity: tuple[str, str]) -> int:
    return int(identity[1].removeprefix("reply "))


class Waits:
    """The sender's sleep: records each wait and yields briefly instead (a first wait opens the fake's port)."""

    def __init__(self, fake: FakeGraph) -> None:
        self.fake, self.seconds = fake, []

    async def __call__(self, seconds: float) -> None:
        self.seconds.append(seconds)
        self.fake.listen()
        await asyncio.sleep(0.01)


async def send_all(fake: FakeGraph, replies: list[Envelope], **options) -> tuple[list[Envelope], Waits]:
    waits = Waits(fake)
    sender = WhatsAppSender("graph-token", fake.url, 10.0, sleep=waits, **options)
    try:
        effects = Effects(TENANTS, sender, clock=lambda: NOW)
        results = await asyncio.gather(*(effects.run(r) for r in replies))
    finally:
        await sender.aclose()
    assert all(len(r) == 1 for r in results)
    return [r[0] for r in results], waits


def assert_honest(fake: FakeGraph, replies: list[Envelope], outcomes: list[Envelope]) -> set[int]:
    """Each reply sent with the id the fake gave, or unknown; none failed, none delivered twice; the unknown ones."""
    delivered = {r.arrival.identity: r.wamid for r in fake.records if r.wamid is not None}
    assert max(fake.delivered().values(), default=0) <= 1, "a message reached its contact twice"
    unknown = set()
    for request, outcome in zip(replies, outcomes, strict=True):
        identity = (request.payload.contact, request.payload.text)
        assert outcome.payload.reply_event_id == request.event_id
        if isinstance(outcome.payload, ReplySent):
            assert delivered[identity] == outcome.payload.whatsapp_message_id
        else:
            assert isinstance(outcome.payload, ReplyFailed)
            assert outcome.payload.reason.startswith("outcome unknown: "), outcome.payload.reason
            assert outcome.payload.reason.endswith("; not retried")
            unknown.add(index(identity))
    return unknown


async def test_a_burst_of_200_replies_ends_sent_or_honestly_unknown_within_the_cap_per_number():
    cap, resets = 8, {3, 28, 53, 78, 103, 128, 153, 178}

    def graph(arrival: Arrival) -> Answer:
        i = index(arrival.identity)
        if i in resets and arrival.attempt == 1:
            return RESET  # read whole, not delivered, connection reset: the sender cannot tell it from a loss
        if arrival.attempt <= 2 and i % 3 == 0:
            return [throttle(429, 130429, "3"), throttle(400, 131056), throttle(400, 4, "1"),
                    throttle(429, 80007), throttle(400, 131048)][i % 5]
        if arrival.attempt == 1 and arrival.in_flight >= cap // 2:
            return throttle(429, 130429)  # under load
        return DELIVER

    # Connections are refused until the first retry's wait opens the port.
    fake = FakeGraph(graph, listening=False, latency_s=0.01)
    replies = [reply(i) for i in range(200)]
    try:
        outcomes, waits = await send_all(fake, replies, max_concurrent_per_number=cap)
    finally:
        fake.close()

    unknown = assert_honest(fake, replies, outcomes)
    assert unknown == resets, "exactly the replies whose connection was reset after the request are unknown"
    assert all(o.payload.reason.startswith(UNKNOWN_AFTER_SENT) for o in outcomes if isinstance(o.payload, ReplyFailed))
    arrivals = fake.arrivals()
    assert all(arrivals[(r.payload.contact, r.payload.text)] == 1 for i, r in enumerate(replies) if i in resets), (
        "an unknown reply was sent again")
    assert sum(fake.delivered().values()) == 200 - len(resets)
    assert set(fake.max_in_flight) == {"109876543210", "209876543210"}
    assert max(fake.max_in_flight.values()) <= cap, fake.max_in_flight

    throttled = [r.answer for r in fake.records if r.answer.kind == "throttle"]
    refused = len(waits.seconds) - len(throttled)
    assert refused >= 1, "the first sends met a closed port and were retried"
    assert waits.seconds.count(3.0) == sum(a.retry_after == "3" for a in throttled)  # Retry-After honoured
    assert waits.seconds.count(1.0) >= sum(a.retry_after == "1" for a in throttled)
    assert Counter(a.code for a in throttled).keys() >= {4, 80007, 130429, 131048, 131056}


async def test_a_timeout_after_the_request_was_written_is_unknown_and_not_resent():
    fake = FakeGraph(lambda arrival: HOLD)
    try:
        waits = Waits(fake)
        sender = WhatsAppSender("graph-token", fake.url, 0.3, sleep=waits)
        (outcome,) = await Effects(TENANTS, sender, clock=lambda: NOW).run(reply(0))
        await sender.aclose()
    finally:
        fake.close()
    assert isinstance(outcome.payload, ReplyFailed)
    assert outcome.payload.reason.startswith(UNKNOWN_AFTER_SENT + "ReadTimeout")
    assert waits.seconds == [] and sum(fake.arrivals().values()) == 1


async def test_the_cap_fills_and_holds_while_answers_wait():
    fake = FakeGraph(lambda arrival: HOLD)
    number, cap = "109876543210", 4
    try:
        sending = asyncio.ensure_future(send_all(fake, [reply(i) for i in range(0, 40, 2)],
                                                 max_concurrent_per_number=cap))
        for _ in range(1000):  # bounded: until the fake holds as many requests as the cap allows
            if fake.in_flight[number] == cap:
                break
            await asyncio.sleep(0.01)
        held = fake.in_flight[number]
        fake.released.set()
        outcomes, waits = await sending
    finally:
        fake.close()
    assert held == cap and fake.max_in_flight == {number: cap}
    assert all(isinstance(o.payload, ReplySent) for o in outcomes) and waits.seconds == []


async def test_a_short_listen_backlog_fails_no_reply():
    # The setup: 200 replies at once against a Graph endpoint with Python's default listen backlog (5)
    # failed 53-108 of them. A cap within the backlog gets every reply through; any cap leaves none failed.
    alone = [reply(i) for i in range(0, 400, 2)]  # one business number
    fake = FakeGraph(backlog=5)
    try:
        outcomes, _ = await send_all(fake, alone, max_concurrent_per_number=5)
    finally:
        fake.close()
    assert assert_honest(fake, alone, outcomes) == set()

    replies = [reply(i) for i in range(200)]  # two numbers, the default cap: up to 20 connections at once
    fake = FakeGraph(backlog=5)
    try:
        outcomes, _ = await send_all(fake, replies)
    finally:
        fake.close()
    unknown = assert_honest(fake, replies, outcomes)
    arrivals = fake.arrivals()
    assert all(arrivals[(replies[i].payload.contact, replies[i].payload.text)] <= 1 for i in unknown)
    assert max(fake.max_in_flight.values()) <= 10
