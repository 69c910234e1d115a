"""Outbound events: proactive messages queued by agents, per-user preferences and activity, ticks, the
decisions taken on each message (with their reason and inputs), and the rendering and sending that follow."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

import msgspec

from schemas.catalog import EventCatalog
from schemas.codec import register_catalog
from schemas.envelope import Payload

Priority = Literal["urgent", "high", "medium", "low"]
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


def outbound_stream_id(tenant_id: str, user_id: str) -> str:
    """Stream id (and Kafka key) of one user's outbound state within a tenant."""
    return f"outbound:{tenant_id}:{user_id}"


class MessageData(msgspec.Struct, frozen=True, kw_only=True):
    """What a message says, structured: a type (solution_update, weekly_summary, text, ...) and its fields."""

    type: str
    fields: dict[str, Any] = {}


class MessageQueued(Payload, frozen=True, kw_only=True):
    """An agent asks for a proactive message to reach a user; the envelope's event id is the message id."""

    user_id: str
    agent_id: str
    message_data: MessageData
    priority: Priority = "medium"
    can_delay: bool = True
    requires_fresh_context: bool = False
    idempotency_key: str | None = None
    expires_at: AwareDatetime | None = None


class QuietHours(msgspec.Struct, frozen=True, kw_only=True):
    """Local wall-clock times (HH:MM) between which nothing non-urgent is sent; start == end means none."""

    start: str = "22:00"
    end: str = "08:00"


class PreferencesUpdated(Payload, frozen=True, kw_only=True):
    """A user's delivery preferences, replaced as a whole; tz_version is the tz database the API checked with."""

    user_id: str
    timezone: str = "UTC"
    quiet_hours: QuietHours = QuietHours()
    daily_limit: int = 10
    contact: str | None = None
    tz_version: str | None = None


class UserActive(Payload, frozen=True, kw_only=True):
    """The user wrote to the tenant (published by the conversation fold for a linked contact)."""

    user_id: str
    contact: str
    message_event_id: str


class UserTicked(Payload, frozen=True, kw_only=True):
    """Time passed for a user: the fold re-decides waiting messages as of the envelope's occurred_at.

    Published by the wake-up timer for a wake-up the fold asked for (`due_at`), or by an external scheduler.
    """

    user_id: str
    due_at: AwareDatetime | None = None


class WakeupScheduled(Payload, frozen=True, kw_only=True):
    """The fold wants a tick for this user at due_at (None: no tick needed any more)."""

    user_id: str
    due_at: datetime | None = None


class DecisionInputs(msgspec.Struct, frozen=True, kw_only=True):
    """What a decision was taken on: the budget, the user's local time and zone, activity and the rule applied."""

    at: datetime
    local_time: str
    local_date: str
    timezone: str
    tz_version: str
    active: bool
    last_inbound_at: datetime | None
    in_quiet_hours: bool
    quiet_hours: QuietHours
    daily_limit: int
    budget_before: int
    budget_after: int
    rule: str


class DeferredUntil(msgspec.Struct, frozen=True, kw_only=True):
    """The instant a deferred message is due: in UTC and on the user's wall clock then, with the zone."""

    at: datetime  # UTC
    local_time: str  # ISO 8601 with the offset in force then, e.g. 2026-06-02T08:00:00+02:00
    timezone: str  # IANA zone, e.g. Europe/Madrid
    abbreviation: str  # the zone's abbreviation then, e.g. CEST
    tz_version: str


class _Decision(Payload, frozen=True, kw_only=True):
    user_id: str
    message_id: str
    agent_id: str
    priority: Priority
    reason: str
    inputs: DecisionInputs


class SendOrder(msgspec.Struct, frozen=True, kw_only=True):
    """What the effect needs for one send attempt besides the user, message and agent ids."""

    contact: str | None
    message_data: MessageData
    attempt: int = 1
    check_relevance: bool = False
    queued_at: datetime
    expires_at: datetime | None = None
    superseded_by: str | None = None
    last_inbound_at: datetime | None = None
    text: str | None = None  # already rendered (a retry)


class MessageApproved(_Decision, frozen=True, kw_only=True):
    """Send now (reason: urgent, active_user, slot_available).

    `send` makes the decision its own effect request (the first attempt); events recorded before it existed have
    none and are followed by a send.requested.
    """

    send: SendOrder | None = None


