"""Reply senders: WhatsApp Cloud API requests and failures, and the log sender."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from agents.senders import LogSender, SendError, WhatsAppSender
from streams.tenants import Tenant

TENANT = Tenant(id="acme", name="Acme Café", phone_number_id="109876543210")
REPLY = uuid.UUID("0b8f6e0a-5a4e-4c7e-9a53-4a1f0c2d9e11")


def sender_for(handler) -> tuple[WhatsAppSender, list[httpx.Request]]:
    requests: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return handler(request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(record))
    return WhatsAppSender("EAAG-token", "https://graph.test/v21.0/", 5.0, http_client=client), requests


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
