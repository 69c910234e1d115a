"""Workflow views: tasks, sprints by phase, bugs, request decisions and scoped context search (read-only)."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from projections import ProjectionError
from projections.connections import Source, connection
from projections.workflow.search import (
    TextQuery,
    relevance,
    relevance_bound,
    text_query,
)
from schemas.bugrules import DEFAULT_RULES_VERSION
from schemas.workflow import sprint_stream_id, task_stream_id

Scope = Literal["session", "task", "sprint", "project"]
SCOPES: tuple[Scope, ...] = ("session", "task", "sprint", "project")
MARK = "**"
WINDOWED_SCOPES = frozenset({"project", "sprint"})
# Windows a large scope ranks, newest first, in half-lives: the first, the growth factor, and the widest before
# the rest of the scope is ranked at once.
FIRST_WINDOW, WINDOW_GROWTH, LAST_WINDOW = 1 / 64, 4.0, 16.0
_HEADLINE = f"StartSel={MARK}, StopSel={MARK}, MaxWords=24, MinWords=8, MaxFragments=2, FragmentDelimiter=\" … \""


class UnknownScope(ProjectionError):
    """A search scope id that names no session, task or sprint of the tenant."""


_TASK_COLUMNS = ("task_code", "sprint_code", "title", "type", "description", "status", "phase", "active_session",
                 "phases", "fields", "sessions", "history", "overrides", "rejections", "artifacts", "commits",
                 "pull_request", "created_at", "updated_at")


async def live_rules_version(source: Source, tenant_id: str) -> int:
    """The bug rules version the tenant's bug list groups by."""
    async with connection(source) as conn:
        cur = await conn.execute("SELECT version FROM workflow_bug_rules WHERE tenant_id = %s", (tenant_id,))
        row = await cur.fetchone()
    return row[0] if row else DEFAULT_RULES_VERSION


async def get_task(source: Source, tenant_id: str, task_code: str) -> dict[str, Any] | None:
    """A task with its phase, history, overrides, rejections, artifacts, commits, PR and bugs."""
    async with connection(source) as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            sql.SQL("SELECT {} FROM workflow_tasks WHERE stream_id = %s").format(
                sql.SQL(", ").join(map(sql.Identifier, _TASK_COLUMNS))),
            (task_stream_id(tenant_id, task_code),),
        )
        task = await cur.fetchone()
        if task is None:
            return None
        task["bugs"] = await list_bugs(conn, tenant_id, version=await live_rules_version(conn, tenant_id),
                                       task_code=task_code)
    return task


async def task_phase(source: Source, tenant_id: str, task_code: str) -> tuple[bool, str | None]:
    """(whether the task exists, its current phase): its creation may be archived before its state is projected."""
    async with connection(source) as conn:
        cur = await conn.execute("SELECT phase FROM workflow_tasks WHERE stream_id = %s",
                                 (task_stream_id(tenant_id, task_code),))
        row = await cur.fetchone()
        if row is not None:
            return True, row[0]
        cur = await conn.execute("SELECT 1 FROM events WHERE tenant_id = %s AND task_code = %s"
                                 " AND type = 'workflow.task.created' LIMIT 1", (tenant_id, task_code))
        return await cur.fetchone() is not None, None


async def archived(source: Source, event_id: uuid.UUID, timeout_s: float, poll_s: float = 0.02) -> bool:
    """Whether the event reached the events archive within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with connection(source) as conn:
            cur = await conn.execute("SELECT 1 FROM events WHERE event_id = %s", (event_id,))
            if await cur.fetchone() is not None:
                return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll_s)


async def list_sprints(source: Source, tenant_id: str) -> list[dict[str, Any]]:
    """The tenant's sprints with their task counts, newest first (a sprint only named by tasks included)."""
    async with connection(source) as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT coalesce(s.sprint_code, t.sprint_code) AS sprint_code, s.title, s.status, count(t.task_code) AS tasks,"
            " greatest(max(s.updated_at), max(t.updated_at)) AS updated_at"
            " FROM (SELECT * FROM workflow_sprints WHERE tenant_id = %(tenant)s) s"
            " FULL JOIN (SELECT * FROM workflow_tasks WHERE tenant_id = %(tenant)s AND sprint_code IS NOT NULL) t"
            "   ON t.sprint_code = s.sprint_code"
            " GROUP BY 1, 2, 3 ORDER BY 5 DESC NULLS LAST, 1", {"tenant": tenant_id})
        return await cur.fetchall()