class MessageDeferred(_Decision, frozen=True, kw_only=True):
    """Held until due_at, the next allowed time (reason: quiet_hours, budget_exhausted).

    deferred_until is that instant in UTC and in the user's local time (None on events recorded before it existed).
    """

    due_at: datetime
    deferred_until: DeferredUntil | None = None


class MessageReleased(_Decision, frozen=True, kw_only=True):
    """A deferred message is sent now that its slot or budget freed (reason: active_user, slot_available).

    `send` as for message.approved.
    """

    send: SendOrder | None = None


class MessageDropped(_Decision, frozen=True, kw_only=True):
    """Never sent (reason: quiet_hours, budget_exhausted, expired, max_deferral, stale, duplicate)."""


class SendRequested(SendOrder, Payload, frozen=True, kw_only=True):
    """The effect worker should check relevance (when asked), render and send this message: one attempt.

    Emitted for a retry; a first attempt is requested by its message.approved or message.released itself.
    """

    user_id: str
    message_id: str
    agent_id: str

    @classmethod
    def of(cls, order: SendOrder, *, user_id: str, message_id: str, agent_id: str) -> SendRequested:
        """The request of the attempt `order` describes, for this user, message and agent."""
        return cls(user_id=user_id, message_id=message_id, agent_id=agent_id, **msgspec.structs.asdict(order))


class RelevanceChecked(Payload, frozen=True, kw_only=True):
    """Whether a released message still made sense; a stale one is dropped and sends nothing."""

    user_id: str
    message_id: str
    relevant: bool
    method: Literal["rules", "llm"]
    reason: str
    fallback_reason: str | None = None


class Rendering(msgspec.Struct, frozen=True, kw_only=True):
    """The prose a structured message became, and how."""

    text: str
    method: Literal["template", "llm"]
    fallback_reason: str | None = None


class MessageRendered(Payload, frozen=True, kw_only=True):
    """The prose a structured message became (recorded before message.sent and send.failed carried it)."""

    user_id: str
    message_id: str
    text: str
    method: Literal["template", "llm"]
    fallback_reason: str | None = None


class MessageSent(Payload, frozen=True, kw_only=True):
    """The sender accepted the message; whatsapp_message_id tracks it."""

    user_id: str
    message_id: str
    attempt: int
    whatsapp_message_id: str
    sender: str
    rendered: Rendering | None = None  # the rendering of this attempt; None when it sent an earlier one


class SendFailed(Payload, frozen=True, kw_only=True):
    """One send attempt failed; a retryable one is tried again after a backoff, up to the attempt limit."""

    user_id: str
    message_id: str
    attempt: int
    reason: str
    retryable: bool
    sender: str
    rendered: Rendering | None = None  # as for message.sent: a retry sends this text


DecisionType = Literal["approved", "deferred", "released", "dropped"]
DECISION_EVENTS: dict[str, type[_Decision]] = {
    "outbound.message.approved": MessageApproved,
    "outbound.message.deferred": MessageDeferred,
    "outbound.message.released": MessageReleased,
    "outbound.message.dropped": MessageDropped,
}

OUTBOUND_EVENTS: dict[str, type[Payload]] = {
    "outbound.message.queued": MessageQueued,
    "outbound.preferences.updated": PreferencesUpdated,
    "outbound.user.active": UserActive,
    "outbound.user.ticked": UserTicked,
    "outbound.wakeup.scheduled": WakeupScheduled,
    **DECISION_EVENTS,
    "outbound.send.requested": SendRequested,
    "outbound.relevance.checked": RelevanceChecked,
    "outbound.message.rendered": MessageRendered,
    "outbound.message.sent": MessageSent,
    "outbound.send.failed": SendFailed,
}

# Producers may queue messages and post ticks (an external scheduler); preferences go through
# PUT /v1/users/{user_id}/preferences, which checks the zone and hours first.
OUTBOUND_INGESTIBLE: frozenset[str] = frozenset({"outbound.message.queued", "outbound.user.ticked"})

CATALOG = register_catalog(EventCatalog(
    domain="outbound",
    events=OUTBOUND_EVENTS,
    ingestible=OUTBOUND_INGESTIBLE,
    stream_id=lambda tenant_id, payload: outbound_stream_id(tenant_id, payload.user_id),  # type: ignore[attr-defined]
))
