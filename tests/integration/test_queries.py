"""The paths users hit on the read side: paging with ties and filters, tenants sharing a contact number,
one webhook naming two contacts, `replay --verify` reporting rows live has and the log does not, tampered
rows and a lagging projector, and foreign bytes on the dead-letter topic."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from psycopg import sql
from rich.console import Console
from typer.testing import CliRunner

from agents.conversations.fold import ConversationState
from agents.tenants import load_tenants
from projections.conversations.readmodels import SESSIONS
from projections.replay import Mismatch, ReplayReport, replay
from schemas import Envelope
from streams.cli import cli
from streams.deadletter import dead_letter_record, list_dead_letters
from streams.domains.conversations.webhook import normalize
from streams.settings import Settings, get_settings
from streams.topics import ensure_topics
from tests.fixtures.conversation_logs import conversation
from tests.fixtures.projector import (
    Projector,
    acme_and_globex,
    caught_up,
    fold_like_worker,
    on_log,
    produce,
    query,
    query_api,
)
from tests.fixtures.waiting import eventually_async

pytestmark = pytest.mark.integration

# Microseconds on purpose: a cursor that dropped them would skip the rest of a tie.
NOW = datetime.now(UTC).replace(microsecond=123457)


async def listed(http: httpx.AsyncClient, **params: object) -> list[str]:
    """Contacts of one unpaged listing."""
    response = await http.get("/v1/conversations", params={"limit": 200, **params})
    assert response.status_code == 200, response.text
    return [item["contact"] for item in response.json()["items"]]


async def paged(http: httpx.AsyncClient, limit: int, **params: object) -> list[list[str]]:
    """Contacts page by page, following next_cursor to the end."""
    pages: list[list[str]] = []
    cursor = None
    while True:
        response = await http.get("/v1/conversations", params={"limit": limit, **params,
                                                               **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([item["contact"] for item in body["items"]])
        if (cursor := body["next_cursor"]) is None:
            return pages
        assert len(pages) < 100, "paging does not end"


async def test_paging_through_equal_last_activity_neither_skips_nor_repeats(settings: Settings) -> None:
    tied = [f"3460000010{i}" for i in range(5)]
    log: list[Envelope] = []
    for contact in tied:
        log += conversation("acme", contact, [(NOW - timedelta(minutes=10), "info", True)])[0]
    log += conversation("acme", "34600000200", [(NOW - timedelta(minutes=5), "info", True)])[0]
    log += conversation("acme", "34600000000", [(NOW - timedelta(minutes=20), "info", True)])[0]
    async with query_api(settings, log) as client:
        acme = client("acme")
        # Ties are ordered by contact, descending, after the most recent activity.
        everyone = ["34600000200", *sorted(tied, reverse=True), "34600000000"]
        assert await listed(acme) == everyone
        for limit in (1, 2, 3, 4):
            pages = await paged(acme, limit)
            assert [c for page in pages for c in page] == everyone, limit
            assert all(len(page) == limit for page in pages[:-1]) and 1 <= len(pages[-1]) <= limit


async def test_paging_combined_with_lane_and_active_filters(settings: Settings) -> None:
    turns = {
        "34600000001": [(NOW - timedelta(minutes=1), "commerce", True)],
        "34600000002": [(NOW - timedelta(minutes=2), "info", True)],
        "34600000003": [(NOW - timedelta(minutes=3), "commerce", False)],
        "34600000004": [(NOW - timedelta(days=2), "commerce", True)],  # expired
        "34600000005": [(NOW - timedelta(minutes=3), "commerce", True)],  # ties with ...003
        "34600000006": [(NOW - timedelta(days=3), "info", True)],  # expired
        "34600000007": [(NOW - timedelta(days=4), "support", True), (NOW - timedelta(minutes=4), "commerce", True)],
    }
    log = [e for contact, ts in turns.items() for e in conversation("acme", contact, ts)[0]]
    async with query_api(settings, log) as client:
        acme = client("acme")
        commerce_active = ["34600000001", "34600000005", "34600000003", "34600000007"]
        expected = {
            (("lane", "commerce"),): [*commerce_active, "34600000004"],
            (("active", "true"),): ["34600000001", "34600000002", "34600000005", "34600000003", "34600000007"],
            (("active", "false"),): ["34600000004", "34600000006"],
            (("lane", "commerce"), ("active", "true")): commerce_active,
            (("lane", "info"), ("active", "false")): ["34600000006"],
            (("lane", "support"),): [],  # ...007's latest session is commerce: filters see latest sessions only
        }
        for filters, contacts in expected.items():
            params = dict(filters)
            assert await listed(acme, **params) == contacts, filters
            for limit in (1, 2):
                pages = await paged(acme, limit, **params)
                assert [c for page in pages for c in page] == contacts, (filters, limit)
        # A cursor is a position, not a filter: taken from one listing it continues another without repeats.
        first = (await acme.get("/v1/conversations", params={"limit": 2})).json()
        rest = await paged(acme, 10, lane="commerce", cursor=first["next_cursor"])
        assert rest == [["34600000005", "34600000003", "34600000007", "34600000004"]]


async def test_the_same_contact_number_under_two_tenants_is_two_conversations(settings: Settings) -> None:
    contact = "34600000001"
    ana, _ = conversation("acme", contact, [(NOW - timedelta(minutes=3), "commerce", True)], name="Ana")
    other, _ = conversation("globex", contact, [(NOW - timedelta(minutes=2), "support", False),
                                                (NOW - timedelta(minutes=1), "support", True)], name="Ana G.")
    async with query_api(settings, ana + other) as client:
        acme, globex, initech = client("acme"), client("globex"), client("initech")
        mine = (await acme.get(f"/v1/conversations/{contact}")).json()
        theirs = (await globex.get(f"/v1/conversations/{contact}")).json()
        assert (mine["stream_id"], mine["contact_name"], mine["lane"], mine["messages_received"]) == (
            f"conversation:acme:{contact}", "Ana", "commerce", 1)
        assert (theirs["stream_id"], theirs["contact_name"], theirs["lane"], theirs["messages_received"]) == (
            f"conversation:globex:{contact}", "Ana G.", "support", 2)
        assert mine["session_id"] != theirs["session_id"]
        assert {t["event_id"] for t in mine["dialogue"]}.isdisjoint(t["event_id"] for t in theirs["dialogue"])
        assert mine["previous_session_ids"] == theirs["previous_session_ids"] == []
        assert await listed(acme) == await listed(globex) == [contact]
        assert (await acme.get("/v1/conversations", params={"lane": "support"})).json()["items"] == []
        acme_stats = (await acme.get("/v1/stats/conversations")).json()
        globex_stats = (await globex.get("/v1/stats/conversations")).json()
        assert (acme_stats["messages_received"], acme_stats["replies_failed"], acme_stats["contacts"]) == (1, 0, 1)
        assert (globex_stats["messages_received"], globex_stats["replies_failed"], globex_stats["contacts"]) == (2, 1, 1)
        assert (await initech.get(f"/v1/conversations/{contact}")).status_code == 404
        assert await listed(initech) == []


async def test_one_webhook_value_with_two_contacts_gives_each_its_own_conversation(settings: Settings) -> None:
    at = int((NOW - timedelta(minutes=1)).timestamp())

    def message(sender: str, wamid: str, text: str) -> dict:
        return {"from": sender, "id": wamid, "timestamp": str(at), "type": "text", "text": {"body": text}}

    delivery = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "34600000001", "phone_number_id": "109876543210"},
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": "34600000011"},
                     {"profile": {"name": "Bo"}, "wa_id": "34600000012"}],
        "messages": [message("34600000011", "wamid.ana", "¿Abrís hoy?"), message("34600000012", "wamid.bo", "Hola"),
                     message("34600000011", "wamid.ana2", "¿Y mañana?"),
                     # A sender missing from `contacts` gets no name, not a neighbour's.
                     message("34600000013", "wamid.cy", "Buenas")],
    }}]}]}
    normalized = normalize(delivery, load_tenants(settings.tenants_file), NOW)
    assert [(e.stream_id, e.payload.contact_name) for e in normalized.envelopes] == [
        ("conversation:acme:34600000011", "Ana"), ("conversation:acme:34600000012", "Bo"),
        ("conversation:acme:34600000011", "Ana"), ("conversation:acme:34600000013", None)]
    async with query_api(settings, normalized.envelopes) as client:
        acme = client("acme")
        assert sorted(await listed(acme)) == ["34600000011", "34600000012", "34600000013"]
        ana = (await acme.get("/v1/conversations/34600000011")).json()
        bo = (await acme.get("/v1/conversations/34600000012")).json()
        cy = (await acme.get("/v1/conversations/34600000013")).json()
        assert (ana["contact_name"], ana["messages_received"]) == ("Ana", 2)
        assert [t["text"] for t in ana["dialogue"]] == ["¿Abrís hoy?", "¿Y mañana?"]
        assert (bo["contact_name"], bo["messages_received"], [t["text"] for t in bo["dialogue"]]) == ("Bo", 1, ["Hola"])
        assert (cy["contact_name"], cy["messages_received"]) == (None, 1)


def rendered(report: ReplayReport) -> str:
    console = Console(record=True, width=200)
    console.print(report.render())
    return console.export_text()


async def project(settings: Settings, log: list[Envelope], states: dict[str, ConversationState | None]) -> list:
    """Put `log` and the worker's changelog for it on an empty broker and project all of it; returns what it put."""
    changelog, _ = fold_like_worker(settings, log, states)
    produced = [*on_log(settings, log), *changelog]
    await produce(settings, produced)
    async with Projector(settings):
        await eventually_async(lambda: caught_up(settings, produced), "projection")
    return produced


