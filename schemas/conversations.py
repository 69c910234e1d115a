"""Conversation events: inbound WhatsApp messages, routing, replies, delivery statuses."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal, get_args

import msgspec

from schemas.catalog import EventCatalog
from schemas.codec import register_catalog
from schemas.envelope import Payload

Lane = Literal["info", "commerce", "support"]
LANES: tuple[Lane, ...] = get_args(Lane)

MessageType = Literal[
    "text", "button", "interactive", "image", "audio", "video", "document",
    "location", "contacts", "sticker", "reaction", "unsupported",
]
ROUTABLE_TYPES: frozenset[str] = frozenset({"text", "button", "interactive"})

DeliveryStatus = Literal["sent", "delivered", "read", "failed"]


def conversation_stream_id(tenant_id: str, contact: str) -> str:
    """Stream id (and Kafka key) of one contact's conversation within a tenant."""
    return f"conversation:{tenant_id}:{contact}"


class Media(msgspec.Struct, frozen=True, kw_only=True):
    """A media attachment as WhatsApp describes it (the bytes stay at Meta)."""

    id: str
    mime_type: str | None = None
    sha256: str | None = None
    filename: str | None = None


class Location(msgspec.Struct, frozen=True, kw_only=True):
    """A shared location."""

    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None


class MessageReceived(Payload, frozen=True, kw_only=True):
    """An inbound message from a contact; routable when text, button or interactive reply."""

    contact: str
    whatsapp_message_id: str
    message_type: MessageType
    contact_name: str | None = None
    phone_number_id: str | None = None
    text: str | None = None
    reply_id: str | None = None
    media: Media | None = None
    location: Location | None = None
    reaction_to: str | None = None
    context_message_id: str | None = None


class SessionStarted(Payload, frozen=True, kw_only=True):
    """A new session began for a contact (first message, or after inactivity expiry)."""

    session_id: uuid.UUID
    contact: str
    previous_session_id: uuid.UUID | None = None


class SessionExpired(Payload, frozen=True, kw_only=True):
    """A session ended because the contact was inactive longer than the timeout."""

    session_id: uuid.UUID
    contact: str
    last_activity_at: datetime


class RoutingRequested(Payload, frozen=True, kw_only=True):
    """The router effect should pick a lane for this inbound message and answer it."""

    session_id: uuid.UUID
    contact: str
    message_event_id: uuid.UUID
    text: str


class MessageRouted(Payload, frozen=True, kw_only=True):
    """The lane chosen for an inbound message and how it was chosen."""

    session_id: uuid.UUID
    contact: str
    message_event_id: uuid.UUID
    lane: Lane
    method: Literal["rules", "llm"]
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    fallback_reason: str | None = None


class TicketOpened(Payload, frozen=True, kw_only=True):
    """The support agent opened a ticket for an inbound message."""

    session_id: uuid.UUID
    contact: str
    message_event_id: uuid.UUID
    ticket_id: str
    summary: str


class ReplyRequested(Payload, frozen=True, kw_only=True):
    """An agent wants this text sent to the contact."""

    session_id: uuid.UUID
    contact: str
    in_reply_to: uuid.UUID
    lane: Lane
    text: str


class ReplySent(Payload, frozen=True, kw_only=True):
    """A requested reply was handed to the sender; whatsapp_message_id tracks its statuses."""

    session_id: uuid.UUID
    contact: str
    reply_event_id: uuid.UUID
    whatsapp_message_id: str
    sender: str


class ReplyFailed(Payload, frozen=True, kw_only=True):
    """A requested reply could not be sent."""

    session_id: uuid.UUID
    contact: str
    reply_event_id: uuid.UUID
    reason: str
    sender: str


class MessageAnswered(Payload, frozen=True, kw_only=True):
    """One effect run's outcome for an inbound message routed without a model: lane, ticket, reply and its send.

    It stands for message.routed, ticket.opened, reply.requested and reply.sent (or reply.failed) of a routing that
    needed no model call: whatsapp_message_id is set when the reply was handed to the sender, failure_reason when not.
    """

    session_id: uuid.UUID
    contact: str
    message_event_id: uuid.UUID
    lane: Lane
    method: Literal["rules"] = "rules"
    matched: tuple[str, ...] = ()
    ticket_id: str | None = None
    reply_text: str
    sender: str
    whatsapp_message_id: str | None = None
    failure_reason: str | None = None


class StatusUpdated(Payload, frozen=True, kw_only=True):
    """WhatsApp reported a delivery status for a message Baton sent."""

    contact: str
    whatsapp_message_id: str
    status: DeliveryStatus
    error_code: int | None = None
    error_title: str | None = None


class ContactLinked(Payload, frozen=True, kw_only=True):
    """The outbound side says this contact is a user: inbound messages from it make that user active."""

    contact: str
    user_id: str


class ContactUnlinked(Payload, frozen=True, kw_only=True):
    """The user no longer writes from this contact; a link to another user is left as it is."""

    contact: str
    user_id: str


CONVERSATION_EVENTS: dict[str, type[Payload]] = {
    "conversation.message.received": MessageReceived,
    "conversation.session.started": SessionStarted,
    "conversation.session.expired": SessionExpired,
    "conversation.routing.requested": RoutingRequested,
    "conversation.message.routed": MessageRouted,
    "conversation.ticket.opened": TicketOpened,
    "conversation.reply.requested": ReplyRequested,
    "conversation.reply.sent": ReplySent,
    "conversation.reply.failed": ReplyFailed,
    "conversation.message.answered": MessageAnswered,
    "conversation.status.updated": StatusUpdated,
    "conversation.contact.linked": ContactLinked,
    "conversation.contact.unlinked": ContactUnlinked,
}

# Facts from outside that producers may publish; everything else is emitted by Baton itself.
CONVERSATION_INGESTIBLE: frozenset[str] = frozenset(
    {"conversation.message.received", "conversation.status.updated"}
)

CATALOG = register_catalog(EventCatalog(
    domain="conversations",
    events=CONVERSATION_EVENTS,
    ingestible=CONVERSATION_INGESTIBLE,
    stream_id=lambda tenant_id, payload: conversation_stream_id(tenant_id, payload.contact),  # type: ignore[attr-defined]
))
