"""WhatsApp Cloud API webhooks: normalisation of documented payload shapes, signatures, handshake."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agents.tenants import load_tenants
from schemas import Envelope, decode, encode, source_event_id
from schemas.conversations import Location, Media, MessageReceived, StatusUpdated
from streams.domains.conversations.webhook import (
    UnknownPhoneNumber,
    WebhookError,
    normalize,
    sign,
    verify_signature,
    verify_subscription,
)

TENANTS = load_tenants(Path(__file__).resolve().parents[2] / "examples" / "tenants.toml")
ACME_NUMBER = "109876543210"
CONTACT = "34612345678"
RECEIVED_AT = datetime(2024, 5, 1, 12, 0, 5, tzinfo=UTC)
TIMESTAMP = "1714564800"  # 2024-05-01T12:00:00Z


def delivery(*, messages: list[dict] | None = None, statuses: list[dict] | None = None,
             phone_number_id: str = ACME_NUMBER) -> dict:
    """A webhook body as Meta sends it for one business number."""
    value: dict = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "34600000001", "phone_number_id": phone_number_id},
    }
    if messages is not None:
        value["contacts"] = [{"profile": {"name": "Ana García"}, "wa_id": CONTACT}]
        value["messages"] = messages
    if statuses is not None:
        value["statuses"] = statuses
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "102290129340398", "changes": [{"value": value, "field": "messages"}]}],
    }


def message(kind: str, body: object, wamid: str = "wamid.HBgLMzQ2MTIzNDU2NzgVAgASGBQzQTNCMDUxMjM0NTY3ODkwQUJDRAA=",
            **extra: object) -> dict:
    """One inbound message of a type, with that type's object."""
    return {"from": CONTACT, "id": wamid, "timestamp": TIMESTAMP, "type": kind, kind: body, **extra}


def one(body: dict) -> Envelope:
    """The single envelope a delivery normalises to."""
    (envelope,) = normalize(body, TENANTS, RECEIVED_AT).envelopes
    return envelope


def received(body: dict) -> MessageReceived:
    payload = one(body).payload
    assert isinstance(payload, MessageReceived)
    return payload


def test_text_message_becomes_an_envelope_for_the_numbers_tenant() -> None:
    wamid = "wamid.text1"
    envelope = one(delivery(messages=[message("text", {"body": "¿Abrís el domingo?"}, wamid)]))
    assert envelope.type == "conversation.message.received"
    assert envelope.tenant_id == "acme"
    assert envelope.stream_id == f"conversation:acme:{CONTACT}"
    assert envelope.event_id == source_event_id("acme", "whatsapp", wamid)
    assert envelope.correlation_id == envelope.event_id
    assert envelope.causation_id is None
    assert envelope.actor == "whatsapp"
    assert envelope.occurred_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert envelope.recorded_at == RECEIVED_AT
    assert envelope.payload == MessageReceived(
        contact=CONTACT, whatsapp_message_id=wamid, message_type="text", contact_name="Ana García",
        phone_number_id=ACME_NUMBER, text="¿Abrís el domingo?",
    )
    assert decode(encode(envelope)) == envelope


def test_reply_context_is_kept() -> None:
    body = delivery(messages=[message("text", {"body": "this one"},
                                      context={"from": "34600000001", "id": "wamid.original"})])
    assert received(body).context_message_id == "wamid.original"


def test_template_quick_reply_button() -> None:
    body = delivery(messages=[message("button", {"payload": "TRACK_ORDER", "text": "Track my order"},
                                      context={"from": "34600000001", "id": "wamid.template"})])
    payload = received(body)
    assert (payload.message_type, payload.text, payload.reply_id) == ("button", "Track my order", "TRACK_ORDER")


@pytest.mark.parametrize("reply_type", ["button_reply", "list_reply"])
def test_interactive_replies(reply_type: str) -> None:
    reply = {"id": "opt-hours", "title": "Opening hours"}
    if reply_type == "list_reply":
        reply["description"] = "When we are open"
    payload = received(delivery(messages=[message("interactive", {"type": reply_type, reply_type: reply})]))
    assert (payload.message_type, payload.text, payload.reply_id) == ("interactive", "Opening hours", "opt-hours")