async def test_replay_verify_reports_live_rows_the_log_does_not_give_and_tampered_events(settings: Settings) -> None:
    await ensure_topics(settings)
    log = acme_and_globex()
    await project(settings, log, {})
    assert (await replay(settings, verify=True)).clean

    ghost_session, ghost_event = uuid.uuid4(), uuid.uuid4()
    copied = sql.SQL(", ").join(sql.Identifier(name) for name, _ in SESSIONS.columns[1:])
    await query(settings, sql.SQL("INSERT INTO conversation_sessions (session_id, {c}) SELECT %s, {c}"
                                  " FROM conversation_sessions LIMIT 1").format(c=copied), (ghost_session,))
    await query(settings, "INSERT INTO events (event_id, tenant_id, stream_id, type, schema_version, occurred_at,"
                          " recorded_at, correlation_id, causation_id, actor, payload, topic, partition, \"offset\")"
                          " SELECT %s, tenant_id, stream_id, type, schema_version, occurred_at, recorded_at,"
                          " correlation_id, causation_id, actor, payload, topic, partition, \"offset\""
                          " FROM events LIMIT 1", (ghost_event,))
    tampered = log[0].event_id  # Ana's first message
    await query(settings, "UPDATE events SET payload = jsonb_set(payload, '{text}', '\"tampered\"')"
                          " WHERE event_id = %s", (tampered,))

    report = await replay(settings, verify=True)
    assert (report.clean, report.exit_code, report.live_lag) == (False, 1, 0)
    tables = {t.table: t for t in report.tables}
    events, sessions = tables["events"], tables["conversation_sessions"]
    assert (events.missing_in_live, events.missing_in_shadow, events.differing) == (0, 1, 1)
    assert events.samples == (Mismatch(str(tampered), "differs", ("payload",)),
                              Mismatch(str(ghost_event), "missing_in_shadow"))
    assert (sessions.missing_in_live, sessions.missing_in_shadow, sessions.differing) == (0, 1, 0)
    assert sessions.samples == (Mismatch(str(ghost_session), "missing_in_shadow"),)
    text = rendered(report)
    assert f"events missing_in_shadow {ghost_event}" in text
    assert f"events differs {tampered} payload\n" in text
    assert f"conversation_sessions missing_in_shadow {ghost_session}" in text
    assert "mismatches may only be lag" not in text and text.rstrip().endswith("Live read models differ.")


