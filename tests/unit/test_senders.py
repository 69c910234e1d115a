"""Reply senders: WhatsApp Cloud API requests and failures, and the log sender."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from agents import senders
from agents.conversations.config import build_effects
from agents.senders import (
    THROTTLING_CODES,
    LogSender,
    SendError,
    SendOutcomeUnknown,
    WhatsAppSender,
    in_flight,
)
from agents.tenants import Tenant
from streams.settings import Settings

TENANT = Tenant(id="acme", name="Acme Café", phone_number_id="109876543210")
REPLY = uuid.UUID("0b8f6e0a-5a4e-4c7e-9a53-4a1f0c2d9e11")


class Waits(list):
    """The sender's sleep: records each wait instead of waiting."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def sender_for(handler, waits: Waits | None = None, **options) -> tuple[WhatsAppSender, list[httpx.Request]]:
    requests: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return handler(request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(record))
    sender = WhatsAppSender("EAAG-token", "https://graph.test/v21.0/", 5.0, http_client=client,
                            sleep=Waits() if waits is None else waits, **options)
    return sender, requests


async def test_send_posts_a_text_message_and_returns_its_id():
    sender, requests = sender_for(lambda r: httpx.Response(200, json={
        "messaging_product": "whatsapp", "contacts": [{"input": "34600111222", "wa_id": "34600111222"}],
        "messages": [{"id": "wamid.HBgLMzQ2MDAxMTEyMjIVAgARGBI"}]}))
    message_id = await sender.send(TENANT, "34600111222", "Abrimos a las 8:00.", REPLY)

    assert message_id == "wamid.HBgLMzQ2MDAxMTEyMjIVAgARGBI"
    (request,) = requests
    assert request.method == "POST"
    assert str(request.url) == "https://graph.test/v21.0/109876543210/messages"
    assert request.headers["authorization"] == "Bearer EAAG-token"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": "34600111222", "type": "text",
        "text": {"preview_url": False, "body": "Abrimos a las 8:00."}}


async def test_graph_error_becomes_send_error_with_its_message_and_code():
    error = {"error": {"message": "(#131030) Recipient phone number not in allowed list", "type": "OAuthException",
                       "code": 131030, "fbtrace_id": "AbC"}}
    sender, _ = sender_for(lambda r: httpx.Response(400, json=error))
    with pytest.raises(SendError) as raised:
        await sender.send(TENANT, "34600111222", "hola", REPLY)
    assert raised.value.reason == "whatsapp 400: (#131030) Recipient phone number not in allowed list (code 131030)"


async def test_non_json_error_keeps_the_status_and_body():
    sender, _ = sender_for(lambda r: httpx.Response(502, text="Bad Gateway"))
    with pytest.raises(SendError, match="whatsapp 502: Bad Gateway"):
        await sender.send(TENANT, "34600111222", "hola", REPLY)


async def test_success_without_message_id_is_a_send_error():
    sender, _ = sender_for(lambda r: httpx.Response(200, json={"messages": []}))
    with pytest.raises(SendError, match="without a message id"):
        await sender.send(TENANT, "34600111222", "hola", REPLY)


async def test_network_error_becomes_send_error():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    sender, _ = sender_for(refuse)
    with pytest.raises(SendError, match="ConnectError: connection refused"):
        await sender.send(TENANT, "34600111222", "hola", REPLY)


async def test_log_sender_returns_an_id_derived_from_the_reply():
    sender = LogSender()
    first = await sender.send(TENANT, "34600111222", "hola", REPLY)
    assert first == f"wamid.baton.{REPLY.hex}" == await sender.send(TENANT, "34600111222", "otra", REPLY)


SENT = {"messaging_product": "whatsapp", "messages": [{"id": "wamid.ok"}]}


def answers(*responses):
    """A handler answering each request with the next response (or raising it, for an exception)."""
    queue = list(responses)

    def handle(request):
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handle