async def get_sprint(source: Source, tenant_id: str, sprint_code: str) -> dict[str, Any] | None:
    """A sprint and its tasks grouped by phase (in template order; `complete` last)."""
    async with connection(source) as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute("SELECT sprint_code, title, status, description, fields, created_at, updated_at"
                          " FROM workflow_sprints WHERE stream_id = %s", (sprint_stream_id(tenant_id, sprint_code),))
        sprint = await cur.fetchone()
        await cur.execute("SELECT task_code, title, type, status, phase, phases FROM workflow_tasks"
                          " WHERE tenant_id = %s AND sprint_code = %s ORDER BY task_code", (tenant_id, sprint_code))
        tasks = await cur.fetchall()
    if sprint is None and not tasks:
        return None
    order: dict[str, int] = {}
    for task in tasks:
        for index, phase in enumerate(task["phases"]):
            order[phase] = min(order.get(phase, index), index)
    by_phase: dict[str, list[dict[str, Any]]] = {}
    for task in sorted(tasks, key=lambda t: order.get(t["phase"], len(order)) if t["phase"] else len(order) + 1):
        by_phase.setdefault(task["phase"] or "complete", []).append(
            {k: task[k] for k in ("task_code", "title", "type", "status")})
    return {**(sprint or {"sprint_code": sprint_code}), "tasks": len(tasks), "tasks_by_phase": by_phase}


async def list_bugs(source: Source, tenant_id: str, *, version: int, task_code: str | None = None,
                    min_count: int = 1, classification: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The tenant's bugs grouped under one rules version, most frequent first."""
    async with connection(source) as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT fingerprint, rules_version, classification, message, normalized_message, file, line, first_seen,"
            " last_seen, occurrences, tasks, last_task FROM workflow_bugs"
            " WHERE tenant_id = %(tenant)s AND rules_version = %(version)s AND occurrences >= %(min)s"
            " AND (%(task)s::text IS NULL OR tasks ? %(task)s) AND (%(class)s::text IS NULL OR classification = %(class)s)"
            " ORDER BY occurrences DESC, last_seen DESC, fingerprint LIMIT %(limit)s",
            {"tenant": tenant_id, "version": version, "min": min_count, "task": task_code, "class": classification,
             "limit": limit},
        )
        return await cur.fetchall()


async def decision_of(source: Source, tenant_id: str, request_id: uuid.UUID, types: Collection[str],
                      timeout_s: float, poll_s: float = 0.02) -> dict[str, dict[str, Any]] | None:
    """The events a request caused, by type, once one of `types` is projected; None after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with connection(source) as conn:
            cur = await conn.execute("SELECT type, payload FROM events WHERE causation_id = %s AND tenant_id = %s",
                                     (request_id, tenant_id))
            caused = {kind: payload for kind, payload in await cur.fetchall()}
        if any(kind in caused for kind in types):
            return caused
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(poll_s)


async def _scope(conn: AsyncConnection, tenant_id: str, scope: Scope, scope_id: str | None) -> tuple[sql.Composable, dict]:
    """The WHERE clause (over events e) and parameters selecting a scope's events."""
    params: dict[str, Any] = {"tenant": tenant_id}
    if scope == "project":
        return sql.SQL("e.tenant_id = %(tenant)s"), params
    if not scope_id:
        raise UnknownScope(f"scope {scope} needs an id")
    if scope == "task":
        params["task"] = scope_id
        return sql.SQL("e.tenant_id = %(tenant)s AND e.task_code = %(task)s"), params
    if scope == "sprint":
        cur = await conn.execute("SELECT task_code FROM workflow_tasks WHERE tenant_id = %s AND sprint_code = %s",
                                 (tenant_id, scope_id))
        params |= {"tasks": [code for (code,) in await cur.fetchall()], "sprint": sprint_stream_id(tenant_id, scope_id)}
        return sql.SQL("e.tenant_id = %(tenant)s AND (e.task_code = ANY(%(tasks)s) OR e.stream_id = %(sprint)s)"), params
    cur = await conn.execute("SELECT task_code, started_at, ended_at FROM workflow_sessions"
                             " WHERE tenant_id = %s AND session_key = %s", (tenant_id, scope_id))
    row = await cur.fetchone()
    if row is None:
        raise UnknownScope(f"no session {scope_id}")
    params |= {"task": row[0], "start": row[1], "end": row[2] or datetime.max.replace(tzinfo=row[1].tzinfo)}
    return sql.SQL("e.tenant_id = %(tenant)s AND e.task_code = %(task)s"
                   " AND e.occurred_at BETWEEN %(start)s AND %(end)s"), params


