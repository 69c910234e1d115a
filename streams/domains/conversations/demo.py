"""Signed example WhatsApp deliveries for `baton dev --demo`: three lanes, a duplicate, a status."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from agents.tenants import Tenant
from streams.domains.conversations.webhook import sign
from streams.settings import Settings

DEMO_CONTACTS = (
    ("34600111222", "Lucía", "Hola, ¿cuál es el horario de la tienda?"),
    ("34600333444", "Marco", "¿Cuánto cuesta el café en grano? ¿Hay stock?"),
    ("34600555666", "Ana", "Tengo un problema, mi pedido llegó roto"),
)


def message_delivery(tenant: Tenant, contact: str, name: str, wamid: str, text: str, ts: int) -> dict[str, Any]:
    """A WhatsApp Cloud API webhook body carrying one text message."""
    return _delivery(tenant, {
        "contacts": [{"profile": {"name": name}, "wa_id": contact}],
        "messages": [{"from": contact, "id": wamid, "timestamp": str(ts), "type": "text", "text": {"body": text}}],
    })


def status_delivery(tenant: Tenant, contact: str, wamid: str, status: str, ts: int) -> dict[str, Any]:
    """A WhatsApp Cloud API webhook body carrying one delivery status."""
    return _delivery(tenant, {
        "statuses": [{"id": wamid, "status": status, "timestamp": str(ts), "recipient_id": contact}],
    })


def _delivery(tenant: Tenant, value: dict[str, Any]) -> dict[str, Any]:
    metadata = {"display_phone_number": tenant.display_phone_number or "", "phone_number_id": tenant.phone_number_id}
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": f"waba-{tenant.id}", "changes": [
            {"field": "messages", "value": {"messaging_product": "whatsapp", "metadata": metadata, **value}}
        ]}],
    }


def post_signed(client: httpx.Client, settings: Settings, body: dict[str, Any]) -> httpx.Response:
    """POST a webhook body with a valid X-Hub-Signature-256."""
    raw = json.dumps(body).encode()
    return client.post(
        "/v1/webhooks/whatsapp",
        content=raw,
        headers={
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign(settings.whatsapp_app_secret.get_secret_value(), raw),
        },
    )


def run_demo(base_url: str, settings: Settings, tenant: Tenant, token: str, wait_s: float = 30.0) -> list[str]:
    """Push the demo conversations through the webhook, then mark the first reply as read."""
    now = int(time.time())
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for index, (contact, name, text) in enumerate(DEMO_CONTACTS):
            body = message_delivery(tenant, contact, name, f"wamid.demo.{now}.{index}", text, now)
            post_signed(client, settings, body).raise_for_status()
            if index == 0:
                post_signed(client, settings, body).raise_for_status()  # WhatsApp redelivers: still one turn
        first = DEMO_CONTACTS[0][0]
        reply_id = _first_reply_id(client, token, first, wait_s)
        if reply_id:
            post_signed(client, settings, status_delivery(tenant, first, reply_id, "read", now + 5)).raise_for_status()
    return [contact for contact, _, _ in DEMO_CONTACTS]


def _first_reply_id(client: httpx.Client, token: str, contact: str, wait_s: float) -> str | None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        response = client.get(f"/v1/conversations/{contact}", headers={"Authorization": f"Bearer {token}"})
        if response.status_code == 200:
            for turn in response.json()["dialogue"]:
                if turn["role"] == "agent" and turn["whatsapp_message_id"]:
                    return turn["whatsapp_message_id"]
        time.sleep(0.2)
    return None