def test_flow_reply_is_recorded_as_unsupported() -> None:
    nfm = {"type": "nfm_reply", "nfm_reply": {"response_json": "{}", "body": "Sent", "name": "flow"}}
    assert received(delivery(messages=[message("interactive", nfm)])).message_type == "unsupported"


@pytest.mark.parametrize(
    ("kind", "body", "media", "text"),
    [
        ("image", {"caption": "my receipt", "mime_type": "image/jpeg", "sha256": "aGFzaA==", "id": "1479537139650973"},
         Media(id="1479537139650973", mime_type="image/jpeg", sha256="aGFzaA=="), "my receipt"),
        ("audio", {"mime_type": "audio/ogg; codecs=opus", "sha256": "aGFzaA==", "id": "2754859441498128",
                   "voice": True},
         Media(id="2754859441498128", mime_type="audio/ogg; codecs=opus", sha256="aGFzaA=="), None),
        ("video", {"mime_type": "video/mp4", "sha256": "aGFzaA==", "id": "1234567890123456"},
         Media(id="1234567890123456", mime_type="video/mp4", sha256="aGFzaA=="), None),
        ("document", {"caption": "invoice", "filename": "invoice-42.pdf", "mime_type": "application/pdf",
                      "sha256": "aGFzaA==", "id": "3114385325437297"},
         Media(id="3114385325437297", mime_type="application/pdf", sha256="aGFzaA==", filename="invoice-42.pdf"),
         "invoice"),
        ("sticker", {"mime_type": "image/webp", "sha256": "aGFzaA==", "id": "7654321098765432", "animated": False},
         Media(id="7654321098765432", mime_type="image/webp", sha256="aGFzaA=="), None),
    ],
)
def test_media_messages(kind: str, body: dict, media: Media, text: str | None) -> None:
    payload = received(delivery(messages=[message(kind, body)]))
    assert (payload.message_type, payload.media, payload.text) == (kind, media, text)


def test_location() -> None:
    body = {"latitude": 40.4168, "longitude": -3, "name": "Puerta del Sol", "address": "Madrid"}
    payload = received(delivery(messages=[message("location", body)]))
    assert payload.message_type == "location"
    assert payload.location == Location(latitude=40.4168, longitude=-3.0, name="Puerta del Sol", address="Madrid")


def test_shared_contacts_name_the_cards() -> None:
    cards = [
        {"name": {"formatted_name": "Luis Pérez", "first_name": "Luis"},
         "phones": [{"phone": "+34 611 111 111", "wa_id": "34611111111", "type": "CELL"}]},
        {"name": {"formatted_name": "Marta Ruiz"}, "emails": [{"email": "marta@example.com", "type": "WORK"}]},
    ]
    payload = received(delivery(messages=[message("contacts", cards)]))
    assert (payload.message_type, payload.text) == ("contacts", "Luis Pérez, Marta Ruiz")


def test_reaction_and_its_removal() -> None:
    added = received(delivery(messages=[message("reaction", {"message_id": "wamid.reply", "emoji": "👍"})]))
    assert (added.message_type, added.text, added.reaction_to) == ("reaction", "👍", "wamid.reply")
    removed = received(delivery(messages=[message("reaction", {"message_id": "wamid.reply"}, wamid="wamid.r2")]))
    assert (removed.text, removed.reaction_to) == (None, "wamid.reply")


@pytest.mark.parametrize(
    "raw",
    [
        {"from": CONTACT, "id": "wamid.u1", "timestamp": TIMESTAMP, "type": "unsupported",
         "errors": [{"code": 131051, "title": "Message type unknown",
                     "error_data": {"details": "Message type is currently not supported."}}]},
        {"from": CONTACT, "id": "wamid.u2", "timestamp": TIMESTAMP, "type": "system",
         "system": {"body": "User changed number", "wa_id": "34699999999", "type": "user_changed_number"}},
        {"from": CONTACT, "id": "wamid.u3", "timestamp": TIMESTAMP, "type": "order",
         "order": {"catalog_id": "1", "product_items": [{"product_retailer_id": "sku", "quantity": "1"}]}},
    ],
)
def test_other_message_types_are_recorded_as_unsupported(raw: dict) -> None:
    payload = received(delivery(messages=[raw]))
    assert (payload.message_type, payload.text, payload.whatsapp_message_id) == ("unsupported", None, raw["id"])