_TEXT = sql.SQL("replace(ev.type, '.', ' ') || ': ' || coalesce((SELECT string_agg(v, ' · ') FROM jsonb_each_text(ev.payload) AS kv(k, v)), '')")
_RESULT = ("event_id", "type", "stream_id", "task_code", "occurred_at", "score")


async def search_statement(conn: AsyncConnection, tenant_id: str, query: str | TextQuery, scope: Scope,
                           scope_id: str | None, *, half_life_s: float, limit: int = 10, now: datetime | None = None,
                           since: datetime | None = None, until: datetime | None = None) -> tuple[sql.Composed, dict]:
    """The statement ranking one time window of a scope: the top `limit` by relevance × recency decay.

    score = relevance × 2^-(age / half-life), relevance in [0, 1] (search.relevance); ties by time, then event id.
    The window is occurred_at in [since, until) (None: unbounded on that side).
    """
    text = query if isinstance(query, TextQuery) else await text_query(conn, query)
    where, params = await _scope(conn, tenant_id, scope, scope_id)
    params |= {"limit": limit, "decay": math.log(2) / half_life_s, "now": now or datetime.now(UTC),
               "since": since, "until": until, "match": text.match}
    match = sql.SQL("") if text.empty else sql.SQL(" AND e.doc @@ %(match)s::tsquery")
    if since is not None:
        match += sql.SQL(" AND e.occurred_at >= %(since)s")
    if until is not None:
        match += sql.SQL(" AND e.occurred_at < %(until)s")
    statement = sql.SQL(
        "SELECT e.event_id, e.type, e.stream_id, e.task_code, e.occurred_at,"
        " {relevance} * exp(-%(decay)s * greatest(extract(epoch FROM %(now)s - e.occurred_at), 0)) AS score"
        " FROM workflow_search e WHERE {where}{match} ORDER BY score DESC, e.occurred_at DESC, e.event_id DESC"
        " LIMIT %(limit)s"
    ).format(relevance=relevance(text), where=where, match=match)
    return statement, params


def _order(row: dict[str, Any]) -> tuple:
    return (row["score"], row["occurred_at"], row["event_id"])


async def search(source: Source, tenant_id: str, query: str, scope: Scope, scope_id: str | None, *,
                 half_life_s: float, limit: int = 10, now: datetime | None = None) -> list[dict[str, Any]]:
    """Events of the scope matching the query, by relevance × recency decay, with marked snippets.

    Project and sprint scopes rank newest-first, window by window (FIRST_WINDOW half-lives, then ×WINDOW_GROWTH,
    then everything older): once `limit` results are in hand and the limit-th score is at least the highest
    relevance the tenant's events can have (search.relevance_bound) times the decay at the window's older end,
    no older event can beat it, and the answer is exact.
    """
    now = now or datetime.now(UTC)
    async with connection(source) as conn:
        text = await text_query(conn, query)

        async def top(since: datetime | None, until: datetime | None) -> list[dict[str, Any]]:
            statement, params = await search_statement(conn, tenant_id, text, scope, scope_id,
                                                       half_life_s=half_life_s, limit=limit, now=now, since=since,
                                                       until=until)
            cur = conn.cursor(row_factory=dict_row)
            # Never a prepared (generic) plan: it cannot see the window or the terms and picks the wrong index.
            await cur.execute(statement, params, prepare=False)
            return await cur.fetchall()

        if scope not in WINDOWED_SCOPES:
            found = await top(None, None)
        else:
            bound = await relevance_bound(conn, tenant_id, text)
            found, until, width = [], None, FIRST_WINDOW
            while True:
                since = None if width > LAST_WINDOW else now - timedelta(seconds=width * half_life_s)
                found = sorted([*found, *await top(since, until)], key=_order, reverse=True)[:limit]
                if since is None or (len(found) == limit and found[-1]["score"] >= bound * 2 ** -width):
                    break
                until, width = since, width * WINDOW_GROWTH
        return await _snippets(conn, text, found)