def throttled(status: int, code: int, retry_after: str | None = None) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, headers=headers, json={"error": {
        "message": f"(#{code}) Rate limit hit", "type": "OAuthException", "code": code, "fbtrace_id": "Ab"}})


def test_the_throttling_codes_are_the_cloud_apis():
    assert THROTTLING_CODES == {4, 80007, 130429, 131048, 131056}


async def test_a_429_is_retried_after_its_retry_after():
    waits = Waits()
    sender, requests = sender_for(answers(throttled(429, 130429, "7"), httpx.Response(200, json=SENT)), waits)
    assert await sender.send(TENANT, "34600111222", "hola", REPLY) == "wamid.ok"
    assert len(requests) == 2 and waits == [7.0]
    assert requests[0].content == requests[1].content


async def test_a_retry_after_date_is_honoured_and_every_wait_is_capped():
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    waits = Waits()
    sender, _ = sender_for(answers(throttled(429, 4, later), throttled(400, 80007, "3600"),
                                   httpx.Response(200, json=SENT)), waits, retry_max_s=60.0)
    assert await sender.send(TENANT, "34600111222", "hola", REPLY) == "wamid.ok"
    assert 15 <= waits[0] <= 20 and waits[1] == 60.0


@pytest.mark.parametrize("code", sorted(THROTTLING_CODES))
async def test_throttling_codes_in_a_400_are_retried_with_exponential_backoff(code):
    waits = Waits()
    sender, requests = sender_for(answers(throttled(400, code), throttled(400, code), throttled(400, code),
                                          httpx.Response(200, json=SENT)), waits, retry_base_s=1.0)
    assert await sender.send(TENANT, "34600111222", "hola", REPLY) == "wamid.ok"
    assert len(requests) == 4
    if code == 131056:  # the pair rate limit: about one message per 6 s to one user
        assert waits == [6.0, 6.0, 6.0]
    else:
        assert [0.5 <= waits[0] <= 1.0, 1.0 <= waits[1] <= 2.0, 2.0 <= waits[2] <= 4.0] == [True] * 3


async def test_throttling_that_never_ends_fails_after_the_last_attempt():
    waits = Waits()
    sender, requests = sender_for(lambda r: throttled(429, 130429, "1"), waits, max_attempts=3)
    with pytest.raises(SendError) as raised:
        await sender.send(TENANT, "34600111222", "hola", REPLY)
    assert not raised.value.outcome_unknown and len(requests) == 3 and waits == [1.0, 1.0]
    assert raised.value.reason == "whatsapp 429: (#130429) Rate limit hit (code 130429) (after 3 attempts)"


@pytest.mark.parametrize("error", [httpx.ConnectError("connection refused"), httpx.ConnectTimeout("timed out"),
                                   httpx.PoolTimeout("no connection free")])
async def test_a_request_that_never_left_is_retried(error):
    sender, requests = sender_for(answers(error, httpx.Response(200, json=SENT)))
    assert await sender.send(TENANT, "34600111222", "hola", REPLY) == "wamid.ok"
    assert len(requests) == 2


@pytest.mark.parametrize("error", [httpx.ReadTimeout("timed out"), httpx.ReadError("connection reset"),
                                   httpx.RemoteProtocolError("Server disconnected without sending a response")])
async def test_a_request_whose_answer_was_lost_is_outcome_unknown_and_not_resent(error):
    sender, requests = sender_for(answers(error, httpx.Response(200, json=SENT)))
    with pytest.raises(SendOutcomeUnknown) as raised:
        await sender.send(TENANT, "34600111222", "hola", REPLY)
    assert raised.value.outcome_unknown and len(requests) == 1
    assert raised.value.reason.startswith("outcome unknown: whatsapp request failed after it was sent: ")