async def test_replay_verify_reports_live_lag_while_the_projector_is_behind(settings: Settings) -> None:
    await ensure_topics(settings)
    states: dict[str, ConversationState | None] = {}
    first, _ = conversation("acme", "34600000001", [(NOW - timedelta(minutes=9), "info", True)])
    produced = await project(settings, first, states)

    # The projector is stopped; more arrives on the log and the worker's changelog.
    later = [*conversation("acme", "34600000002", [(NOW - timedelta(minutes=2), "support", True)])[0],
             *conversation("acme", "34600000001", [(NOW - timedelta(minutes=1), "commerce", True)],
                           state=states["conversation:acme:34600000001"])[0]]
    changelog, _ = fold_like_worker(settings, later, states)
    behind = [*on_log(settings, later), *changelog]
    await produce(settings, behind)

    report = await replay(settings, verify=True)
    assert report.live_lag == len(behind) and not report.clean
    tables = {t.table: t for t in report.tables}
    assert tables["events"].missing_in_live == len({e.event_id for e in later})
    assert (tables["conversation_sessions"].missing_in_live, tables["conversation_sessions"].differing) == (1, 1)
    assert (f"The live projector had {len(behind)} records left to consume; mismatches may only be lag."
            in rendered(report))

    # Once it catches up the same log verifies clean: the mismatches were lag.
    async with Projector(settings):
        await eventually_async(lambda: caught_up(settings, produced + behind), "projection after the lag")
    report = await replay(settings, verify=True)
    assert (report.clean, report.live_lag) == (True, 0)
    assert "mismatches may only be lag" not in rendered(report)