async def _snippets(conn: AsyncConnection, text: TextQuery, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results with a snippet each: the type and payload strings, matched words marked (English, else Spanish)."""
    if not found:
        return []
    if text.empty:
        snippet = sql.SQL("left({}, 200)").format(_TEXT)
    else:
        snippet = sql.SQL(
            "CASE WHEN position({mark} in ts_headline('english', {text}, %(q)s::tsquery, {opts})) > 0"
            " THEN ts_headline('english', {text}, %(q)s::tsquery, {opts})"
            " ELSE ts_headline('spanish', {text}, %(q)s::tsquery, {opts}) END"
        ).format(mark=sql.Literal(MARK), text=_TEXT, opts=sql.Literal(_HEADLINE))
    cur = await conn.execute(sql.SQL("SELECT ev.event_id, {} FROM events ev WHERE ev.event_id = ANY(%(ids)s)")
                             .format(snippet), {"ids": [r["event_id"] for r in found], "q": text.highlight},
                             prepare=False)
    snippets = dict(await cur.fetchall())
    return [{**{k: r[k] for k in _RESULT}, "snippet": snippets.get(r["event_id"], "")} for r in found]


async def search_summary(source: Source, tenant_id: str, query: str, scope: Scope, scope_id: str | None) -> dict[str, Any]:
    """Counts by event type, first and last event time and the span of the scope's matching events."""
    async with connection(source) as conn:
        text = await text_query(conn, query)
        where, params = await _scope(conn, tenant_id, scope, scope_id)
        params["match"] = text.match
        match = sql.SQL("") if text.empty else sql.SQL(" AND e.doc @@ %(match)s::tsquery")
        cur = await conn.execute(sql.SQL(
            "SELECT e.type, count(*), min(e.occurred_at), max(e.occurred_at) FROM workflow_search e WHERE {where}{match}"
            " GROUP BY e.type ORDER BY count(*) DESC, e.type").format(where=where, match=match), params, prepare=False)
        rows = await cur.fetchall()
    first = min((r[2] for r in rows), default=None)
    last = max((r[3] for r in rows), default=None)
    return {
        "total": sum(r[1] for r in rows), "by_type": [{"type": r[0], "count": r[1]} for r in rows],
        "first": first, "last": last, "span_seconds": (last - first).total_seconds() if first and last else 0.0,
    }


async def scope_marker(source: Source, tenant_id: str, scope: Scope, scope_id: str | None) -> datetime | None:
    """When the scope's newest search row was written: a cached answer older than this is stale."""
    async with connection(source) as conn:
        if scope == "project":
            cur = await conn.execute("SELECT max(projected_at) FROM workflow_search_types WHERE tenant_id = %s",
                                     (tenant_id,))
        else:
            where, params = await _scope(conn, tenant_id, scope, scope_id)
            cur = await conn.execute(sql.SQL("SELECT max(e.projected_at) FROM workflow_search e WHERE {}").format(where),
                                     params)
        row = await cur.fetchone()
    return row[0] if row else None


class SearchCache:
    """Search answers kept for ttl_s, and dropped as soon as their scope's marker moves (a new event landed)."""

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, tuple[float, Any, Any]] = OrderedDict()

    def get(self, key: tuple, marker: Any) -> Any | None:
        found = self._entries.get(key)
        if found is None:
            return None
        expires, cached_marker, value = found
        if time.monotonic() >= expires or cached_marker != marker:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: tuple, marker: Any, value: Any) -> None:
        if self.max_entries == 0 or self.ttl_s == 0:
            return
        self._entries[key] = (time.monotonic() + self.ttl_s, marker, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
