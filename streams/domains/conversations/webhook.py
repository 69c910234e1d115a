"""WhatsApp Cloud API webhooks: signature check, subscription handshake, and normalisation to envelopes."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, get_args

import msgspec
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import PlainTextResponse

from agents.tenants import Tenants
from schemas import Envelope, Payload, new_event, source_event_id
from schemas.conversations import (
    DeliveryStatus,
    Location,
    Media,
    MessageReceived,
    MessageType,
    StatusUpdated,
)
from schemas.errors import locate
from streams.edge import check_json, raw_body
from streams.errors import StreamsError
from streams.ingest import JsonBody, parse_json, publish
from streams.ratelimit import TokenBucket, rate_limited
from streams.settings import Settings

SIGNATURE_PREFIX = "sha256="
MEDIA_TYPES: frozenset[str] = frozenset({"image", "audio", "video", "document", "sticker"})
# Message types Baton records with their content; any other type is recorded as "unsupported".
_WITH_BODY: frozenset[str] = MEDIA_TYPES | {"text", "button", "interactive", "location", "contacts", "reaction"}
DELIVERY_STATUSES: frozenset[str] = frozenset(get_args(DeliveryStatus))


class WebhookError(StreamsError, ValueError):
    """A webhook body that is not a well-formed WhatsApp Cloud API delivery."""


class UnknownPhoneNumber(WebhookError):
    """A delivery for a business number that no tenant owns."""

    def __init__(self, path: str, phone_number_id: str) -> None:
        super().__init__(f"{path}: unknown phone_number_id {phone_number_id!r} (no tenant owns it)")
        self.phone_number_id = phone_number_id


@dataclass(frozen=True)
class Normalized:
    """The envelopes a delivery becomes, and what it held that Baton does not record (with why)."""

    envelopes: list[Envelope] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def sign(app_secret: str, body: bytes) -> str:
    """The X-Hub-Signature-256 header value Meta sends for this body."""
    return SIGNATURE_PREFIX + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(app_secret: str, body: bytes, header: str | None) -> bool:
    """True when the X-Hub-Signature-256 header is the app secret's HMAC of the exact body."""
    if not header or not header.startswith(SIGNATURE_PREFIX):
        return False
    return hmac.compare_digest(sign(app_secret, body).encode(), header.encode("utf-8", "replace"))


def verify_subscription(params: Mapping[str, str], verify_token: str) -> str | None:
    """The hub.challenge to echo when the GET handshake is a subscribe with our verify token."""
    challenge = params.get("hub.challenge")
    token = params.get("hub.verify_token", "")
    if params.get("hub.mode") != "subscribe" or not challenge:
        return None
    return challenge if hmac.compare_digest(token.encode(), verify_token.encode()) else None


# Webhook shapes as Meta documents them; fields Baton does not use are ignored.
UnixSeconds = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,11}$")]


class _Text(msgspec.Struct, frozen=True):
    body: str


class _Button(msgspec.Struct, frozen=True):
    text: str
    payload: str | None = None


class _Reply(msgspec.Struct, frozen=True):
    id: str
    title: str


class _Interactive(msgspec.Struct, frozen=True):
    type: str
    button_reply: _Reply | None = None
    list_reply: _Reply | None = None


class _Media(msgspec.Struct, frozen=True):
    id: str
    mime_type: str | None = None
    sha256: str | None = None
    filename: str | None = None
    caption: str | None = None


class _Location(msgspec.Struct, frozen=True):
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None


class _Name(msgspec.Struct, frozen=True):
    formatted_name: str | None = None


class _SharedContact(msgspec.Struct, frozen=True):
    name: _Name | None = None


class _Reaction(msgspec.Struct, frozen=True):
    message_id: str
    emoji: str | None = None


class _Context(msgspec.Struct, frozen=True):
    id: str | None = None


class _Message(msgspec.Struct, frozen=True):
    sender: str = msgspec.field(name="from")
    id: str
    timestamp: UnixSeconds
    type: str
    context: _Context | None = None
    text: _Text | None = None
    button: _Button | None = None
    interactive: _Interactive | None = None
    image: _Media | None = None
    audio: _Media | None = None
    video: _Media | None = None
    document: _Media | None = None
    sticker: _Media | None = None
    location: _Location | None = None
    contacts: list[_SharedContact] | None = None
    reaction: _Reaction | None = None


class _StatusError(msgspec.Struct, frozen=True):
    code: int
    title: str | None = None


class _Status(msgspec.Struct, frozen=True):
    id: str
    status: str
    timestamp: UnixSeconds
    recipient_id: str
    errors: list[_StatusError] = []


class _Profile(msgspec.Struct, frozen=True):
    name: str | None = None


class _Contact(msgspec.Struct, frozen=True):
    wa_id: str
    profile: _Profile | None = None


class _Metadata(msgspec.Struct, frozen=True):
    phone_number_id: str


