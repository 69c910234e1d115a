"""Records PostgreSQL refuses, put on the log past the edge: dead-lettered with a reason while everything else goes on."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from agents.conversations.fold import ConversationState
from projections.conversations.readmodels import session_row
from schemas import Envelope, UnstorableEvent, check_storable, encode, new_event
from schemas.workflow import SprintCreated
from streams.auth import issue_token
from streams.deadletter import list_dead_letters
from streams.runtime import Runtime
from streams.settings import Settings
from streams.topics import changelog_topic, ensure_topics
from tests.fixtures.conversation_logs import conversation, inbound
from tests.fixtures.pipeline import produce_records, replay_verify
from tests.fixtures.projector import (
    Projector,
    acme_and_globex,
    caught_up,
    comparable,
    fold_like_worker,
    on_log,
    produce,
    query,
    session_rows,
)
from tests.fixtures.waiting import eventually, eventually_async

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


def storable(envelope: Envelope) -> bool:
    try:
        check_storable(envelope)
    except UnstorableEvent:
        return False
    return True


def too_deep_record(settings: Settings) -> tuple[str, bytes, bytes]:
    """A sprint whose fields nest deeper than the decoder recurses (ingest refuses it; a raw producer does not)."""
    sprint = new_event("acme", SprintCreated(sprint_code="DEEP", title="deep", fields={"x": "HOLE"}),
                       event_id=uuid.uuid4(), occurred_at=NOW, recorded_at=NOW, actor="test")
    value = encode(sprint).replace(b'"HOLE"', b"[" * 5000 + b"]" * 5000)
    return settings.topic("workflow"), sprint.stream_id.encode(), value


async def test_the_projector_dead_letters_each_record_postgresql_refuses_and_writes_the_rest_as_before(
        settings: Settings) -> None:
    await ensure_topics(settings)
    states: dict[str, ConversationState | None] = {}
    good = acme_and_globex()
    # A contact name and a message text with a NUL: the archive (jsonb) and the session rows (text, jsonb) refuse them.
    named, _ = conversation("acme", "34600000066", [(NOW - timedelta(minutes=2), "info", True)], name="Po\u0000ison")
    texted = [inbound("acme", "34600000067", "wamid.poison.67", NOW - timedelta(minutes=1), text="a\u0000b")]
    poison = named + texted
    before, after = good[:5], good[5:]
    log = before + poison + after  # the poison sits in the middle of a batch, between good records of both tenants
    good_changelog, good_sessions = fold_like_worker(settings, good, states)
    poison_changelog, _ = fold_like_worker(settings, poison, states)
    produced = on_log(settings, log) + [too_deep_record(settings)] + good_changelog + poison_changelog
    metadata = await produce(settings, produced)
    at = {i: (m.topic, m.partition, m.offset) for i, m in enumerate(metadata)}

    async with Projector(settings) as projector:
        await eventually_async(lambda: caught_up(settings, produced), "projection past the poison records")
        assert not projector.task.done()  # never stopped by a record

    # Everything storable is written exactly as without the poison: every good event and session row.
    archived = {row[0] for row in await query(settings, "SELECT event_id FROM events")}
    assert archived == {e.event_id for e in good} | {e.event_id for e in poison if storable(e)}
    assert {e.event_id for e in poison if not storable(e)}.isdisjoint(archived)
    assert await session_rows(settings) == {sid: comparable(session_row(s)) for sid, s in good_sessions.items()}

    # Each refused record, and only those, is on the dead-letter topic with the reason PostgreSQL gave.
    refused_events = {at[i] for i, e in enumerate(log) if not storable(e)}
    changelog = changelog_topic(settings, "sessions")
    refused_states = {at[i] for i in range(len(produced)) if at[i][0] == changelog
                      and produced[i][2] in {value for _, _, value in poison_changelog}}
    deep = at[len(log)]
    letters = {(d.source_topic, d.partition, d.offset): d for d in await list_dead_letters(settings, 100)}
    assert set(letters) == refused_events | refused_states | {deep}
    assert len(refused_events) >= 2 and refused_states  # both poison contacts, their events and their states
    assert sum(report.dead_letters for report in projector.reports) == len(letters)
    assert all(letter.stage == "projector" for letter in letters.values())
    for where in refused_events | refused_states:
        assert letters[where].reason.startswith("write: "), letters[where].reason
        assert "0x00" in letters[where].reason or "\\u0000" in letters[where].reason, letters[where].reason
    assert letters[deep].reason.startswith("decode: invalid envelope: nested too deeply"), letters[deep].reason
    assert letters[deep].raw_value() == produced[len(log)][2]

    # Restarted, the projector reads nothing again: the dead letters' offsets were committed.
    async with Projector(settings) as again:
        await asyncio.sleep(1.5)
    assert again.records == 0


def test_a_poison_record_on_the_log_leaves_the_projector_and_every_tenant_unaffected(
        runtime: Runtime, api: httpx.Client) -> None:
    settings = runtime.settings
    projector = runtime.processes["projector"]
    pids = runtime.pids()
    sprint = new_event("acme", SprintCreated(sprint_code="POISON", title="poison", fields={"note": "a\u0000b"}),
                       event_id=uuid.uuid4(), occurred_at=datetime.now(UTC), recorded_at=datetime.now(UTC),
                       actor="test")
    with pytest.raises(UnstorableEvent, match=r"^payload\.fields\.note: "):
        check_storable(sprint)  # what the edge refuses...
    refused = api.post("/v1/sprints", json={"sprint_code": "POISON", "title": "poison", "fields": {"note": "a\u0000b"}})
    assert refused.status_code == 422 and refused.json()["detail"].startswith("payload.fields.note: ")
    # ...put on the log past it, as a producer that skips Baton's publishers could.
    topic = settings.topic("workflow")
    asyncio.run(produce_records(settings, topic, [(sprint.stream_id.encode(), encode(sprint))]))

    token = issue_token(settings, "globex")
    with httpx.Client(base_url=runtime.api_url, timeout=10, headers={"Authorization": f"Bearer {token}"}) as globex:
        assert globex.post("/v1/sprints", json={"sprint_code": "G-1", "title": "after"}).status_code == 202
        assert api.post("/v1/sprints", json={"sprint_code": "A-1", "title": "after"}).status_code == 202

        def codes(client: httpx.Client) -> set[str]:
            response = client.get("/v1/sprints")
            assert response.status_code == 200, response.text
            return {s["sprint_code"] for s in response.json()}

        eventually(lambda: "G-1" in codes(globex), "the other tenant's sprint, written after the poison, projected")
        eventually(lambda: "A-1" in codes(api), "the same tenant's next sprint projected")
        assert "POISON" not in codes(api) and codes(globex) == {"G-1"}

    service = {"Authorization": f"Bearer {issue_token(settings, 'acme', service=True)}"}

    def poison_letter() -> dict | None:
        response = api.get("/v1/ops/deadletters", headers=service)
        assert response.status_code == 200, response.text
        return next((letter for letter in response.json() if letter["source_topic"] == topic
                     and letter["stage"] == "projector"), None)

    letter = eventually(poison_letter, "the poison record on the dead-letter topic")
    assert letter["reason"].startswith("write: ") and "\\u0000" in letter["reason"], letter["reason"]
    assert sprint.event_id.hex in letter["value"].replace("-", "")

    assert projector.poll() is None and runtime.processes["projector"] is projector  # never restarted
    assert runtime.pids() == pids  # nor anything else of `baton dev`: worker, API, broker, PostgreSQL

    # Replay leaves out what PostgreSQL refuses, as the projector did, and says so: the rebuild equals live.
    verify = replay_verify(settings)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert re.search(r"[1-9]\d*\s+rows\s+PostgreSQL\s+refused", verify.stdout), verify.stdout
