"""Message senders shared by the domains that write to users (conversation replies, outbound messages): the
WhatsApp Cloud API, or a log line in development."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx
import structlog

from agents.errors import AgentError
from agents.tenants import Tenant
from streams.settings import Settings

log = structlog.get_logger(__name__)

# Graph API error codes that mean "throttled, nothing was sent; try again later" (WhatsApp Cloud API error codes,
# throttling errors): 4 app call rate limit, 80007 WhatsApp Business Account rate limit, 130429 per-number
# throughput, 131048 spam rate limit, 131056 (business, consumer) pair rate limit.
THROTTLING_CODES: frozenset[int] = frozenset({4, 80007, 130429, 131048, 131056})
# Shortest wait worth making after a throttling code: the pair rate allows about one message per 6 s to a user.
MIN_WAIT_S: dict[int, float] = {131056: 6.0}

# Defaults of the BATON_WHATSAPP_* settings of the same names. Ten requests in flight per number stay under the
# Cloud API's default 80 messages/s per number at any answer time above 125 ms.
MAX_CONCURRENT_PER_NUMBER = 10
MAX_ATTEMPTS = 4
RETRY_BASE_S = 0.5
RETRY_MAX_S = 30.0


class SendError(AgentError):
    """A reply could not be sent; reason says why (it goes into ReplyFailed)."""

    outcome_unknown = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SendOutcomeUnknown(SendError):
    """The request was written but its answer was lost: the reply may have been sent, so it is never resent."""

    outcome_unknown = True


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


class _Transient(AgentError):
    """One attempt failed in a way that cannot have sent the message; retry after `delay_s` (None: backoff)."""

    def __init__(self, reason: str, delay_s: float | None = None, min_delay_s: float = 0.0) -> None:
        super().__init__(reason)
        self.reason, self.delay_s, self.min_delay_s = reason, delay_s, min_delay_s


class WhatsAppSender:
    """Sends text messages through the WhatsApp Cloud API (Graph API /{phone_number_id}/messages).

    At most `max_concurrent_per_number` requests are in flight per business number, counted across every sender
    in the event loop (the worker's conversations and outbound senders share them). A failure that cannot have
    sent the message (no connection, the request not fully written, 429 or a throttling code) is retried up to
    `max_attempts` in all, after `Retry-After` or an exponential backoff; a request that was written and whose
    answer was lost raises SendOutcomeUnknown and is never resent.
    """

    name = "whatsapp"

    def __init__(
        self, access_token: str, api_base: str, timeout_s: float, http_client: httpx.AsyncClient | None = None, *,
        max_concurrent_per_number: int = MAX_CONCURRENT_PER_NUMBER, max_attempts: int = MAX_ATTEMPTS,
        retry_base_s: float = RETRY_BASE_S, retry_max_s: float = RETRY_MAX_S,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self.timeout_s = timeout_s
        self.max_concurrent_per_number = max_concurrent_per_number
        self.max_attempts = max_attempts
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        self._sleep = sleep
        self._headers = {"Authorization": f"Bearer {access_token}"}
        self._owns_client = http_client is None
        self._client = http_client or httpx.AsyncClient(timeout=timeout_s)

    async def send(self, tenant: Tenant, contact: str, text: str, reply_event_id: uuid.UUID) -> str:
        """POST one text message; SendError when it was not sent, SendOutcomeUnknown when that cannot be known."""
        body = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": contact,
            "type": "text",
            "text": {"preview_url": False, "body": text},
        }
        url = f"{self.api_base}/{tenant.phone_number_id}/messages"
        for attempt in range(1, self.max_attempts + 1):
            try:
                async with in_flight(self.api_base, tenant.phone_number_id, self.max_concurrent_per_number):
                    message_id = await self._attempt(url, body)
            except _Transient as transient:
                if attempt == self.max_attempts:
                    raise SendError(f"{transient.reason} (after {attempt} attempt{'s' * (attempt > 1)})") from None
                delay = self._delay(attempt, transient.delay_s, transient.min_delay_s)
                log.warning("reply.retrying", tenant=tenant.id, contact=contact, reply_event_id=str(reply_event_id),
                            attempt=attempt, delay_s=round(delay, 3), reason=transient.reason)
                await self._sleep(delay)
                continue
            log.info("reply.sent", tenant=tenant.id, contact=contact, whatsapp_message_id=message_id,
                     reply_event_id=str(reply_event_id), attempt=attempt)
            return message_id
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _attempt(self, url: str, body: dict[str, Any]) -> str:
        """One request: the message id, or _Transient / SendError / SendOutcomeUnknown."""
        trace = _WriteTrace()
        try:
            response = await self._client.post(url, json=body, headers=self._headers, timeout=self.timeout_s,
                                               extensions={"trace": trace})
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:  # would fail the same way again
            raise SendError(f"whatsapp request failed: {type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:
            failure = f"{type(exc).__name__}: {exc}"
            # No connection, or the request never fully written (the transport traces each step): nothing was sent.
            if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout) or (
                    trace.traced and not trace.written and isinstance(exc, httpx.TransportError)):
                raise _Transient(f"whatsapp request failed: {failure}") from exc
            raise SendOutcomeUnknown(f"outcome unknown: whatsapp request failed after it was sent: {failure}") from exc
        if not response.is_success:
            reason, code = f"whatsapp {response.status_code}: {_graph_error(response)}", _graph_code(response)
            if response.status_code == 429 or code in THROTTLING_CODES:  # refused before anything was sent
                raise _Transient(reason, _retry_after(response), MIN_WAIT_S.get(code or 0, 0.0))
            raise SendError(reason)
        try:
            message_id = response.json()["messages"][0]["id"]
        except (ValueError, LookupError, TypeError):
            message_id = None
        if not isinstance(message_id, str) or not message_id:
            # The Graph API accepted the request: the message may well be on its way.
            raise SendOutcomeUnknown(
                f"outcome unknown: whatsapp {response.status_code} without a message id: {response.text[:200]}")
        return message_id

    def _delay(self, attempt: int, retry_after_s: float | None, min_delay_s: float = 0.0) -> float:
        """Seconds to wait before the next attempt: Retry-After, else exponential backoff with jitter; capped."""
        if retry_after_s is None:
            retry_after_s = max(self.retry_base_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.0), min_delay_s)
        return min(max(retry_after_s, 0.0), self.retry_max_s)

    async def aclose(self) -> None:
        """Close the HTTP client if this sender created it."""
        if self._owns_client:
            await self._client.aclose()


def whatsapp_sender(settings: Settings) -> WhatsAppSender:
    """The WhatsApp sender configured by the BATON_WHATSAPP_* settings (the access token must be set)."""
    if settings.whatsapp_access_token is None:
        raise ValueError("BATON_WHATSAPP_ACCESS_TOKEN is not set")
    return WhatsAppSender(
        access_token=settings.whatsapp_access_token.get_secret_value(),
        api_base=settings.whatsapp_api_base,
        timeout_s=settings.whatsapp_timeout_s,
        max_concurrent_per_number=settings.whatsapp_max_concurrent_per_number,
        max_attempts=settings.whatsapp_max_attempts,
        retry_base_s=settings.whatsapp_retry_base_s,
        retry_max_s=settings.whatsapp_retry_max_s,
    )


class _WriteTrace:
    """httpcore trace callback: did the transport run, and did it finish writing the request body?"""

    def __init__(self) -> None:
        self.traced = False
        self.written = False

    async def __call__(self, name: str, _info: dict[str, Any]) -> None:
        self.traced = True
        if name.endswith("send_request_body.complete"):
            self.written = True


class _Gate:
    """Requests in flight to one business number; waiters are admitted first in, first out."""

    def __init__(self) -> None:
        self.active = 0
        self.waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, limit: int) -> None:
        if self.active < limit and not self.waiters:
            self.active += 1
            return
        admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append((limit, admitted))
        try:
            await admitted
        except asyncio.CancelledError:
            if admitted.done() and not admitted.cancelled():
                self.release()  # admitted and cancelled at once: hand the slot on
            else:
                with contextlib.suppress(ValueError):  # _admit may have dropped it already
                    self.waiters.remove((limit, admitted))
                self._admit()
            raise

    def release(self) -> None:
        self.active -= 1
        self._admit()

    def _admit(self) -> None:
        while self.waiters and self.active < self.waiters[0][0]:
            _, admitted = self.waiters.popleft()
            if not admitted.done():
                self.active += 1
                admitted.set_result(None)


_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], _Gate]] = (
    weakref.WeakKeyDictionary())


@contextlib.asynccontextmanager
async def in_flight(api_base: str, phone_number_id: str, limit: int) -> AsyncIterator[None]:
    """Hold one of at most `limit` request slots of a business number, shared by every sender in this event loop."""
    gates = _gates.setdefault(asyncio.get_running_loop(), {})
    gate = gates.setdefault((api_base, phone_number_id), _Gate())
    await gate.acquire(limit)
    try:
        yield
    finally:
        gate.release()


def _graph_error(response: httpx.Response) -> str:
    """The Graph API error message and code, or the start of the body when it is not Graph JSON."""
    try:
        error = response.json()["error"]
        return f"{error['message']} (code {error.get('code')})"
    except (ValueError, LookupError, TypeError):
        return response.text[:200] or response.reason_phrase


def _graph_code(response: httpx.Response) -> int | None:
    """The Graph API error code of an error answer, if it has one."""
    try:
        return int(response.json()["error"]["code"])
    except (ValueError, LookupError, TypeError):
        return None


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds the answer's Retry-After header asks to wait (delta-seconds or an HTTP date), if it has one."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)