class _Value(msgspec.Struct, frozen=True):
    metadata: _Metadata
    contacts: list[_Contact] = []
    messages: list[_Message] = []
    statuses: list[_Status] = []


class _Change(msgspec.Struct, frozen=True):
    field: str
    value: dict[str, Any]


class _Entry(msgspec.Struct, frozen=True):
    changes: list[_Change]


class _Delivery(msgspec.Struct, frozen=True):
    object: str
    entry: list[_Entry]


def normalize(payload: dict[str, Any], tenants: Tenants, received_at: datetime) -> Normalized:
    """Turn one webhook delivery into envelopes; WebhookError (nothing accepted) if any part is malformed."""
    delivery = _convert(payload, _Delivery, "")
    if delivery.object != "whatsapp_business_account":
        raise WebhookError(f"object: expected 'whatsapp_business_account', got {delivery.object!r}")
    result = Normalized()
    for i, entry in enumerate(delivery.entry):
        for j, change in enumerate(entry.changes):
            path = f"entry[{i}].changes[{j}]"
            if change.field != "messages":
                result.skipped.append(f"{path}: field {change.field!r} is not a messages change")
                continue
            _normalize_value(_convert(change.value, _Value, f"{path}.value"), f"{path}.value",
                             tenants, received_at, result)
    return result


def _normalize_value(value: _Value, path: str, tenants: Tenants, received_at: datetime,
                     result: Normalized) -> None:
    phone_number_id = value.metadata.phone_number_id
    tenant = tenants.for_phone_number_id(phone_number_id)
    if tenant is None:
        raise UnknownPhoneNumber(f"{path}.metadata.phone_number_id", phone_number_id)
    names = {c.wa_id: c.profile.name for c in value.contacts if c.profile}
    # Meta's `from` may differ from the contact's wa_id (e.g. Brazilian numbers); one contact is the sender.
    only_name = names.get(value.contacts[0].wa_id) if len(value.contacts) == 1 else None
    for k, message in enumerate(value.messages):
        payload = _message_payload(message, f"{path}.messages[{k}]", phone_number_id,
                                   names.get(message.sender, only_name))
        result.envelopes.append(
            _envelope(tenant.id, "whatsapp", message.id, payload, message.timestamp, received_at)
        )
    for k, status in enumerate(value.statuses):
        if status.status not in DELIVERY_STATUSES:
            result.skipped.append(f"{path}.statuses[{k}]: status {status.status!r} is not a delivery status")
            continue
        error = status.errors[0] if status.errors else None
        payload = StatusUpdated(
            contact=status.recipient_id,
            whatsapp_message_id=status.id,
            status=status.status,  # type: ignore[arg-type]
            error_code=error.code if error else None,
            error_title=error.title if error else None,
        )
        result.envelopes.append(
            _envelope(tenant.id, "whatsapp-status", f"{status.id}:{status.status}", payload,
                      status.timestamp, received_at)
        )


def _message_payload(message: _Message, path: str, phone_number_id: str,
                     contact_name: str | None) -> MessageReceived:
    kind, fields = _message_fields(message, path)
    return MessageReceived(
        contact=message.sender,
        whatsapp_message_id=message.id,
        message_type=kind,
        contact_name=contact_name,
        phone_number_id=phone_number_id,
        context_message_id=message.context.id if message.context else None,
        **fields,
    )


def _message_fields(message: _Message, path: str) -> tuple[MessageType, dict[str, Any]]:
    if message.type not in _WITH_BODY:
        return "unsupported", {}
    body = getattr(message, message.type)
    if body is None:
        raise WebhookError(f"{path}: type {message.type!r} without its {message.type!r} object")
    match message.type:
        case "text":
            return "text", {"text": body.body}
        case "button":
            return "button", {"text": body.text, "reply_id": body.payload}
        case "interactive":
            if body.type not in ("button_reply", "list_reply"):
                return "unsupported", {}
            reply = getattr(body, body.type)
            if reply is None:
                raise WebhookError(f"{path}.interactive: type {body.type!r} without its {body.type!r} object")
            return "interactive", {"text": reply.title, "reply_id": reply.id}
        case "location":
            return "location", {"location": Location(latitude=body.latitude, longitude=body.longitude,
                                                     name=body.name, address=body.address)}
        case "contacts":
            shared = [c.name.formatted_name for c in body if c.name and c.name.formatted_name]
            return "contacts", {"text": ", ".join(shared) or None}
        case "reaction":
            return "reaction", {"text": body.emoji or None, "reaction_to": body.message_id}
        case _:
            media = Media(id=body.id, mime_type=body.mime_type, sha256=body.sha256, filename=body.filename)
            return message.type, {"text": body.caption, "media": media}  # type: ignore[return-value]


def _envelope(tenant_id: str, source: str, source_id: str, payload: Payload, timestamp: str,
              received_at: datetime) -> Envelope:
    return new_event(
        tenant_id, payload, event_id=source_event_id(tenant_id, source, source_id),
        occurred_at=datetime.fromtimestamp(int(timestamp), UTC), recorded_at=received_at, actor="whatsapp",
    )


