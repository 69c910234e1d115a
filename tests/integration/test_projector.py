"""The projector, the query API and replay against the real broker and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from agents.conversations.fold import ConversationState
from projections.conversations.readmodels import session_row
from projections.replay import Mismatch, replay
from streams.deadletter import list_dead_letters
from streams.settings import Settings
from streams.topics import changelog_topic, ensure_topics
from tests.fixtures.conversation_logs import conversation
from tests.fixtures.projector import (
    NOW,
    Clients,
    Produced,
    Projector,
    acme_and_globex,
    caught_up,
    comparable,
    fold_like_worker,
    on_log,
    produce,
    query,
    query_api,
    session_rows,
)
from tests.fixtures.waiting import eventually_async

pytestmark = pytest.mark.integration


async def test_projector_archives_once_upserts_sessions_and_resumes_from_stored_offsets(settings: Settings):
    await ensure_topics(settings)
    log = acme_and_globex()
    states: dict[str, ConversationState | None] = {}
    changelog, sessions = fold_like_worker(settings, log, states)
    produced = on_log(settings, log) + changelog
    metadata = await produce(settings, produced)
    unique = {e.event_id for e in log}

    async with Projector(settings) as first:
        await eventually_async(lambda: caught_up(settings, produced), "projection of the first log")
    assert first.records == len(produced)

    counts = await query(settings, "SELECT count(*), count(DISTINCT event_id) FROM events")
    assert counts == [(len(unique), len(unique))]
    duplicate_id = next(e.event_id for i, e in enumerate(log) if e.event_id in {x.event_id for x in log[:i]})
    first_index = next(i for i, e in enumerate(log) if e.event_id == duplicate_id)
    assert await query(settings, 'SELECT partition, "offset" FROM events WHERE event_id = %s', (duplicate_id,)) == [
        (metadata[first_index].partition, metadata[first_index].offset)
    ]
    assert await session_rows(settings) == {sid: comparable(session_row(s)) for sid, s in sessions.items()}
    assert len(sessions) == 5  # Ana's rollover leaves her first session behind

    ana = "conversation:acme:34600000001"
    more, _ = conversation("acme", "34600000001", [(NOW - timedelta(minutes=1), "info", True)], state=states[ana])
    more_changelog, more_sessions = fold_like_worker(settings, more, states)
    more_produced = on_log(settings, more) + more_changelog
    await produce(settings, more_produced)

    async with Projector(settings) as second:
        await eventually_async(lambda: caught_up(settings, produced + more_produced), "projection after restart")
    assert second.records == len(more_produced)  # nothing before the stored offsets is read again
    assert await query(settings, "SELECT count(*) FROM events") == [(len(unique) + len(more),)]
    rows = await session_rows(settings)
    assert len(rows) == 5
    assert {sid: rows[sid] for sid in more_sessions} == {sid: comparable(session_row(s)) for sid, s in more_sessions.items()}


async def test_undecodable_records_are_dead_lettered_and_projection_continues(settings: Settings):
    await ensure_topics(settings)
    garbage = b"\xff not an envelope"
    bad_state = b'{"tenant_id": 1}'
    changelog = changelog_topic(settings, "sessions")
    log, _ = conversation("acme", "34600000009", [(NOW, "info", True)])
    states: dict[str, ConversationState | None] = {}
    states_produced, _ = fold_like_worker(settings, log, states)
    produced: Produced = [
        (settings.topic("conversations"), b"conversation:acme:34600000009", garbage),
        (changelog, b"conversation:acme:34600000009", bad_state),
        (changelog, b"conversation:acme:34600000009", None),  # a tombstone is not an error
        *on_log(settings, log), *states_produced,
    ]
    metadata = await produce(settings, produced)

    async with Projector(settings) as projector:
        await eventually_async(lambda: caught_up(settings, produced), "projection past the bad records")
    assert sum(report.dead_letters for report in projector.reports) == 2
    assert await query(settings, "SELECT count(*) FROM events") == [(len({e.event_id for e in log}),)]
    assert await query(settings, "SELECT count(*) FROM conversation_sessions") == [(1,)]

    letters = {letter.source_topic: letter for letter in await list_dead_letters(settings, 10)}
    assert set(letters) == {settings.topic("conversations"), changelog}
    envelope_letter, state_letter = letters[settings.topic("conversations")], letters[changelog]
    assert envelope_letter.stage == "projector" and envelope_letter.reason.startswith("decode: invalid envelope")
    assert (envelope_letter.partition, envelope_letter.offset) == (metadata[0].partition, metadata[0].offset)
    assert envelope_letter.raw_value() == garbage and envelope_letter.value_encoding == "base64"
    assert envelope_letter.raw_key() == b"conversation:acme:34600000009"
    assert state_letter.reason.startswith("decode conversations state:") and state_letter.raw_value() == bad_state


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Clients]:
    """Query API clients over read models written straight from folded states, by tenant."""
    async with query_api(settings, acme_and_globex()) as clients:
        yield clients


async def test_api_needs_a_valid_token(client):
    for path in ("/v1/conversations", "/v1/conversations/34600000001", "/v1/stats/conversations"):
        assert (await client(None).get(path)).status_code == 401
        bad = await client(None).get(path, headers={"Authorization": "Bearer not-a-jwt"})
        assert bad.status_code == 401


async def test_api_conversation_is_the_latest_session_and_tenant_scoped(client):
    response = await client("acme").get("/v1/conversations/34600000001")
    assert response.status_code == 200
    body = response.json()
    assert (body["contact_name"], body["session_number"], body["lane"], body["active"]) == ("Ana", 2, "support", True)
    assert [c["lane"] for c in body["lane_history"]] == ["commerce", "support"]
    assert [(t["role"], t["status"]) for t in body["dialogue"]] == [
        ("contact", None), ("agent", "sent"), ("contact", None), ("agent", "failed")]
    assert body["routed"] == {"info": 0, "commerce": 1, "support": 1}
    assert len(body["previous_session_ids"]) == 1
    assert (await client("globex").get("/v1/conversations/34600000001")).status_code == 404
    assert (await client("acme").get("/v1/conversations/15550000001")).status_code == 404
    assert (await client("globex").get("/v1/conversations/15550000001")).status_code == 200


async def test_api_lists_filters_and_pages(client):
    acme = client("acme")

    async def contacts(**params) -> list[str]:
        response = await acme.get("/v1/conversations", params=params)
        assert response.status_code == 200, response.text
        return [item["contact"] for item in response.json()["items"]]

    assert await contacts() == ["34600000001", "34600000003", "34600000002"]
    assert await contacts(lane="support") == ["34600000001"]
    assert await contacts(lane="info") == ["34600000002"]
    assert await contacts(active="true") == ["34600000001", "34600000003"]
    assert await contacts(active="false") == ["34600000002"]
    for params in ({"lane": "sales"}, {"limit": 0}, {"limit": 201}, {"cursor": "bm90IGEgY3Vyc29y"}):
        assert (await acme.get("/v1/conversations", params=params)).status_code == 422, params
    pages, cursor = [], None
    while True:
        body = (await acme.get("/v1/conversations", params={"limit": 1, **({"cursor": cursor} if cursor else {})})).json()
        pages.append([item["contact"] for item in body["items"]])
        if (cursor := body["next_cursor"]) is None:
            break
    assert pages == [["34600000001"], ["34600000003"], ["34600000002"]]
    globex = (await client("globex").get("/v1/conversations")).json()
    assert [item["contact"] for item in globex["items"]] == ["15550000001"]


async def test_api_stats(client):
    acme = (await client("acme").get("/v1/stats/conversations")).json()
    assert acme == {
        "sessions": 4, "active_sessions": 2, "contacts": 3, "messages_received": 5,
        "lanes": {"info": 2, "commerce": 2, "support": 1}, "orchestrated": 5,
        "replies_sent": 4, "replies_failed": 1, "success_rate": 0.8, "duplicates_dropped": 1,
    }
    globex = (await client("globex").get("/v1/stats/conversations")).json()
    assert (globex["sessions"], globex["success_rate"], globex["lanes"]["support"]) == (1, 0.0, 1)
    nobody = (await client("initech").get("/v1/stats/conversations")).json()
    assert (nobody["sessions"], nobody["success_rate"], nobody["messages_received"]) == (0, None, 0)


async def test_replay_verify_is_clean_after_projection_and_reports_corruption(settings: Settings):
    await ensure_topics(settings)
    log = acme_and_globex()
    changelog, sessions = fold_like_worker(settings, log, {})
    domain = on_log(settings, log)
    domain.insert(3, (settings.topic("conversations"), b"conversation:acme:x", b"garbage"))
    await produce(settings, domain + changelog)
    async with Projector(settings):
        await eventually_async(lambda: caught_up(settings, domain + changelog), "projection")

    seen: list[tuple[int, int]] = []
    report = await replay(settings, verify=True, progress=lambda done, total: seen.append((done, total)))
    assert report.clean and report.exit_code == 0, report.tables
    assert (report.records, report.not_archived, report.not_folded, report.live_lag) == (len(domain), 1, 1, 0)
    compared = {t.table: t.compared for t in report.tables}
    assert (compared.pop("events"), compared.pop("conversation_sessions")) == (len({e.event_id for e in log}), len(sessions))
    # Search covers every domain's events: one row per archived event, one per tenant and event type.
    assert (compared.pop("workflow_search"), compared.pop("workflow_search_types")) == (
        len({e.event_id for e in log}), len({(e.tenant_id, e.type) for e in log}))
    assert set(compared.values()) == {0}  # every other domain's read models, compared and empty
    assert seen[0] == (0, len(domain)) and seen[-1] == (len(domain), len(domain))

    session_id = next(iter(sessions))
    event_id = log[1].event_id
    await query(settings, "UPDATE conversation_sessions SET messages_received = messages_received + 1"
                          " WHERE session_id = %s", (session_id,))
    await query(settings, "DELETE FROM events WHERE event_id = %s", (event_id,))
    report = await replay(settings, verify=True)
    assert not report.clean and report.exit_code == 1
    tables = {t.table: t for t in report.tables}
    assert tables["conversation_sessions"].samples == (Mismatch(str(session_id), "differs", ("messages_received",)),)
    assert (tables["events"].missing_in_live, tables["events"].samples) == (1, (Mismatch(str(event_id), "missing_in_live"),))
    assert "differ" in str(report.render().renderables[-1])


async def test_replay_without_verify_builds_the_shadow_schema(settings: Settings):
    await ensure_topics(settings)
    log = acme_and_globex()
    await produce(settings, on_log(settings, log))
    report = await replay(settings, verify=False)
    assert (report.verified, report.tables, report.clean) == (False, (), True)
    assert report.events == len({e.event_id for e in log}) and report.rows == {"conversation_sessions": 5}
    assert await query(settings, "SELECT count(*) FROM replay_shadow.conversation_sessions") == [(5,)]
    assert await query(settings, "SELECT to_regclass('public.events')") == [(None,)]
