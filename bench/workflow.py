"""Workflow benchmark: context search over 1,000,000 archived events, and phase completions through the pipeline.

    .venv/bin/python -m bench.workflow [--events 100000,1000000] [--queries 200] [--tasks 100]
                                       [--skip derive,search,pipeline]

Derive: what filling the search read model costs per archived event when the projector hands it 20 events at a
time (one batch at about 100 messages/s), 200, or DERIVE_EVENTS (what it gathers before deriving), on 20,000
events of a bench database (wall time of one connection, PostgreSQL's work almost all of it).

Search, at each size of --events: the events are written with COPY straight into a bench database on the embedded
PostgreSQL (20 sprints, 2,000 tasks with ~50 workflow events each, the rest other domains' events); the search
read model is built from the archive as the projector's catch-up builds it (timed), then rebuilt from scratch as
replay does (timed), its size printed; then task- and project-scope queries of every shape run through the same
view functions the API calls: uncached (every query reaches PostgreSQL) and cached (the scope-marker probe plus
the in-process cache, what a repeated query costs). EXPLAIN ANALYZE of a few window statements is printed. Pipeline: a fresh runtime (broker, worker, projector, API); phase completions
posted concurrently over HTTP, each answered once the fold's decision is projected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
from psycopg import sql

from agents.workflow.config import WorkflowSettings
from projections.migrations import apply_migrations
from projections.projector import DERIVE_EVENTS
from projections.workflow.search import derive_search
from projections.workflow.views import (
    SearchCache,
    scope_marker,
    search,
    search_statement,
)
from streams.auth import issue_token
from streams.embedded import EmbeddedBroker, EmbeddedPostgres
from streams.runtime import Runtime
from streams.settings import Settings, loaded

ROOT = Path(__file__).resolve().parent.parent
TENANT = "acme"
SPRINTS, TASKS = 20, 2000
WORDS = ("validation error timeout migration login database cache payment invoice refund session token schema "
         "index query deploy rollback config webhook retry queue worker email template report export import "
         "permission audit search ranking latency budget").split()
ES_WORDS = "validación pago factura sesión error búsqueda informe permiso consulta despliegue".split()
TYPES = ["workflow.task.updated", "workflow.phase.completion.requested", "workflow.phase.completed",
         "workflow.artifact.recorded", "workflow.commit.captured", "workflow.bug.logged", "workflow.session.started"]
OTHER_TYPES = ["conversation.message.received", "conversation.message.routed", "steps.step.completed",
               "outbound.message.queued", "learning.day.completed"]
_SEARCH_INDEXES = ("events_task_scope", "events_stream", "events_caused_by")


def _words(rng: random.Random, n: int) -> str:
    # Zipf-like: the first words of the list are the most frequent.
    return " ".join(WORDS[min(int(rng.paretovariate(1.1)) - 1, len(WORDS) - 1)] for _ in range(n))


def _rows(n: int, seed: int = 7):
    """(event_id, tenant, stream, type, occurred_at, payload) rows: workflow tasks first, then other domains'."""
    rng = random.Random(seed)
    end = datetime.now(UTC)
    workflow = min(n // 10, TASKS * 50)
    per_task = max(1, workflow // TASKS)
    for task in range(TASKS):
        code, sprint = f"TSK-{task:04d}", f"SPR-{task % SPRINTS:02d}"
        start = end - timedelta(days=rng.uniform(1, 180))
        for i in range(per_task):
            text = _words(rng, 8) + (" " + rng.choice(ES_WORDS) if rng.random() < 0.2 else "")
            payload = {"task_code": code, "sprint_code": sprint, "description": text, "reason": _words(rng, 3)}
            yield (uuid.UUID(int=rng.getrandbits(128)), TENANT, f"task:{TENANT}:{code}", rng.choice(TYPES),
                   start + timedelta(minutes=10 * i), payload)
    for _ in range(n - per_task * TASKS):
        tenant = TENANT if rng.random() < 0.8 else "globex"
        contact = f"+34{rng.randrange(10**8):08d}"
        payload = {"contact": contact, "text": _words(rng, 10), "lane": rng.choice(["info", "commerce", "support"])}
        yield (uuid.UUID(int=rng.getrandbits(128)), tenant, f"conversation:{tenant}:{contact}", rng.choice(OTHER_TYPES),
               end - timedelta(days=rng.uniform(0, 180)), payload)


def load_events(url: str, n: int) -> float:
    """COPY n generated events into the archive (indexes dropped during the load, rebuilt after); seconds."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        definitions = [row[0] for row in conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'events' AND indexname = ANY(%s)",
            (list(_SEARCH_INDEXES),))]
        for name in _SEARCH_INDEXES:
            conn.execute(f"DROP INDEX IF EXISTS {name}")
        columns = ("event_id, tenant_id, stream_id, type, schema_version, occurred_at, recorded_at, correlation_id,"
                   " actor, payload, topic, partition, \"offset\"")
        with conn.cursor().copy(f"COPY events ({columns}) FROM STDIN") as copy:
            for offset, (event_id, tenant, stream, kind, at, payload) in enumerate(_rows(n)):
                copy.write_row((event_id, tenant, stream, kind, 1, at, at, event_id, "bench", json.dumps(payload),
                                "bench", 0, offset))
        conn.execute("SET maintenance_work_mem = '256MB'")
        for definition in definitions:
            conn.execute(definition)
        conn.execute("VACUUM ANALYZE events")
    return time.perf_counter() - started


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def time_queries(url: str, queries: list[tuple[str, str | None, str]], half_life_s: float,
                       cached: bool) -> list[float]:
    """Milliseconds per query through the view functions (cached: marker probe + cache, after one warm call)."""
    cache = SearchCache(3600, 100_000)
    out = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for scope, scope_id, q in queries:
            key = (TENANT, q, scope, scope_id)
            if cached:
                marker = await scope_marker(conn, TENANT, scope, scope_id)
                cache.put(key, marker, await search(conn, TENANT, q, scope, scope_id, half_life_s=half_life_s))
            started = time.perf_counter()
            marker = await scope_marker(conn, TENANT, scope, scope_id)
            if not cached or cache.get(key, marker) is None:
                await search(conn, TENANT, q, scope, scope_id, half_life_s=half_life_s)
            out.append((time.perf_counter() - started) * 1000)
    return out


def explain(url: str, scope: str, scope_id: str | None, q: str, half_life_s: float, half_lives: float | None) -> str:
    """EXPLAIN ANALYZE of one search statement the view runs (within the last `half_lives`, or unbounded)."""

    async def plan() -> str:
        now = datetime.now(UTC)
        since = None if half_lives is None else now - timedelta(seconds=half_lives * half_life_s)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            statement, params = await search_statement(conn, TENANT, q, scope, scope_id,  # type: ignore[arg-type]
                                                       half_life_s=half_life_s, now=now, since=since)
            cur = await conn.execute(sql.SQL("EXPLAIN (ANALYZE, BUFFERS) ") + statement, params)
            return "\n".join(row[0] for row in await cur.fetchall())

    return asyncio.run(plan())


def bench_derive(postgres: EmbeddedPostgres, events: int = 20_000) -> None:
    url = postgres.fresh_database("bench_workflow_derive")
    asyncio.run(apply_migrations(url, sources=[("workflow", ROOT / "projections" / "workflow" / "migrations")]))
    load_events(url, events)

    async def per_event_us(size: int) -> float:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            ids = [row[0] for row in await (await conn.execute("SELECT event_id FROM events")).fetchall()]
            await conn.execute("TRUNCATE workflow_search, workflow_search_types")
            started = time.perf_counter()
            for i in range(0, len(ids), size):
                async with conn.transaction(), conn.cursor() as cur:
                    await derive_search(cur, "public", ids[i:i + size])
            return (time.perf_counter() - started) * 1e6 / len(ids)

    print(f"\n=== search rows derived from {events:,} archived events, by batch ===")
    for size in (20, 200, DERIVE_EVENTS):
        print(f"batches of {size:>5,}: {asyncio.run(per_event_us(size)):6.1f} µs per event", flush=True)


def build_search(url: str) -> tuple[float, float]:
    """Seconds to build the search read model from the archive (the projector's catch-up), then to rebuild it from
    empty tables (what replay does in its shadow schema)."""

    async def fill() -> float:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            started = time.perf_counter()
            async with conn.transaction(), conn.cursor() as cur:
                await derive_search(cur, "public", None)
            return time.perf_counter() - started

    build = asyncio.run(fill())
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE workflow_search, workflow_search_types")
    rebuild = asyncio.run(fill())
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE workflow_search")
        conn.execute("VACUUM ANALYZE workflow_search_types")
    return build, rebuild


def matching(url: str, q: str) -> float:
    """The share of the searched tenant's events a single word matches."""
    async def count() -> float:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            from projections.workflow.search import text_query
            text = await text_query(conn, q)
            cur = await conn.execute("SELECT count(*) FILTER (WHERE doc @@ %s::tsquery)::float8 / count(*)"
                                     " FROM workflow_search WHERE tenant_id = %s", (text.match, TENANT))
            return (await cur.fetchone())[0]
    return asyncio.run(count())


def bench_search(postgres: EmbeddedPostgres, n: int, count: int) -> None:
    url = postgres.fresh_database(f"bench_workflow_search_{n}")
    asyncio.run(apply_migrations(url, sources=[("workflow", ROOT / "projections" / "workflow" / "migrations")]))
    print(f"\n=== {n:,} events ===\nloading {n:,} events with COPY …", flush=True)
    seconds = load_events(url, n)
    with psycopg.connect(url) as conn:
        size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('events')), count(*) FROM events").fetchone()
    print(f"archive loaded in {seconds:.0f} s: {size[1]:,} rows, {size[0]} with indexes", flush=True)
    build, rebuild = build_search(url)
    with psycopg.connect(url) as conn:
        table, indexes, types = conn.execute(
            "SELECT pg_size_pretty(pg_table_size('workflow_search')), pg_size_pretty(pg_indexes_size('workflow_search')),"
            " pg_size_pretty(pg_total_relation_size('workflow_search_types'))").fetchone()
        gin = conn.execute("SELECT pg_size_pretty(pg_relation_size('workflow_search_doc'))").fetchone()[0]
    print(f"search index: built in {build:.1f} s ({n / build:,.0f} events/s), rebuilt in {rebuild:.1f} s;"
          f" table {table}, its indexes {indexes} (GIN {gin}), types {types}", flush=True)
    rng = random.Random(11)
    half_life_s = loaded(WorkflowSettings).search_half_life_hours * 3600
    shapes = {
        "task": [("task", f"TSK-{rng.randrange(TASKS):04d}", rng.choice(WORDS[:12])) for _ in range(count)],
        "project (rare word)": [("project", None, rng.choice(WORDS[20:31])) for _ in range(count)],
        "project (two words)": [("project", None, f"{rng.choice(WORDS[8:20])} {rng.choice(WORDS[8:20])}")
                                for _ in range(count)],
        "project (phrase)": [("project", None, f'"{rng.choice(WORDS[:4])} {rng.choice(WORDS[:4])}"')
                             for _ in range(count)],
        # WORDS[4] is in about a quarter of all events (printed below).
        "project (25% word)": [("project", None, WORDS[4]) for _ in range(count // 4)],
        "project (Spanish word)": [("project", None, rng.choice(ES_WORDS)) for _ in range(count)],
    }
    print(f"'{WORDS[4]}' matches {matching(url, WORDS[4]):.0%} of {TENANT}'s events; '{WORDS[25]}' (rare)"
          f" {matching(url, WORDS[25]):.1%}; '{ES_WORDS[2]}' (Spanish) {matching(url, ES_WORDS[2]):.2%}")
    print(f"\n{'scope':<24}{'mode':<9}{'p50 ms':>9}{'p99 ms':>9}{'queries':>9}")
    for name, queries in shapes.items():
        for cached in (False, True):
            times = asyncio.run(time_queries(url, queries, half_life_s, cached))
            print(f"{name:<24}{'cached' if cached else 'cold':<9}{statistics.median(times):>9.2f}"
                  f"{pct(times, 99):>9.2f}{len(times):>9}", flush=True)
    for scope, scope_id, q, window in (("task", "TSK-0042", "error", None), ("project", None, WORDS[4], 1 / 64),
                                       ("project", None, WORDS[25], None)):
        within = f"last {window} half-lives" if window else "unbounded"
        print(f"\nEXPLAIN ANALYZE {scope} {scope_id or ''} {q!r} ({within}):\n"
              + explain(url, scope, scope_id, q, half_life_s, window))


async def completions(runtime: Runtime, tasks: int, concurrency: int) -> None:
    token = issue_token(runtime.settings, TENANT)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=runtime.api_url, headers={"Authorization": f"Bearer {token}"},
                                 timeout=60, limits=limits) as api:
        run = uuid.uuid4().hex[:6]
        codes = [f"B{run}-{i}" for i in range(tasks)]
        for code in codes:
            (await api.post("/v1/tasks", json={"task_code": code, "title": code})).raise_for_status()
        gate = asyncio.Semaphore(concurrency)

        async def start(code: str) -> None:
            async with gate:
                (await api.post(f"/v1/tasks/{code}/start", json={})).raise_for_status()

        await asyncio.gather(*(start(c) for c in codes))
        latencies: list[float] = []

        async def walk(code: str) -> None:
            for _ in range(6):
                async with gate:
                    began = time.perf_counter()
                    answer = await api.post(f"/v1/tasks/{code}/phases/complete",
                                            json={"override": True, "reason": "bench"})
                    latencies.append((time.perf_counter() - began) * 1000)
                    if answer.status_code != 200:
                        raise RuntimeError(f"{code}: {answer.status_code} {answer.text[:200]}")

        began = time.perf_counter()
        await asyncio.gather(*(walk(c) for c in codes))
        seconds = time.perf_counter() - began
    done = len(latencies)
    print(f"\nphase completions through the pipeline: {done} in {seconds:.1f} s = {done / seconds:.0f}/s "
          f"({tasks} tasks × 6 phases, {concurrency} in flight); request → decision projected: "
          f"p50 {statistics.median(latencies):.0f} ms, p99 {pct(latencies, 99):.0f} ms")


def bench_pipeline(tmp: Path, postgres: EmbeddedPostgres, tasks: int, concurrency: int) -> None:
    broker = EmbeddedBroker().start(tmp / "broker.log")
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka_bootstrap_servers=broker.bootstrap_servers, database_url=postgres.fresh_database("bench_workflow_pipe"),
        broker_profile="embedded", app_id=f"bench-wf-{run}", topic_prefix=f"bench-wf-{run}.",
        tenants_file=ROOT / "examples" / "tenants.toml", data_dir=tmp / "runtime", api_port=0,
    )
    try:
        with Runtime(settings).start() as runtime:
            asyncio.run(completions(runtime, tasks, concurrency))
    finally:
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", default="100000,1000000", help="comma-separated archive sizes")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=100, help="tasks walked through six phases in the pipeline run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--skip", default="", help="comma-separated: derive, search, pipeline")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    tmp = Path(tempfile.mkdtemp(prefix="baton-bench-workflow-"))
    postgres = EmbeddedPostgres(tmp / "pgdata").start()
    try:
        if "derive" not in skip:
            bench_derive(postgres)
        if "search" not in skip:
            for n in (int(size) for size in args.events.split(",")):
                bench_search(postgres, n, args.queries)
        if "pipeline" not in skip:
            bench_pipeline(tmp, postgres, args.tasks, args.concurrency)
    finally:
        postgres.stop()
    sys.stdout.flush()


if __name__ == "__main__":
    main()