def _convert(document: Any, kind: type, path: str) -> Any:
    try:
        return msgspec.convert(document, kind)
    except msgspec.ValidationError as exc:
        raise WebhookError(locate(str(exc), path)) from None


def _phone_number_ids(document: Any) -> list[str]:
    """The business numbers an (unverified) delivery names, read leniently: normalize validates it later."""
    numbers: list[str] = []
    entries = document.get("entry") if isinstance(document, dict) else None
    for entry in entries if isinstance(entries, list) else ():
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else ():
            value = change.get("value") if isinstance(change, dict) else None
            metadata = value.get("metadata") if isinstance(value, dict) else None
            number = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
            if isinstance(number, str) and number not in numbers:
                numbers.append(number)
    return numbers


def _signer(settings: Settings, tenants: Tenants, body: bytes, header: str | None) -> str | None:
    """The app secret (global, or a tenant's own) whose signature the header carries for these exact bytes, or None."""
    candidates = {settings.whatsapp_app_secret.get_secret_value()}
    candidates.update(t.whatsapp_app_secret for t in tenants.by_id.values() if t.whatsapp_app_secret)
    matching = [secret for secret in candidates if verify_signature(secret, body, header)]
    return matching[0] if matching else None


def _app_secret(settings: Settings, tenants: Tenants, phone_number_id: str) -> str:
    tenant = tenants.for_phone_number_id(phone_number_id)
    if tenant is not None and tenant.whatsapp_app_secret:
        return tenant.whatsapp_app_secret
    return settings.whatsapp_app_secret.get_secret_value()


def _within_webhook_limits(state: Any, numbers: list[str]) -> None:
    """429 unless every business number of the delivery has a token left (taken only when all do)."""
    if getattr(state, "webhook_limit", None) is None:
        state.webhook_limit = TokenBucket(state.settings.webhook_rate_per_s, state.settings.webhook_burst)
    wait = state.webhook_limit.take_all(numbers, time.monotonic())
    if wait is not None:
        raise rate_limited(f"phone_number_id {', '.join(numbers)}", wait)


def webhook_router() -> APIRouter:
    """Meta's subscription handshake and signed deliveries at /v1/webhooks/whatsapp."""
    router = APIRouter(tags=["ingest"])
    router.add_api_route("/v1/webhooks/whatsapp", verify_whatsapp, methods=["GET"], response_class=PlainTextResponse)
    router.add_api_route("/v1/webhooks/whatsapp", receive_whatsapp, methods=["POST"])
    return router


async def verify_whatsapp(request: Request) -> PlainTextResponse:
    """Meta's subscription handshake: echo hub.challenge when hub.verify_token matches."""
    challenge = verify_subscription(
        request.query_params, request.app.state.settings.whatsapp_verify_token.get_secret_value()
    )
    if challenge is None:
        raise HTTPException(403, "verification failed: needs hub.mode=subscribe, the configured "
                                 "hub.verify_token and a hub.challenge")
    return PlainTextResponse(challenge)


@raw_body
async def receive_whatsapp(request: Request, body: JsonBody) -> dict[str, Any]:
    """A signed webhook delivery: validated whole and published, then 200 so Meta does not retry.

    The signature is checked on the exact bytes before anything parses them: an unsigned body is never read as
    JSON. It must then be the secret of the app owning the delivery's business numbers (a tenant's own, else the
    global one). On 503 part of it may be stored; Meta's retry carries the same message ids, hence the same ids.
    """
    state = request.app.state
    header = request.headers.get("x-hub-signature-256")
    not_signed = HTTPException(401, "missing X-Hub-Signature-256 header" if header is None
                               else "X-Hub-Signature-256 does not match the body")
    signer = _signer(state.settings, state.tenants, body, header)
    if signer is None:
        raise not_signed
    if (found := check_json(body)) is not None:
        raise HTTPException(422, [found])
    document = parse_json(body)
    numbers = _phone_number_ids(document)
    secrets = {_app_secret(state.settings, state.tenants, number) for number in numbers}
    if len(secrets) > 1:
        raise HTTPException(401, "the delivery names business numbers of different Meta apps; "
                                 "no single app secret can have signed it")
    secret = secrets.pop() if secrets else state.settings.whatsapp_app_secret.get_secret_value()
    if not hmac.compare_digest(secret.encode(), signer.encode()):  # signed, but by another app than the numbers'
        raise not_signed
    try:
        normalized = normalize(document, state.tenants, datetime.now(UTC))
    except WebhookError as exc:
        raise HTTPException(422, str(exc)) from None
    _within_webhook_limits(state, numbers)
    await publish(state.publisher, normalized.envelopes)
    return {"accepted": len(normalized.envelopes), "skipped": normalized.skipped}