def failing_after(*trace_events: str):
    """A handler that reports transport steps to the request's trace as httpcore does, then loses the connection;
    a second request is answered."""
    calls = []

    async def handle(request):
        calls.append(request)
        if len(calls) > 1:
            return httpx.Response(200, json=SENT)
        for name in trace_events:
            await request.extensions["trace"](name, {})
        raise httpx.ReadError("[Errno 104] Connection reset by peer")

    return handle


async def test_a_connection_lost_before_the_request_was_written_is_retried():
    # httpcore swallows a failed write and reports the read that follows: its trace tells the two apart.
    sender, requests = sender_for(failing_after(
        "connection.connect_tcp.started", "connection.connect_tcp.complete", "http11.send_request_headers.started",
        "http11.send_request_headers.complete", "http11.send_request_body.started", "http11.send_request_body.failed",
        "http11.receive_response_headers.started", "http11.receive_response_headers.failed"))
    assert await sender.send(TENANT, "34600111222", "hola", REPLY) == "wamid.ok"
    assert len(requests) == 2


async def test_a_connection_lost_after_the_request_was_written_is_outcome_unknown():
    sender, requests = sender_for(failing_after(
        "http11.send_request_headers.complete", "http11.send_request_body.complete",
        "http11.receive_response_headers.started", "http11.receive_response_headers.failed"))
    with pytest.raises(SendOutcomeUnknown, match="after it was sent: ReadError"):
        await sender.send(TENANT, "34600111222", "hola", REPLY)
    assert len(requests) == 1


async def test_other_client_errors_and_5xx_are_not_retried():
    for answer in (httpx.Response(400, json={"error": {"message": "bad", "code": 131030}}),
                   httpx.Response(503, json={"error": {"message": "busy", "code": 2}})):
        sender, requests = sender_for(answers(answer))
        with pytest.raises(SendError) as raised:
            await sender.send(TENANT, "34600111222", "hola", REPLY)
        assert not raised.value.outcome_unknown and len(requests) == 1


async def test_an_accepted_request_without_a_message_id_is_outcome_unknown():
    sender, _ = sender_for(lambda r: httpx.Response(200, json={"messages": []}))
    with pytest.raises(SendOutcomeUnknown, match="outcome unknown: whatsapp 200 without a message id"):
        await sender.send(TENANT, "34600111222", "hola", REPLY)


async def test_in_flight_caps_each_number_first_in_first_out_and_survives_cancellation():
    admitted: list[int] = []
    release = asyncio.Event()

    async def hold(i: int, number: str = "1") -> None:
        async with in_flight("https://graph.test", number, 2):
            admitted.append(i)
            await release.wait()

    tasks = [asyncio.create_task(hold(i)) for i in range(5)]
    other = asyncio.create_task(hold(99, number="2"))
    for _ in range(10):
        await asyncio.sleep(0)
    assert admitted == [0, 1, 99]  # two per number; another number is not held up
    tasks[2].cancel()  # a waiter that gives up frees nothing and blocks no one
    release.set()
    await asyncio.gather(*tasks, other, return_exceptions=True)
    assert admitted == [0, 1, 99, 3, 4]


def test_settings_defaults_are_the_senders_and_reach_it():
    defaults = Settings()
    assert (defaults.whatsapp_max_concurrent_per_number, defaults.whatsapp_max_attempts,
            defaults.whatsapp_retry_base_s, defaults.whatsapp_retry_max_s) == (
        senders.MAX_CONCURRENT_PER_NUMBER, senders.MAX_ATTEMPTS, senders.RETRY_BASE_S, senders.RETRY_MAX_S)
    sender = build_effects(Settings(whatsapp_access_token="t", whatsapp_max_concurrent_per_number=3,
                                    whatsapp_max_attempts=2, whatsapp_retry_base_s=0.1,
                                    whatsapp_retry_max_s=5)).sender
    assert (sender.max_concurrent_per_number, sender.max_attempts, sender.retry_base_s, sender.retry_max_s) == (
        3, 2, 0.1, 5.0)