def test_sender_name_falls_back_to_the_only_contact_when_wa_id_differs() -> None:
    body = delivery(messages=[message("text", {"body": "oi"})])
    body["entry"][0]["changes"][0]["value"]["contacts"][0]["wa_id"] = "5511987654321"
    assert received(body).contact_name == "Ana García"


def status(state: str, **extra: object) -> dict:
    """A delivery status for a message Baton sent."""
    return {"id": "wamid.sent1", "status": state, "timestamp": "1714564860", "recipient_id": CONTACT,
            "conversation": {"id": "c0ffee", "origin": {"type": "service"}},
            "pricing": {"billable": True, "pricing_model": "CBP", "category": "service"}, **extra}


@pytest.mark.parametrize("state", ["sent", "delivered", "read"])
def test_statuses(state: str) -> None:
    envelope = one(delivery(statuses=[status(state)]))
    assert envelope.type == "conversation.status.updated"
    assert envelope.event_id == source_event_id("acme", "whatsapp-status", f"wamid.sent1:{state}")
    assert envelope.stream_id == f"conversation:acme:{CONTACT}"
    assert envelope.occurred_at == datetime(2024, 5, 1, 12, 1, tzinfo=UTC)
    assert envelope.payload == StatusUpdated(contact=CONTACT, whatsapp_message_id="wamid.sent1", status=state)


def test_failed_status_carries_the_first_error() -> None:
    errors = [{"code": 131047, "title": "Re-engagement message", "message": "Re-engagement message",
               "error_data": {"details": "More than 24 hours have passed"}}]
    raw = {"id": "wamid.sent1", "status": "failed", "timestamp": "1714564860", "recipient_id": CONTACT,
           "errors": errors}
    payload = one(delivery(statuses=[raw])).payload
    assert payload == StatusUpdated(contact=CONTACT, whatsapp_message_id="wamid.sent1", status="failed",
                                    error_code=131047, error_title="Re-engagement message")


def test_each_status_of_a_message_is_its_own_event() -> None:
    envelopes = normalize(delivery(statuses=[status("sent"), status("delivered"), status("read")]),
                          TENANTS, RECEIVED_AT).envelopes
    assert len({e.event_id for e in envelopes}) == 3


