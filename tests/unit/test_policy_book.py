"""Folds decide each event under the policy it is stamped with (streams.policies), never the environment's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from aiokafka.errors import KafkaConnectionError

from agents.batching import Record, fold_batch
from schemas import encode
from schemas.policies import content_hash
from streams.domains.conversations import DOMAIN as CONVERSATIONS
from streams.policies import PolicyBook, adopt_configured_once_reachable, adoption
from streams.settings import Settings, get_settings
from tests.fixtures.conversation_logs import inbound

AT = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
SHORT = {"conversations": {"session_timeout_hours": 1.0, "max_dialogue_turns": 50, "seen_message_ids": 256}}


def book_with(*documents: dict) -> PolicyBook:
    book = PolicyBook()
    for document in documents:
        book.adopt(adoption(book, "*", document, reason="command", actor="test"))  # type: ignore[arg-type]
    return book


def session_ids(book: PolicyBook, stamp: str | None) -> set[str]:
    """The sessions two messages two hours apart fall into, folded as the worker folds them."""
    folder = CONVERSATIONS.folder_under(Settings(), book)
    log = [msgspec.structs.replace(inbound("acme", "346", f"w{n}", AT + timedelta(hours=2 * n)), policy=stamp)
           for n in range(2)]
    table: dict = {}
    started = set()
    for offset, envelope in enumerate(log):
        result = fold_batch([Record("t", 0, offset, envelope.stream_id.encode(), encode(envelope))], table.get, folder)
        assert result.dead == []
        table.update(result.writes)
        started |= {e.payload.session_id for e in result.emitted if e.type == "conversation.session.started"}
    return started


def test_a_stamped_event_is_decided_under_its_policy_and_an_unstamped_one_under_the_defaults(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATON_SESSION_TIMEOUT_HOURS", "0.5")  # the environment must not decide
    get_settings.cache_clear()
    book = book_with(SHORT)
    assert len(session_ids(book, content_hash(SHORT))) == 2  # 1 h timeout: the second message opens a new session
    assert len(session_ids(book, None)) == 1  # built-in 24 h
    get_settings.cache_clear()


def test_an_event_stamped_with_a_policy_never_adopted_is_dead_lettered() -> None:
    folder = CONVERSATIONS.folder_under(Settings(), book_with(SHORT))
    envelope = msgspec.structs.replace(inbound("acme", "346", "w1", AT), policy="0" * 64)
    result = fold_batch([Record("t", 0, 0, envelope.stream_id.encode(), encode(envelope))], {}.get, folder)
    assert [reason for _, reason in result.dead] == [f"fold: UnknownPolicy: policy {'0' * 64} was never adopted on the log"]


def test_adopting_the_policy_in_force_again_is_no_event_and_a_hash_names_its_content() -> None:
    book = book_with(SHORT)
    assert adoption(book, "*", dict(SHORT), reason="configured", actor="baton") is None
    assert book.stamp("acme") == content_hash(SHORT) and book.stamp("globex") == content_hash(SHORT)
    tenant = {**SHORT, "outbound": {"daily_limit": 2}}
    book.adopt(adoption(book, "acme", tenant, reason="command", actor="ops"))  # type: ignore[arg-type]
    assert (book.stamp("acme"), book.stamp("globex")) == (content_hash(tenant), content_hash(SHORT))


class _UnreachableReader:
    """A policy reader whose broker answers only from the third read on."""

    def __init__(self) -> None:
        self.book, self.reads = PolicyBook(), 0

    async def refresh(self) -> None:
        self.reads += 1
        if self.reads <= 2:
            raise KafkaConnectionError("Unable to bootstrap from [('localhost', 9092)]")


async def test_a_worker_adopts_the_configured_policy_once_its_broker_answers_instead_of_crashing() -> None:
    reader, published, delays = _UnreachableReader(), [], []

    async def publish(envelopes) -> None:
        published.extend(envelopes)
        for envelope in envelopes:
            reader.book.adopt(envelope)

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    adopted = await adopt_configured_once_reachable(reader, dict(SHORT), publish, first_delay_s=0.5, sleep=sleep)
    assert adopted == content_hash(SHORT)
    assert delays == [0.5, 1.0]  # two failed reads, each followed by a doubled wait
    assert [e.payload.policy for e in published] == [content_hash(SHORT)]
    assert reader.book.stamp("acme") == content_hash(SHORT)
