"""The codec at its edges: unknown types and versions, upcasting, tolerance, invalid envelopes, round trips."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

import schemas.codec
import schemas.conversations as conv
from schemas import (
    DecodeError,
    Envelope,
    UnknownEventType,
    UnsupportedSchemaVersion,
    decode,
    encode,
    new_event,
    payload_from_builtins,
    registration,
)
from schemas.upcasters import UPCASTERS

Bump = Callable[[str, Callable[[dict[str, Any]], dict[str, Any]] | None], int]


@pytest.fixture
def bump_version(monkeypatch: pytest.MonkeyPatch) -> Iterator[Bump]:
    """bump(type, upcaster): the type's current version goes up by one, upcaster lifting the previous one.

    The only place that knows how the codec stores versions; everything is restored after the test.
    """
    def bump(event_type: str, upcaster: Callable[[dict[str, Any]], dict[str, Any]] | None) -> int:
        reg = registration(event_type)
        bumped = reg._replace(version=reg.version + 1)
        monkeypatch.setitem(schemas.codec._REGISTRY, event_type, bumped)
        monkeypatch.setitem(schemas.codec._BY_CLASS, reg.payload, bumped)
        if upcaster is not None:
            monkeypatch.setitem(UPCASTERS, (event_type, reg.version), upcaster)
        return reg.version

    yield bump


T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SESSION = uuid.UUID("00000000-0000-4000-8000-000000000001")
MESSAGE = uuid.UUID("00000000-0000-4000-8000-000000000002")
REPLY = uuid.UUID("00000000-0000-4000-8000-000000000003")
CONTACT = "34600111222"

# One instance of every conversation event type, with every optional field that has a nested shape set.
EXAMPLES: dict[str, conv.Payload] = {
    "conversation.message.received": conv.MessageReceived(
        contact=CONTACT, whatsapp_message_id="wamid.1", message_type="location", contact_name="Ana Núñez",
        phone_number_id="109876543210", text="¿aquí?", reply_id="opt-1",
        media=conv.Media(id="m1", mime_type="image/jpeg", sha256="aGFzaA==", filename="a.jpg"),
        location=conv.Location(latitude=40.4168, longitude=-3.7038, name="Sol", address="Madrid"),
        reaction_to="wamid.0", context_message_id="wamid.ctx"),
    "conversation.session.started": conv.SessionStarted(session_id=SESSION, contact=CONTACT,
                                                        previous_session_id=MESSAGE),
    "conversation.session.expired": conv.SessionExpired(session_id=SESSION, contact=CONTACT, last_activity_at=T0),
    "conversation.routing.requested": conv.RoutingRequested(session_id=SESSION, contact=CONTACT,
                                                            message_event_id=MESSAGE, text="precio"),
    "conversation.message.routed": conv.MessageRouted(
        session_id=SESSION, contact=CONTACT, message_event_id=MESSAGE, lane="commerce", method="llm",
        model="claude-haiku-4-5", input_tokens=120, output_tokens=3, cost_usd=0.000135, fallback_reason=None),
    "conversation.ticket.opened": conv.TicketOpened(session_id=SESSION, contact=CONTACT, message_event_id=MESSAGE,
                                                    ticket_id="T-1", summary="pedido roto"),
    "conversation.reply.requested": conv.ReplyRequested(session_id=SESSION, contact=CONTACT, in_reply_to=MESSAGE,
                                                        lane="support", text="Lo sentimos 🙏"),
    "conversation.reply.sent": conv.ReplySent(session_id=SESSION, contact=CONTACT, reply_event_id=REPLY,
                                              whatsapp_message_id="wamid.out", sender="whatsapp"),
    "conversation.reply.failed": conv.ReplyFailed(session_id=SESSION, contact=CONTACT, reply_event_id=REPLY,
                                                  reason="whatsapp 400", sender="whatsapp"),
    "conversation.message.answered": conv.MessageAnswered(
        session_id=SESSION, contact=CONTACT, message_event_id=REPLY, lane="support", matched=("roto",),
        ticket_id="TKT-1", reply_text="Hemos abierto el ticket TKT-1.", sender="whatsapp",
        whatsapp_message_id="wamid.out"),
    "conversation.status.updated": conv.StatusUpdated(contact=CONTACT, whatsapp_message_id="wamid.out",
                                                      status="failed", error_code=131047, error_title="Re-engage"),
    "conversation.contact.linked": conv.ContactLinked(contact=CONTACT, user_id="user-1"),
    "conversation.contact.unlinked": conv.ContactUnlinked(contact=CONTACT, user_id="user-1"),
}


def envelope_of(payload: conv.Payload) -> Envelope:
    return new_event("acme", payload, event_id=uuid.uuid5(MESSAGE, type(payload).__name__), occurred_at=T0,
                     recorded_at=T0, actor="test", causation_id=MESSAGE)


def document(example: conv.Payload, /, **changes: Any) -> dict[str, Any]:
    """The JSON document of an envelope, top-level keys replaced (or removed when the value is ...)."""
    doc = msgspec.json.decode(encode(envelope_of(example)))
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not ...}


def raw(doc: dict[str, Any]) -> bytes:
    return msgspec.json.encode(doc)


def test_examples_cover_every_conversation_type() -> None:
    assert set(EXAMPLES) == set(conv.CONVERSATION_EVENTS)
    assert all(type(payload) is conv.CONVERSATION_EVENTS[name] for name, payload in EXAMPLES.items())


@pytest.mark.parametrize("event_type", sorted(EXAMPLES))
def test_every_conversation_type_round_trips(event_type: str) -> None:
    envelope = envelope_of(EXAMPLES[event_type])
    assert envelope.type == event_type
    again = decode(encode(envelope))
    assert again == envelope and type(again.payload) is type(envelope.payload)
    assert encode(again) == encode(envelope)


def test_unknown_type_is_named() -> None:
    with pytest.raises(UnknownEventType) as caught:
        decode(raw(document(EXAMPLES["conversation.ticket.opened"], type="conversation.ticket.reopened")))
    assert caught.value.event_type == "conversation.ticket.reopened"
    assert "conversation.ticket.reopened" in str(caught.value)
    assert isinstance(caught.value, DecodeError)  # one except clause catches every bad record


def test_unknown_type_from_builtins_is_named() -> None:
    with pytest.raises(UnknownEventType, match="outbound.message.teleported"):
        payload_from_builtins("outbound.message.teleported", 1, {})


def test_version_above_current_is_unsupported() -> None:
    current = registration("conversation.ticket.opened").version
    with pytest.raises(UnsupportedSchemaVersion) as caught:
        decode(raw(document(EXAMPLES["conversation.ticket.opened"], schema_version=current + 1)))
    assert (caught.value.event_type, caught.value.version) == ("conversation.ticket.opened", current + 1)
    assert f"schema_version {current + 1}" in str(caught.value) and "conversation.ticket.opened" in str(caught.value)


def test_old_version_is_upcast_to_the_current_payload(bump_version: Bump) -> None:
    def title_to_summary(doc: dict[str, Any]) -> dict[str, Any]:
        doc = dict(doc)
        doc["summary"] = doc.pop("title").strip()
        return doc

    old = bump_version("conversation.ticket.opened", title_to_summary)
    payload = msgspec.to_builtins(EXAMPLES["conversation.ticket.opened"])
    del payload["summary"]
    payload["title"] = "  pedido roto  "
    envelope = decode(raw(document(EXAMPLES["conversation.ticket.opened"], schema_version=old, payload=payload)))

    assert envelope.payload == EXAMPLES["conversation.ticket.opened"]
    assert envelope.schema_version == old + 1  # decoded envelopes carry the current version
    # A current-version document decodes directly; the upcaster is not applied to it.
    current = decode(raw(document(EXAMPLES["conversation.ticket.opened"], schema_version=old + 1)))
    assert current.payload == EXAMPLES["conversation.ticket.opened"]


def test_bumped_version_without_an_upcaster_is_unsupported(bump_version: Bump) -> None:
    old = bump_version("conversation.ticket.opened", None)
    with pytest.raises(UnsupportedSchemaVersion, match=f"schema_version {old} "):
        decode(raw(document(EXAMPLES["conversation.ticket.opened"], schema_version=old)))


def test_upcast_result_is_still_validated(bump_version: Bump) -> None:
    old = bump_version("conversation.ticket.opened", lambda doc: {**doc, "ticket_id": 7})
    with pytest.raises(DecodeError, match="ticket_id"):
        decode(raw(document(EXAMPLES["conversation.ticket.opened"], schema_version=old)))


def test_unknown_payload_and_envelope_fields_are_ignored() -> None:
    payload = {**msgspec.to_builtins(EXAMPLES["conversation.reply.sent"]), "added_in_a_later_release": {"x": 1}}
    doc = document(EXAMPLES["conversation.reply.sent"], payload=payload, trace_id="abc")
    envelope = decode(raw(doc))
    assert envelope.payload == EXAMPLES["conversation.reply.sent"]
    assert not hasattr(envelope.payload, "added_in_a_later_release")


def test_missing_optional_payload_field_takes_its_default() -> None:
    payload = msgspec.to_builtins(EXAMPLES["conversation.status.updated"])
    del payload["error_code"], payload["error_title"]
    envelope = decode(raw(document(EXAMPLES["conversation.status.updated"], payload=payload)))
    assert (envelope.payload.error_code, envelope.payload.error_title) == (None, None)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"tenant_id": ...}, ["invalid envelope", "tenant_id"]),
        ({"payload": ...}, ["invalid envelope", "payload"]),
        ({"occurred_at": "2026-03-02T09:00:00"}, ["invalid envelope", "timezone", "$.occurred_at"]),
        ({"recorded_at": "yesterday"}, ["invalid envelope", "$.recorded_at"]),
        ({"event_id": "not-a-uuid"}, ["invalid envelope", "$.event_id"]),
        ({"schema_version": 0}, ["invalid envelope", "$.schema_version"]),
        ({"tenant_id": ""}, ["invalid envelope", "$.tenant_id"]),
        ({"type": 7}, ["invalid envelope", "$.type"]),
    ],
)
def test_invalid_envelope_says_what_is_wrong(changes: dict[str, Any], expected: list[str]) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(raw(document(EXAMPLES["conversation.ticket.opened"], **changes)))
    assert not isinstance(caught.value, UnknownEventType | UnsupportedSchemaVersion)
    for part in expected:
        assert part in str(caught.value)


@pytest.mark.parametrize(
    ("payload_changes", "expected"),
    [
        ({"ticket_id": ...}, ["conversation.ticket.opened", "ticket_id"]),
        ({"session_id": "nope"}, ["conversation.ticket.opened", "$.payload.session_id"]),
    ],
)
def test_invalid_payload_names_the_type_and_field(payload_changes: dict[str, Any], expected: list[str]) -> None:
    payload = msgspec.to_builtins(EXAMPLES["conversation.ticket.opened"])
    payload.update(payload_changes)
    payload = {k: v for k, v in payload.items() if v is not ...}
    with pytest.raises(DecodeError) as caught:
        decode(raw(document(EXAMPLES["conversation.ticket.opened"], payload=payload)))
    for part in expected:
        assert part in str(caught.value)


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"type": "conversation.ticket.opened"}'])
def test_bytes_that_are_no_envelope_are_a_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError, match="^invalid envelope: "):
        decode(data)
