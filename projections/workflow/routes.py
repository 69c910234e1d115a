"""The workflow query routes: tasks, sprints, bugs and context search (the commands: streams.domains.workflow.commands)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from agents.workflow.config import WorkflowSettings
from projections.routes import Pool
from projections.workflow.views import (
    Scope,
    SearchCache,
    UnknownScope,
    get_sprint,
    get_task,
    list_bugs,
    list_sprints,
    live_rules_version,
    scope_marker,
    search,
    search_summary,
)
from streams.auth import Tenant
from streams.settings import loaded


def query_router() -> APIRouter:
    """Query routes of the workflow domain; the tenant (the project) always comes from the bearer token."""
    settings = loaded(WorkflowSettings)
    cache = SearchCache(settings.search_cache_ttl_s, settings.search_cache_entries)
    half_life_s = settings.search_half_life_hours * 3600
    router = APIRouter(tags=["workflow"], responses={401: {"description": "Missing or invalid bearer token"}})

    @router.get("/v1/tasks/{code}", summary="A task: phase, history, overrides, artifacts, commits, PR, bugs",
                responses={404: {"description": "No such task"}})
    async def task(code: str, tenant: Tenant, pool: Pool) -> dict[str, Any]:
        found = await get_task(pool, tenant, code)
        if found is None:
            raise HTTPException(404, f"no task {code}")
        return found

    @router.get("/v1/sprints", summary="The sprints and their task counts, most recently active first")
    async def sprints(tenant: Tenant, pool: Pool) -> list[dict[str, Any]]:
        return await list_sprints(pool, tenant)

    @router.get("/v1/sprints/{code}", summary="A sprint and its tasks by phase",
                responses={404: {"description": "No such sprint"}})
    async def sprint(code: str, tenant: Tenant, pool: Pool) -> dict[str, Any]:
        found = await get_sprint(pool, tenant, code)
        if found is None:
            raise HTTPException(404, f"no sprint {code}")
        return found

    @router.get("/v1/bugs", summary="Bugs under the live rules version, most frequent first")
    async def bugs(tenant: Tenant, pool: Pool, task: str | None = None,
                   min_count: Annotated[int, Query(ge=1)] = 1, classification: str | None = None,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        # One read of the version for both: the list and the version it is grouped by never disagree.
        version = await live_rules_version(pool, tenant)
        found = await list_bugs(pool, tenant, version=version, task_code=task, min_count=min_count,
                                classification=classification, limit=limit)
        return {"rules_version": version, "bugs": found}

    @router.get("/v1/search", summary="Context search over every domain's events, scoped and ranked")
    async def context_search(
        tenant: Tenant, pool: Pool,
        q: Annotated[str, Query(max_length=500, description="Words or a web-style query; empty: every event.")] = "",
        scope: Scope = "project",
        id: Annotated[str | None, Query(description="The session key, task code or sprint code of the scope.")] = None,
        summary: bool = False,
        limit: Annotated[int, Query(ge=1, le=200)] = 10,
        no_cache: bool = False,
    ) -> dict[str, Any]:
        key = (tenant, q, scope, id, summary, limit)
        try:
            marker = await scope_marker(pool, tenant, scope, id)
            if not no_cache and (hit := cache.get(key, marker)) is not None:
                return {**hit, "cached": True}
            if summary:
                answer = {"summary": await search_summary(pool, tenant, q, scope, id)}
            else:
                answer = {"results": await search(pool, tenant, q, scope, id, half_life_s=half_life_s, limit=limit)}
        except UnknownScope as exc:
            raise HTTPException(404, str(exc)) from None
        answer |= {"query": q, "scope": scope, "id": id}
        cache.put(key, marker, answer)
        return {**answer, "cached": False}

    return router