def test_non_message_changes_and_unknown_statuses_are_skipped_with_a_reason() -> None:
    body = delivery(statuses=[status("deleted")])
    body["entry"].append({"id": "1", "changes": [{"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}}]})
    result = normalize(body, TENANTS, RECEIVED_AT)
    assert result.envelopes == []
    assert result.skipped == [
        "entry[0].changes[0].value.statuses[0]: status 'deleted' is not a delivery status",
        "entry[1].changes[0]: field 'account_update' is not a messages change",
    ]


def test_several_entries_tenants_messages_and_statuses_keep_delivery_order() -> None:
    body = delivery(messages=[message("text", {"body": "a"}, "wamid.a"), message("text", {"body": "b"}, "wamid.b")],
                    statuses=[status("read")])
    globex = delivery(messages=[message("text", {"body": "c"}, "wamid.c")], phone_number_id="209876543210")
    body["entry"] += globex["entry"]
    envelopes = normalize(body, TENANTS, RECEIVED_AT).envelopes
    assert [(e.tenant_id, e.payload.whatsapp_message_id) for e in envelopes] == [
        ("acme", "wamid.a"), ("acme", "wamid.b"), ("acme", "wamid.sent1"), ("globex", "wamid.c"),
    ]


def test_same_delivery_twice_gives_the_same_event_ids() -> None:
    body = delivery(messages=[message("text", {"body": "hola"})], statuses=[status("delivered")])
    first = normalize(body, TENANTS, RECEIVED_AT).envelopes
    again = normalize(copy.deepcopy(body), TENANTS, datetime(2024, 5, 2, tzinfo=UTC)).envelopes
    assert [e.event_id for e in first] == [e.event_id for e in again]
    assert len({e.event_id for e in first}) == 2


def test_the_same_message_id_at_another_tenant_is_another_event() -> None:
    acme = one(delivery(messages=[message("text", {"body": "x"}, "wamid.same")]))
    globex = one(delivery(messages=[message("text", {"body": "x"}, "wamid.same")], phone_number_id="209876543210"))
    assert acme.event_id != globex.event_id


def test_unknown_phone_number_id_rejects_the_whole_delivery() -> None:
    body = delivery(messages=[message("text", {"body": "a"})])
    body["entry"] += delivery(messages=[message("text", {"body": "b"})], phone_number_id="999")["entry"]
    with pytest.raises(UnknownPhoneNumber) as caught:
        normalize(body, TENANTS, RECEIVED_AT)
    assert caught.value.phone_number_id == "999"
    assert str(caught.value) == (
        "entry[1].changes[0].value.metadata.phone_number_id: unknown phone_number_id '999' (no tenant owns it)"
    )


def _with(body: dict, path: str, value: object) -> dict:
    """body with the item at a dotted path (list indexes as numbers) replaced, or deleted when value is ..."""
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node: object = body
    for key in parents:
        node = node[key]  # type: ignore[index]
    if value is ...:
        del node[last]  # type: ignore[attr-defined]
    else:
        node[last] = value  # type: ignore[index]
    return body


VALUE = "entry.0.changes.0.value"


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        ("object", "page", "object: expected 'whatsapp_business_account', got 'page'"),
        ("entry", ..., "Object missing required field `entry`"),
        ("entry", {}, "entry: Expected `array`, got `object`"),
        (f"{VALUE}.metadata", ..., "entry[0].changes[0].value: Object missing required field `metadata`"),
        (f"{VALUE}.metadata.phone_number_id", 109876543210,
         "entry[0].changes[0].value.metadata.phone_number_id: Expected `str`, got `int`"),
        (f"{VALUE}.messages.0.from", ...,
         "entry[0].changes[0].value.messages[0]: Object missing required field `from`"),
        (f"{VALUE}.messages.0.timestamp", "yesterday",
         "entry[0].changes[0].value.messages[0].timestamp: Expected `str` matching regex '^[0-9]{1,11}$'"),
        (f"{VALUE}.messages.0.text", ...,
         "entry[0].changes[0].value.messages[0]: type 'text' without its 'text' object"),
        (f"{VALUE}.messages.0.text.body", 7,
         "entry[0].changes[0].value.messages[0].text.body: Expected `str`, got `int`"),
        (f"{VALUE}.messages", {"id": "x"}, "entry[0].changes[0].value.messages: Expected `array`, got `object`"),
    ],
)
def test_structural_problems_name_the_field(path: str, value: object, error: str) -> None:
    body = _with(delivery(messages=[message("text", {"body": "hi"})]), path, value)
    with pytest.raises(WebhookError) as caught:
        normalize(body, TENANTS, RECEIVED_AT)
    assert str(caught.value) == error


def test_interactive_without_its_reply_object_is_structural() -> None:
    body = delivery(messages=[message("interactive", {"type": "button_reply"})])
    with pytest.raises(WebhookError, match=r"messages\[0\]\.interactive: type 'button_reply' without"):
        normalize(body, TENANTS, RECEIVED_AT)


def test_status_error_code_must_be_an_integer() -> None:
    raw = status("failed", errors=[{"code": "131047", "title": "x"}])
    with pytest.raises(WebhookError, match=r"^entry\[0\]\.changes\[0\]\.value\.statuses\[0\]\.errors\[0\]\.code: "
                                           r"Expected `int`, got `str`$"):
        normalize(delivery(statuses=[raw]), TENANTS, RECEIVED_AT)


def test_non_object_body_is_structural() -> None:
    with pytest.raises(WebhookError, match="^Expected `object`, got `array`$"):
        normalize([], TENANTS, RECEIVED_AT)  # type: ignore[arg-type]


SECRET = "app-secret"
BODY = b'{"object":"whatsapp_business_account","entry":[]}'


def test_signature_matches_meta_format() -> None:
    header = sign(SECRET, BODY)
    assert header.startswith("sha256=") and len(header) == len("sha256=") + 64
    assert verify_signature(SECRET, BODY, header)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        sign(SECRET, BODY + b" "),  # tampered body
        sign("other-secret", BODY),
        sign(SECRET, BODY).removeprefix("sha256="),
        "sha1=" + sign(SECRET, BODY).removeprefix("sha256="),
        sign(SECRET, BODY)[:-1],
        sign(SECRET, BODY).upper(),
        "sha256=" + "é" * 64,
    ],
)
def test_bad_signatures_are_refused(header: str | None) -> None:
    assert not verify_signature(SECRET, BODY, header)


