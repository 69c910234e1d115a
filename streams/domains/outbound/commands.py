"""Outbound write side: `queue_message(...)` for Python producers, `POST /v1/outbound` and
`PUT /v1/users/{user_id}/preferences`; both validate everything before anything reaches the log."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from agents.outbound.fold import parse_hhmm
from agents.zones import TZ_VERSION, UnknownZone, zone
from schemas import Envelope, UnstorableEvent, new_event, source_event_id, to_utc
from schemas.outbound import (
    MessageData,
    MessageQueued,
    PreferencesUpdated,
    Priority,
    QuietHours,
)
from streams.auth import Tenant
from streams.ingest import publish
from streams.publisher import Publisher

Id = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\s/]+$")]


def message_id_for(tenant_id: str, user_id: str, idempotency_key: str | None) -> uuid.UUID:
    """The id of a queued message: derived from its idempotency key when it has one, so a retry gives the same."""
    if idempotency_key is None:
        return uuid.uuid4()
    return source_event_id(tenant_id, "outbound", f"{user_id}:{idempotency_key}")


def queued_event(tenant_id: str, *, user_id: str, agent_id: str, message_data: MessageData, priority: Priority,
                 can_delay: bool, requires_fresh_context: bool, idempotency_key: str | None,
                 expires_at: datetime | None, occurred_at: datetime | None, actor: str) -> Envelope:
    """The `outbound.message.queued` envelope; its event id is the message id."""
    now = datetime.now(UTC)
    payload = MessageQueued(user_id=user_id, agent_id=agent_id, message_data=message_data, priority=priority,
                            can_delay=can_delay, requires_fresh_context=requires_fresh_context,
                            idempotency_key=idempotency_key,
                            expires_at=to_utc(expires_at, "expires_at") if expires_at else None)
    return new_event(tenant_id, payload, event_id=message_id_for(tenant_id, user_id, idempotency_key),
                     occurred_at=to_utc(occurred_at or now, "occurred_at"), recorded_at=now, actor=actor)


async def queue_message(publisher: Publisher, tenant_id: str, *, user_id: str, agent_id: str,
                        message_data: MessageData | dict[str, Any], priority: Priority = "medium",
                        can_delay: bool = True, requires_fresh_context: bool = False,
                        idempotency_key: str | None = None, expires_at: datetime | None = None,
                        occurred_at: datetime | None = None, actor: str = "publisher") -> uuid.UUID:
    """Queue one proactive message and return its id once the broker has it.

    `message_data` is a MessageData or a dict with a `type` and the message's fields. The same idempotency key
    gives the same id (and one message); `occurred_at` is the event time (default now).
    """
    if isinstance(message_data, dict):
        message_data = MessageIn.data_of(message_data)
    envelope = queued_event(tenant_id, user_id=user_id, agent_id=agent_id, message_data=message_data,
                            priority=priority, can_delay=can_delay, requires_fresh_context=requires_fresh_context,
                            idempotency_key=idempotency_key, expires_at=expires_at, occurred_at=occurred_at,
                            actor=actor)
    await publisher.publish([envelope])
    return envelope.event_id


class MessageIn(BaseModel):
    """A proactive message to queue."""

    model_config = ConfigDict(extra="forbid")

    user_id: Id
    agent_id: Id
    message_data: dict[str, Any] = Field(description="A `type` (solution_update, weekly_summary, payment_required, "
                                                     "text, ...) plus the message's fields.")
    priority: Priority = "medium"
    can_delay: bool = True
    requires_fresh_context: bool = False
    idempotency_key: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    expires_at: AwareDatetime | None = None
    occurred_at: AwareDatetime | None = Field(None, description="Event time; default now.")

    @field_validator("message_data")
    @classmethod
    def _has_type(cls, value: dict[str, Any]) -> dict[str, Any]:
        cls.data_of(value)
        return value

    @staticmethod
    def data_of(value: dict[str, Any]) -> MessageData:
        kind = value.get("type")
        if not isinstance(kind, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", kind):
            raise ValueError("needs a `type`: a lower-case name such as solution_update")
        return MessageData(type=kind, fields={k: v for k, v in value.items() if k != "type"})


class MessageAccepted(BaseModel):
    """The queued message's id (the same for the same idempotency key)."""

    message_id: uuid.UUID


class QuietHoursIn(BaseModel):
    """Local times HH:MM; start == end means no quiet hours."""

    model_config = ConfigDict(extra="forbid")

    start: str = "22:00"
    end: str = "08:00"

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        parse_hhmm(value)
        return value


class PreferencesIn(BaseModel):
    """A user's delivery preferences, replaced as a whole."""

    model_config = ConfigDict(extra="forbid")

    timezone: str = Field("UTC", description="IANA zone, e.g. Europe/Madrid.")
    quiet_hours: QuietHoursIn = QuietHoursIn()
    daily_limit: int = Field(10, ge=0, le=10_000)
    contact: Annotated[str, Field(pattern=r"^\+?[0-9]{5,20}$")] | None = Field(
        None, description="The WhatsApp number the user writes from: their inbound messages make them active.")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            zone(value)
        except UnknownZone as exc:
            raise ValueError(str(exc)) from None
        return value


class PreferencesAccepted(BaseModel):
    """The preferences event and the tz database version it was checked with."""

    event_id: uuid.UUID
    tz_version: str


def command_router() -> APIRouter:
    """Write routes of the outbound domain."""
    router = APIRouter(tags=["outbound"], responses={401: {"description": "Missing or invalid bearer token"}})

    @router.post("/v1/outbound", status_code=202, response_model=MessageAccepted, summary="Queue a proactive message")
    async def queue(body: MessageIn, tenant: Tenant, request: Request) -> MessageAccepted:
        """Queue a message for a user; 202 once it is on the log. The same idempotency key gives the same id."""
        try:
            envelope = queued_event(tenant, user_id=body.user_id, agent_id=body.agent_id,
                                    message_data=MessageIn.data_of(body.message_data), priority=body.priority,
                                    can_delay=body.can_delay, requires_fresh_context=body.requires_fresh_context,
                                    idempotency_key=body.idempotency_key, expires_at=body.expires_at,
                                    occurred_at=body.occurred_at, actor="api")
        except UnstorableEvent as exc:
            raise HTTPException(422, str(exc)) from None
        await publish(request.app.state.publisher, [envelope])
        return MessageAccepted(message_id=envelope.event_id)

    @router.put("/v1/users/{user_id}/preferences", status_code=202, response_model=PreferencesAccepted,
                summary="Set a user's delivery preferences")
    async def preferences(user_id: Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[^\s/]+$")],
                          body: PreferencesIn, tenant: Tenant, request: Request) -> PreferencesAccepted:
        """Zone, quiet hours, daily limit and contact; each change is an event the user's fold applies in order."""
        now = datetime.now(UTC)
        payload = PreferencesUpdated(
            user_id=user_id, timezone=body.timezone,
            quiet_hours=QuietHours(start=body.quiet_hours.start, end=body.quiet_hours.end),
            daily_limit=body.daily_limit, contact=body.contact, tz_version=TZ_VERSION,
        )
        envelope = new_event(tenant, payload, event_id=uuid.uuid4(), occurred_at=now, recorded_at=now, actor="api")
        await publish(request.app.state.publisher, [envelope])
        return PreferencesAccepted(event_id=envelope.event_id, tz_version=TZ_VERSION)

    return router

