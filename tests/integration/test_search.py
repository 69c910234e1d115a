"""Context search on a generated corpus, through the projector and the query API: the top 10 equal a brute-force
ranking by the documented score (computed here from the words each event holds, not by the product), inflected
forms find each other, one tenant's words are invisible to another, and replay rebuilds and compares the index."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

from projections.replay import replay
from projections.workflow.routes import query_router
from schemas import Envelope, encode
from schemas.workflow import PhaseOverridden, TaskUpdated, task_stream_id
from streams.auth import issue_token
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.fixtures.projector import Projector, caught_up, produce, query
from tests.fixtures.waiting import eventually_async

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
HALF_LIFE_S = 168 * 3600.0  # the default BATON_WORKFLOW_SEARCH_HALF_LIFE_HOURS
# Words whose English and Spanish stems are their own and no other's: what the brute force can count by spelling.
VOCABULARY = ("zebra", "falcon", "quartz", "meadow", "copper", "lantern", "harbor", "violet", "cactus", "glacier",
              "walnut", "pepper")
# The documented score: relevance = mean over the query's words (a phrase is one) of 1.0 when found among the
# type's words, 0.5 when found only in the payload's text; score = relevance × 2^-(age / half-life).
TYPE_WEIGHT, TEXT_WEIGHT = 1.0, 0.5
# What a query word counts as found, for the brute force (the test's own table, not the product's).
OVERRIDE = {"override", "overrides", "overridden", "overriding", "overrode"}


def updated(tenant: str, task: str, text: str, at: datetime) -> Envelope:
    event_id = uuid.uuid4()
    return Envelope(event_id=event_id, type="workflow.task.updated", schema_version=1, tenant_id=tenant,
                    stream_id=task_stream_id(tenant, task), occurred_at=at, recorded_at=at, correlation_id=event_id,
                    actor="test", payload=TaskUpdated(task_code=task, description=text))


def overridden(tenant: str, task: str, reason: str, at: datetime) -> Envelope:
    event_id = uuid.uuid4()
    return Envelope(event_id=event_id, type="workflow.phase.overridden", schema_version=1, tenant_id=tenant,
                    stream_id=task_stream_id(tenant, task), occurred_at=at, recorded_at=at, correlation_id=event_id,
                    actor="test", payload=PhaseOverridden(task_code=task, session_key="sess-1", phase="plan",
                                                          actor="lead", reason=reason))


def on_workflow_topic(settings: Settings, log: list[Envelope]) -> list:
    return [(settings.topic("workflow"), e.stream_id.encode(), encode(e)) for e in log]


@asynccontextmanager
async def searched(settings: Settings, log: list[Envelope]) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    """`log` on the workflow topic, projected (archive and search index), and API clients for acme and globex."""
    await ensure_topics(settings)
    produced = on_workflow_topic(settings, log)
    await produce(settings, produced)
    async with Projector(settings):
        await eventually_async(lambda: caught_up(settings, produced), "projection")
    app = FastAPI()
    app.include_router(query_router())
    app.state.settings = settings
    async with AsyncConnectionPool(settings.database_url, min_size=1, max_size=2, open=False) as pool:
        app.state.pool = pool
        clients = {tenant: httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://baton",
                                             headers={"Authorization": f"Bearer {issue_token(settings, tenant)}"})
                   for tenant in ("acme", "globex")}
        try:
            yield clients
        finally:
            for client in clients.values():
                await client.aclose()


async def results(client: httpx.AsyncClient, q: str, **params: object) -> list[dict]:
    response = await client.get("/v1/search", params={"q": q, "no_cache": True, **params})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def corpus(rng: random.Random) -> list[Envelope]:
    """800 events over 120 days: descriptions of vocabulary words (a few words only in old events, some only in
    recent ones), and phase overrides whose type holds 'overridden'."""
    log = []
    for i in range(800):
        age = timedelta(days=rng.uniform(0, 120), microseconds=rng.randrange(10**6))
        pool = VOCABULARY[:8] + (VOCABULARY[8:10] if age > timedelta(days=40) else VOCABULARY[10:])
        words = " ".join(rng.choice(pool) for _ in range(rng.randint(1, 6)))
        task = f"RNK-{i % 40}"
        if i % 17 == 0:
            log.append(overridden("acme", task, words, NOW - age))
        elif i % 23 == 0:
            log.append(updated("acme", task, words + " then an override", NOW - age))
        else:
            log.append(updated("acme", task, words, NOW - age))
    return log


def brute_force(log: list[Envelope], units: list[tuple[str, ...]], required: list[list[tuple[str, ...]]],
                excluded: list[tuple[str, ...]] = (), task: str | None = None, *,
                now: datetime) -> list[tuple[float, Envelope]]:
    """The top 10 by the documented score at `now`, from each event's words: `units` rank, `required` is the AND
    of ORs the event must match, `excluded` words it must not hold."""

    def has(words: list[str], unit: tuple[str, ...]) -> bool:
        found = [OVERRIDE if w in OVERRIDE else {w} for w in unit]
        return any(all(words[i + k] in found[k] for k in range(len(unit))) for i in range(len(words) - len(unit) + 1))

    ranked = []
    for event in log:
        if task is not None and event.payload.task_code != task:
            continue
        type_words = event.type.split(".")
        text = event.payload.description if isinstance(event.payload, TaskUpdated) else event.payload.reason
        words = text.split()
        if not all(any(has(type_words, u) or has(words, u) for u in group) for group in required):
            continue
        if any(has(type_words, u) or has(words, u) for u in excluded):
            continue
        relevance = sum(TYPE_WEIGHT if has(type_words, u) else TEXT_WEIGHT if has(words, u) else 0.0
                        for u in units) / len(units)
        age_s = (now - event.occurred_at).total_seconds()
        ranked.append((relevance * 2 ** (-age_s / HALF_LIFE_S), event))
    ranked.sort(key=lambda pair: (pair[0], pair[1].occurred_at, pair[1].event_id), reverse=True)
    return ranked[:10]


async def test_the_top_ten_are_the_brute_force_top_ten_of_the_documented_score(settings: Settings) -> None:
    log = corpus(random.Random(23))
    # (query, units that rank, required groups, excluded words, task)
    cases = [
        ("zebra", [("zebra",)], [[("zebra",)]], [], None),
        ("glacier", [("glacier",)], [[("glacier",)]], [], None),  # only in events older than 40 days
        ("walnut", [("walnut",)], [[("walnut",)]], [], None),  # only in the last 40 days
        ("zebra falcon", [("zebra",), ("falcon",)], [[("zebra",)], [("falcon",)]], [], None),
        ('"zebra falcon"', [("zebra", "falcon")], [[("zebra", "falcon")]], [], None),
        ("override", [("override",)], [[("override",)]], [], None),  # in the type of some, the text of others
        ("override quartz", [("override",), ("quartz",)], [[("override",)], [("quartz",)]], [], None),
        ("glacier or walnut", [("glacier",), ("walnut",)], [[("glacier",), ("walnut",)]], [], None),
        ("meadow -copper", [("meadow",)], [[("meadow",)]], [("copper",)], None),
        ("copper", [("copper",)], [[("copper",)]], [], "RNK-7"),
    ]
    async with searched(settings, log) as clients:
        for q, units, required, excluded, task in cases:
            params = {"scope": "task", "id": task} if task else {}
            asked = datetime.now(UTC)  # the API scores at its own clock, a few milliseconds later
            found = await results(clients["acme"], q, **params)
            expected = brute_force(log, units, required, excluded, task, now=asked)
            assert [r["event_id"] for r in found] == [str(e.event_id) for _, e in expected], q
            for hit, (score, _) in zip(found, expected, strict=True):
                assert math.isclose(hit["score"], score, rel_tol=1e-3), q
            assert len(found) == (10 if task is None else len(expected)) > 0, q


# (what an event says, a query that must find it): inflections of one word find each other, in English and Spanish.
FORMS = [
    ("the gate was overridden by the lead", "override"),
    ("please override the gate", "overridden"),
    ("she overrides every gate", "overriding"),
    ("the build failed twice", "failure"),
    ("a failure in the pipeline", "fail"),
    ("it fails on Mondays", "failed"),
    ("the release was rejected", "rejection"),
    ("deployment of the api", "deployed"),
    ("we ran the suite", "running"),
    ("la validación del formulario", "validaciones"),
    ("las validaciones fallaron", "validación"),
    ("el despliegue terminó", "desplegar"),
    ("el pago falló", "fallo"),
    ("pagos pendientes", "pagar"),
    ("tres facturas abiertas", "factura"),
    ("búsquedas lentas", "búsqueda"),
]


async def test_word_forms_find_each_other_and_the_type_is_searchable(settings: Settings) -> None:
    at = NOW - timedelta(hours=1)
    log = [updated("acme", f"FRM-{i}", text, at) for i, (text, _) in enumerate(FORMS)]
    log.append(overridden("acme", "FRM-TYPE", "the lead said so", at))
    async with searched(settings, log) as clients:
        acme = clients["acme"]
        for i, (text, q) in enumerate(FORMS):
            found = await results(acme, q, scope="task", id=f"FRM-{i}")
            assert [r["event_id"] for r in found] == [str(log[i].event_id)], (text, q)
            assert "**" in found[0]["snippet"], (text, q)
        # The type's words: a phase override is found by every form of "override", and by its reason's words.
        for q in ("override", "overrides", "overridden", '"phase override"', "lead"):
            found = await results(acme, q, scope="task", id="FRM-TYPE")
            assert [r["event_id"] for r in found] == [str(log[-1].event_id)], q
        assert await results(acme, "zebra", scope="task", id="FRM-TYPE") == []


async def test_one_tenants_words_with_another_tenants_token_find_nothing(settings: Settings) -> None:
    at = NOW - timedelta(minutes=5)
    log = [updated("acme", "ISO-1", "zebra crossing secret", at), updated("globex", "ISO-2", "falcon nest", at)]
    async with searched(settings, log) as clients:
        acme, globex = clients["acme"], clients["globex"]
        assert [r["event_id"] for r in await results(acme, "zebra")] == [str(log[0].event_id)]
        assert await results(globex, "zebra") == []
        assert await results(globex, "zebra", scope="task", id="ISO-1") == []
        assert [r["event_id"] for r in await results(globex, "")] == [str(log[1].event_id)]
        summary = (await globex.get("/v1/search", params={"q": "zebra", "summary": True})).json()["summary"]
        assert summary["total"] == 0
        assert await results(acme, "falcon") == []


async def test_replay_rebuilds_and_compares_the_search_index_and_a_restart_fills_what_is_missing(
    settings: Settings,
) -> None:
    at = NOW - timedelta(minutes=5)
    log = [updated("acme", "RPL-1", "zebra one", at), updated("acme", "RPL-2", "zebra two", at),
           overridden("acme", "RPL-3", "falcon", at)]
    async with searched(settings, log):
        pass
    # (No worker ran: the task read models are not live, so only the search tables are compared here.)
    tables = {t.table: t for t in (await replay(settings, verify=True)).tables}
    assert tables["workflow_search"].clean and tables["workflow_search_types"].clean
    assert (tables["workflow_search"].compared, tables["workflow_search_types"].compared) == (3, 2)

    await query(settings, "UPDATE workflow_search SET doc = to_tsvector('simple', 'tampered') WHERE event_id = %s",
                (log[0].event_id,))
    await query(settings, "DELETE FROM workflow_search WHERE event_id = %s", (log[1].event_id,))
    report = await replay(settings, verify=True)
    search = {t.table: t for t in report.tables}["workflow_search"]
    assert (search.differing, search.missing_in_live, search.missing_in_shadow) == (1, 1, 0)
    assert {(m.key, m.kind, m.columns) for m in search.samples} == {
        (str(log[0].event_id), "differs", ("doc",)), (str(log[1].event_id), "missing_in_live", ())}

    # A projector that starts indexes every archived event the search table lacks (a stop between a batch and
    # its indexing leaves no hole).
    async with Projector(settings):
        await eventually_async(lambda: _indexed(settings, log[1].event_id), "the missing row indexed at start")
    async with await psycopg.AsyncConnection.connect(settings.database_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM workflow_search")
        assert (await cur.fetchone())[0] == 3


async def _indexed(settings: Settings, event_id: uuid.UUID) -> bool:
    try:
        return bool(await query(settings, "SELECT 1 FROM workflow_search WHERE event_id = %s", (event_id,)))
    except psycopg.errors.UndefinedTable:  # the projector has not created it yet
        return False


async def test_a_held_up_search_index_holds_back_no_projection(settings: Settings) -> None:
    """Indexing runs beside the projection: while another session keeps the search table from being written, the
    archive goes on taking events; once it lets go, every event is indexed."""
    await ensure_topics(settings)
    at = NOW - timedelta(minutes=5)
    warm_up, first, second = ([updated("acme", f"HLD-{n}", text, at)] for n, text in
                              enumerate(("warm up", "zebra one", "falcon two")))

    async with await psycopg.AsyncConnection.connect(settings.database_url) as blocker, Projector(settings):
        await produce(settings, on_workflow_topic(settings, warm_up))
        await eventually_async(lambda: _indexed(settings, warm_up[0].event_id), "the projector indexing")
        await blocker.execute("LOCK TABLE workflow_search IN SHARE MODE")  # held until the rollback below
        await produce(settings, on_workflow_topic(settings, first))
        await eventually_async(lambda: _waiting_on_a_lock(settings), "the indexing of the first event held up")

        await produce(settings, on_workflow_topic(settings, second))
        every = on_workflow_topic(settings, warm_up + first + second)
        await eventually_async(lambda: caught_up(settings, every), "both archived")
        assert await _waiting_on_a_lock(settings) and not await _indexed(settings, first[0].event_id)

        await blocker.rollback()
        for event in first + second:
            await eventually_async(lambda e=event: _indexed(settings, e.event_id), f"{event.payload.task_code} indexed")


async def _waiting_on_a_lock(settings: Settings) -> bool:
    """The projector's session for derived read models, named so for an operator, waits on the search table."""
    return bool(await query(settings, "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
                                      " AND application_name = 'baton projector: derived read models'"
                                      " AND wait_event_type = 'Lock' AND query LIKE '%%workflow_search%%'"))