def test_foreign_bytes_on_the_dead_letter_topic_are_listed_as_stage_unknown(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = settings.deadletter_topic
    real = dead_letter_record(source_topic=settings.topic("conversations"), partition=1, offset=7, key=b"k",
                              value=b"\xff", reason="decode: invalid envelope", stage="projector",
                              failed_at=datetime(2026, 1, 1, tzinfo=UTC))
    binary, other_json = b"\xff\x00 not a dead letter", json.dumps({"hello": "world"}).encode()

    async def setup_and_list() -> list:
        await ensure_topics(settings)
        metadata = await produce(settings, [(topic, None, real), (topic, b"mine", binary), (topic, None, other_json)])
        assert [m.offset for m in metadata] == [0, 1, 2]
        return await list_dead_letters(settings, 10)

    letters = asyncio.run(setup_and_list())
    by_offset = {(letter.source_topic, letter.offset): letter for letter in letters}
    assert len(letters) == 3
    kept = by_offset[(settings.topic("conversations"), 7)]
    assert (kept.stage, kept.reason, kept.raw_value()) == ("projector", "decode: invalid envelope", b"\xff")
    foreign = by_offset[(topic, 1)]
    assert (foreign.stage, foreign.partition, foreign.raw_key(), foreign.raw_value()) == ("unknown", 0, b"mine", binary)
    assert foreign.value_encoding == "base64" and foreign.reason.startswith("not a dead-letter record: ")
    stray = by_offset[(topic, 2)]
    assert (stray.stage, stray.raw_value(), stray.value_encoding) == ("unknown", other_json, "utf-8")
    assert "Object missing required field" in stray.reason

    # `baton deadletter list` shows them too, rather than failing on them.
    for name, value in {"KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers, "BATON_APP_ID": settings.app_id,
                        "BATON_TOPIC_PREFIX": settings.topic_prefix, "BATON_DATA_DIR": str(settings.data_dir),
                        "COLUMNS": "250"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["deadletter", "list"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if f"{topic}[0]" in line]
    assert len(rows) == 2 and all(" unknown " in row for row in rows), result.output
