"""The Python publisher refuses envelopes whose stream id or type does not follow from the payload."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from schemas import Payload
from streams.publisher import InvalidEnvelope, Publisher
from streams.settings import Settings
from tests.fixtures.conversation_logs import inbound

AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Unregistered(Payload, frozen=True, kw_only=True):
    contact: str


@pytest.mark.parametrize(("change", "reason"), [
    ({"stream_id": "conversation:acme:999"}, "must be 'conversation:acme:34600000001'"),
    ({"type": "conversation.status.updated"}, "and 'conversation.message.received'"),
    ({"payload": Unregistered(contact="34600000001")}, "payload type Unregistered is not registered"),
])
async def test_invalid_envelope_is_refused_before_anything_is_sent(change: dict, reason: str) -> None:
    good = inbound("acme", "34600000001", "wamid.p.1", AT)
    # No broker runs here: a refused publish never reaches the producer (start() was never called).
    publisher = Publisher(Settings(kafka_bootstrap_servers="127.0.0.1:9"))
    with pytest.raises(InvalidEnvelope, match=reason):
        await publisher.publish([good, msgspec.structs.replace(good, **change)])
