"""Reply senders: the WhatsApp Cloud API, or a log line in development."""

from __future__ import annotations

import uuid
from typing import Protocol

import httpx
import structlog

from streams.tenants import Tenant

log = structlog.get_logger(__name__)


class SendError(Exception):
    """A reply could not be sent; reason says why (it goes into ReplyFailed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Sender(Protocol):
    """Sends one text to a contact on behalf of a tenant and returns its WhatsApp message id."""

    name: str

    async def send(self, tenant: Tenant, contact: str, text: str, reply_event_id: uuid.UUID) -> str: ...


class LogSender:
    """Development sender: logs the reply and returns an id derived from the reply event."""

    name = "log"

    async def send(self, tenant: Tenant, contact: str, text: str, reply_event_id: uuid.UUID) -> str:
        """Log the reply instead of sending it."""
        message_id = f"wamid.baton.{reply_event_id.hex}"
        log.info("reply.logged", tenant=tenant.id, contact=contact, text=text, whatsapp_message_id=message_id)
        return message_id


class WhatsAppSender:
    """Sends text messages through the WhatsApp Cloud API (Graph API /{phone_number_id}/messages)."""

    name = "whatsapp"

    def __init__(
        self, access_token: str, api_base: str, timeout_s: float, http_client: httpx.AsyncClient | None = None
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {access_token}"}
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(timeout=timeout_s)

    async def send(self, tenant: Tenant, contact: str, text: str, reply_event_id: uuid.UUID) -> str:
        """POST one text message; SendError on a non-2xx answer or a network failure."""
        body = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": contact,
            "type": "text",
            "text": {"preview_url": False, "body": text},
        }
        url = f"{self.api_base}/{tenant.phone_number_id}/messages"
        try:
            response = await self._client.post(url, json=body, headers=self._headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise SendError(f"whatsapp request failed: {type(exc).__name__}: {exc}") from exc
        if not response.is_success:
            raise SendError(f"whatsapp {response.status_code}: {_graph_error(response)}")
        try:
            message_id = response.json()["messages"][0]["id"]
        except (ValueError, LookupError, TypeError):
            message_id = None
        if not isinstance(message_id, str) or not message_id:
            raise SendError(f"whatsapp {response.status_code} without a message id: {response.text[:200]}")
        log.info("reply.sent", tenant=tenant.id, contact=contact, whatsapp_message_id=message_id,
                 reply_event_id=str(reply_event_id))
        return message_id

    async def aclose(self) -> None:
        """Close the HTTP client if this sender created it."""
        if self._owns_client:
            await self._client.aclose()


def _graph_error(response: httpx.Response) -> str:
    """The Graph API error message and code, or the start of the body when it is not Graph JSON."""
    try:
        error = response.json()["error"]
        return f"{error['message']} (code {error.get('code')})"
    except (ValueError, LookupError, TypeError):
        return response.text[:200] or response.reason_phrase