# Known answers computed once outside Baton, e.g.
#   printf '%s' "$BODY" | openssl dgst -sha256 -hmac "$SECRET"
# so a wrong HMAC in sign() cannot pass by agreeing with itself.
UTF8_BODY = ('{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"field":"messages",'
             '"value":{"messages":[{"text":{"body":"¿Abrís el domingo? 👍"}}]}}]}]}').encode()
VECTORS = [
    (SECRET, BODY, "sha256=d3e4f9da0ce6c71ab3dba55929b8eeeee2455349e534924ead19f98d143e904f"),
    (SECRET, UTF8_BODY, "sha256=9b35f202dd8894194b07e14a45dba868daa3cd54072927903afe31adcd0ccc4f"),
    # the widely published HMAC-SHA256 example (Wikipedia "HMAC")
    ("key", b"The quick brown fox jumps over the lazy dog",
     "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"),
]


def test_utf8_vector_body_is_multibyte() -> None:
    assert len(UTF8_BODY) == 175 and len(UTF8_BODY.decode()) < 175


@pytest.mark.parametrize(("secret", "body", "header"), VECTORS)
def test_signature_known_answers(secret: str, body: bytes, header: str) -> None:
    assert sign(secret, body) == header
    assert verify_signature(secret, body, header)


def _flip(hex_digit: str) -> str:
    return "0" if hex_digit != "0" else "1"


@pytest.mark.parametrize(("secret", "body", "header"), VECTORS)
@pytest.mark.parametrize("position", [len("sha256="), len("sha256=") + 31, -1])
def test_signature_with_one_hex_digit_flipped_is_refused(secret: str, body: bytes, header: str, position: int) -> None:
    index = position % len(header)
    flipped = header[:index] + _flip(header[index]) + header[index + 1:]
    assert flipped != header and not verify_signature(secret, body, flipped)


@pytest.mark.parametrize(("secret", "body", "header"), VECTORS)
def test_signature_prefix_must_be_exactly_sha256(secret: str, body: bytes, header: str) -> None:
    digest = header.removeprefix("sha256=")
    for wrong in (digest, "SHA256=" + digest, "Sha256=" + digest, "sha256:" + digest, " sha256=" + digest):
        assert not verify_signature(secret, body, wrong), wrong


@pytest.mark.parametrize(("secret", "body", "header"), VECTORS)
def test_body_with_a_trailing_newline_is_refused(secret: str, body: bytes, header: str) -> None:
    assert not verify_signature(secret, body + b"\n", header)
    assert not verify_signature(secret, body + b"\r\n", header)


def test_trailing_newline_vector() -> None:
    # printf '%s\n' "$BODY" | openssl dgst -sha256 -hmac app-secret: the newline is part of what Meta signs
    header = "sha256=dc85db7a09c08ce00be6bb231452d3622926de3b68c3a4680e176ae01769855d"
    assert verify_signature(SECRET, BODY + b"\n", header)
    assert not verify_signature(SECRET, BODY, header)


def test_tampered_body_is_refused() -> None:
    assert not verify_signature(SECRET, BODY.replace(b"[]", b"[{}]"), sign(SECRET, BODY))


def test_subscription_handshake() -> None:
    params = {"hub.mode": "subscribe", "hub.verify_token": "tok", "hub.challenge": "1158201444"}
    assert verify_subscription(params, "tok") == "1158201444"
    assert verify_subscription({**params, "hub.verify_token": "nope"}, "tok") is None
    assert verify_subscription({**params, "hub.mode": "unsubscribe"}, "tok") is None
    assert verify_subscription({k: v for k, v in params.items() if k != "hub.challenge"}, "tok") is None
    assert verify_subscription({k: v for k, v in params.items() if k != "hub.verify_token"}, "tok") is None
