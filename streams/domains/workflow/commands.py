"""The workflow command routes: create sprints and tasks, update tasks, start/complete/end, record artifacts,
commits and PRs, log and regroup bugs; each validates, then publishes its event.

A request the task or bug fold decides (start, phase completion, end, bug) is published as its request event;
the route then waits for the decision event the fold emitted in answer (found in the events archive by its
causation id) and answers with it: 200, or 409 with the rejection. A decision not projected within
BATON_WORKFLOW_DECISION_TIMEOUT_S answers 202 with the request's event id (the fold will still decide it).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from agents.workflow.config import WorkflowSettings
from agents.workflow.templates import load_templates
from projections.connections import connection
from projections.routes import Pool
from projections.workflow.views import (
    archived,
    decision_of,
    live_rules_version,
    task_phase,
)
from schemas import Payload, new_event, source_event_id
from schemas.bugrules import (
    DEFAULT_RULES_VERSION,
    RULES,
    compare_groupings,
    fingerprint,
)
from schemas.errors import locate
from schemas.workflow import (
    ArtifactRecorded,
    BugLogged,
    BugRulesAdopted,
    CommitCaptured,
    PhaseCompletionRequested,
    PullRequestLinked,
    SessionEndRequested,
    SessionStartRequested,
    SprintCreated,
    TaskCreated,
    TaskUpdated,
)
from streams.auth import Tenant
from streams.ingest import publish
from streams.settings import loaded

_STATUS_OF_KIND = {"no_task": 404, "unknown_type": 422}
_PR_NUMBER = re.compile(r"/(?:pull|pulls|merge_requests|pull-requests)/(\d+)")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actor: str | None = Field(None, description="Who asks (kept with the event; an override records it).")
    request_id: str | None = Field(None, description="Idempotency key: a retried request gets the same event id.")


class SprintIn(_Body):
    sprint_code: str
    title: str
    status: str = "active"
    description: str = ""
    fields: dict[str, Any] = {}


class TaskIn(_Body):
    task_code: str
    title: str
    sprint_code: str | None = None
    type: str | None = Field(None, description="A variant of the workflow template (feature, bug_fix, ...).")
    description: str = ""
    fields: dict[str, Any] = {}


class TaskPatch(_Body):
    title: str | None = None
    sprint_code: str | None = None
    description: str | None = None
    fields: dict[str, Any] = Field({}, description="Merged into the task's fields; null removes a field.")


class CompleteIn(_Body):
    override: bool = False
    reason: str | None = None
    phase: str | None = Field(None, description="The phase the caller completes (refused if it is not current).")
    to_phase: str | None = Field(None, description="The phase to move to (a skip needs allow_phase_skip).")


class EndIn(_Body):
    force: bool = False


class ArtifactIn(_Body):
    name: str
    content_hash: str
    size: int


class CommitIn(_Body):
    hash: str
    short_hash: str | None = None
    message: str
    author: str
    branch: str | None = None


class PullRequestIn(_Body):
    url: str
    number: int | None = None
    provider: str | None = None


class BugIn(_Body):
    task_code: str | None = None
    message: str
    file: str | None = None
    line: int | None = None
    stack: str | None = None


class RegroupIn(_Body):
    rules: int
    apply: bool = False


def _payload(kind: type[Payload], document: dict[str, Any]) -> Payload:
    try:
        return msgspec.convert(document, kind)
    except msgspec.ValidationError as exc:
        raise HTTPException(422, locate(str(exc))) from None


async def _publish(request: Request, tenant: str, payload: Payload, body: _Body | None,
                   occurred_at: datetime | None = None) -> uuid.UUID:
    now = datetime.now(UTC)
    request_id = body.request_id if body else None
    event_id = source_event_id(tenant, "workflow", request_id) if request_id else uuid.uuid4()
    envelope = new_event(tenant, payload, event_id=event_id, occurred_at=occurred_at or now, recorded_at=now,
                         actor=(body.actor if body and body.actor else "api"))
    await publish(request.app.state.publisher, [envelope])
    return event_id


def _pending(event_id: uuid.UUID) -> JSONResponse:
    return JSONResponse(status_code=202, content={"status": "pending", "event_id": str(event_id)})


def _rejection(event_id: uuid.UUID, rejected: dict[str, Any]) -> JSONResponse:
    status = _STATUS_OF_KIND.get(rejected["kind"], 409)
    return JSONResponse(status_code=status, content={"status": "rejected", "event_id": str(event_id), **rejected})


def _provider(url: str) -> str | None:
    host = re.sub(r"^https?://([^/]+).*$", r"\1", url).lower()
    return next((name for name in ("github", "gitlab", "bitbucket") if name in host), None)


def command_router() -> APIRouter:
    """Command routes of the workflow domain; the tenant (the project) always comes from the bearer token."""
    settings = loaded(WorkflowSettings)
    templates = load_templates(settings)
    router = APIRouter(tags=["workflow"], responses={401: {"description": "Missing or invalid bearer token"}})

    async def decided(pool: Any, tenant: str, event_id: uuid.UUID, types: set[str]) -> dict[str, dict] | None:
        return await decision_of(pool, tenant, event_id, types, settings.decision_timeout_s)

    @router.post("/v1/sprints", status_code=202, summary="Create a sprint")
    async def create_sprint(body: SprintIn, request: Request, tenant: Tenant) -> dict[str, str]:
        payload = _payload(SprintCreated, body.model_dump(exclude={"actor", "request_id"}))
        return {"event_id": str(await _publish(request, tenant, payload, body))}

    @router.post("/v1/tasks", status_code=201, summary="Create a task",
                 responses={409: {"description": "The task exists"}, 422: {"description": "Unknown type or field"}})
    async def create_task(body: TaskIn, request: Request, tenant: Tenant, pool: Pool) -> dict[str, Any]:
        payload = _payload(TaskCreated, body.model_dump(exclude={"actor", "request_id"}))
        template = templates.of(tenant)
        variant = body.type or template.default_variant
        if variant not in template.variants:
            raise HTTPException(422, f"type: {variant!r} is not a variant of the template ({', '.join(template.variants)})")
        exists, _ = await task_phase(pool, tenant, body.task_code)
        if exists:
            raise HTTPException(409, f"task {body.task_code} already exists")
        event_id = await _publish(request, tenant, payload, body)
        if not await archived(pool, event_id, settings.decision_timeout_s):
            return _pending(event_id)
        phases = template.phases_of(variant)
        return {"event_id": str(event_id), "task_code": body.task_code, "type": variant, "phases": phases,
                "phase": phases[0]}

    @router.patch("/v1/tasks/{code}", status_code=202, summary="Update a task's title, sprint, description or fields")
    async def update_task(code: str, body: TaskPatch, request: Request, tenant: Tenant) -> dict[str, str]:
        payload = _payload(TaskUpdated, {"task_code": code, **body.model_dump(exclude={"actor", "request_id"})})
        return {"event_id": str(await _publish(request, tenant, payload, body))}

    @router.post("/v1/tasks/{code}/start", summary="Start (or resume) the task's session")
    async def start_task(code: str, request: Request, tenant: Tenant, pool: Pool, body: _Body | None = None) -> Any:
        event_id = await _publish(request, tenant, _payload(SessionStartRequested, {"task_code": code}), body)
        caused = await decided(pool, tenant, event_id, {"workflow.session.started", "workflow.task.command.rejected"})
        if caused is None:
            return _pending(event_id)
        if "workflow.task.command.rejected" in caused:
            return _rejection(event_id, caused["workflow.task.command.rejected"])
        return {"status": "started", "event_id": str(event_id), **caused["workflow.session.started"]}

    @router.post("/v1/tasks/{code}/phases/complete", summary="Complete the current phase",
                 responses={409: {"description": "Rejected: `missing` (required) and `recommended` items"},
                            202: {"description": "Not decided within the timeout"}})
    async def complete_phase(code: str, request: Request, tenant: Tenant, pool: Pool,
                             body: CompleteIn | None = None) -> Any:
        body = body or CompleteIn()
        if body.override and not (body.reason or "").strip():
            raise HTTPException(422, "reason: an override needs a reason")
        payload = _payload(PhaseCompletionRequested, {"task_code": code, **body.model_dump(exclude={"actor", "request_id"})})
        event_id = await _publish(request, tenant, payload, body)
        caused = await decided(pool, tenant, event_id,
                               {"workflow.phase.completed", "workflow.phase.completion.rejected"})
        if caused is None:
            return _pending(event_id)
        if "workflow.phase.completion.rejected" in caused:
            return _rejection(event_id, caused["workflow.phase.completion.rejected"])
        completed = caused["workflow.phase.completed"]
        started = caused.get("workflow.phase.started", {})
        return {"status": "completed", "event_id": str(event_id), **completed,
                "goal": started.get("goal"), "description": started.get("description")}

    @router.post("/v1/tasks/{code}/end", summary="End the task's session (force: before the last phase)")
    async def end_task(code: str, request: Request, tenant: Tenant, pool: Pool, body: EndIn | None = None) -> Any:
        body = body or EndIn()
        event_id = await _publish(request, tenant, _payload(SessionEndRequested, {"task_code": code, "force": body.force}), body)
        caused = await decided(pool, tenant, event_id, {"workflow.session.ended", "workflow.task.command.rejected"})
        if caused is None:
            return _pending(event_id)
        if "workflow.task.command.rejected" in caused:
            return _rejection(event_id, caused["workflow.task.command.rejected"])
        return {"status": "ended", "event_id": str(event_id), **caused["workflow.session.ended"]}

    async def record(code: str, request: Request, tenant: Tenant, pool: Any, kind: type[Payload],
                     document: dict[str, Any], body: _Body) -> dict[str, Any]:
        payload = _payload(kind, {"task_code": code, **document})
        exists, phase = await task_phase(pool, tenant, code)
        if not exists:
            raise HTTPException(404, f"no task {code}")
        return {"status": "recorded", "event_id": str(await _publish(request, tenant, payload, body)), "phase": phase}

    @router.post("/v1/tasks/{code}/artifacts", status_code=202, summary="Record an artifact (name, sha256, size)")
    async def add_artifact(code: str, body: ArtifactIn, request: Request, tenant: Tenant, pool: Pool) -> dict[str, Any]:
        return await record(code, request, tenant, pool, ArtifactRecorded,
                            body.model_dump(exclude={"actor", "request_id"}), body)

    @router.post("/v1/tasks/{code}/commits", status_code=202, summary="Capture a commit at the current phase")
    async def add_commit(code: str, body: CommitIn, request: Request, tenant: Tenant, pool: Pool) -> dict[str, Any]:
        document = body.model_dump(exclude={"actor", "request_id"})
        document["short_hash"] = body.short_hash or body.hash[:7]
        return await record(code, request, tenant, pool, CommitCaptured, document, body)

    @router.post("/v1/tasks/{code}/pull-request", status_code=202, summary="Link a pull request")
    async def link_pull_request(code: str, body: PullRequestIn, request: Request, tenant: Tenant,
                                pool: Pool) -> dict[str, Any]:
        number = body.number
        if number is None and (found := _PR_NUMBER.search(body.url)):
            number = int(found[1])
        document = {"url": body.url, "number": number, "provider": body.provider or _provider(body.url)}
        return await record(code, request, tenant, pool, PullRequestLinked, document, body) | document

    @router.post("/v1/bugs", summary="Log an error: new or duplicate, occurrences, class, rules version")
    async def log_bug(body: BugIn, request: Request, tenant: Tenant, pool: Pool) -> Any:
        roots = sorted((r for r in settings.strip_roots if body.file and body.file.startswith(r.rstrip("/") + "/")),
                       key=len, reverse=True)
        document = body.model_dump(exclude={"actor", "request_id"})
        document |= {"rules_version": await live_rules_version(pool, tenant), "project_root": roots[0] if roots else None}
        event_id = await _publish(request, tenant, _payload(BugLogged, document), body)
        caused = await decided(pool, tenant, event_id, {"workflow.bug.grouped"})
        if caused is None:
            return _pending(event_id)
        grouped = caused["workflow.bug.grouped"]
        return {"event_id": str(event_id), "status": "new" if grouped["new"] else "duplicate", **grouped}

    @router.post("/v1/bugs/regroup", summary="Regroup every logged bug under another rules version")
    async def regroup(body: RegroupIn, request: Request, tenant: Tenant, pool: Pool) -> dict[str, Any]:
        if body.rules not in RULES:
            raise HTTPException(422, f"rules: no bug rules version {body.rules}; known: {sorted(RULES)}")
        async with connection(pool) as conn:
            live = await live_rules_version(conn, tenant)
            cur = await conn.execute(
                "SELECT event_id, stream_id, payload, occurred_at FROM events WHERE tenant_id = %s"
                " AND type = 'workflow.bug.logged' AND coalesce((payload->>'rules_version')::int, %s) = %s"
                " ORDER BY occurred_at, event_id", (tenant, DEFAULT_RULES_VERSION, live))
            reports = await cur.fetchall()
            pairs = []
            for event_id, stream_id, payload, _ in reports:
                new = fingerprint(payload["message"], payload.get("file"), payload.get("line"), payload.get("stack"),
                                  version=body.rules, project_root=payload.get("project_root"))
                pairs.append((event_id, stream_id.rsplit(":", 1)[1], new))
            async with conn.transaction():
                await conn.execute("DELETE FROM workflow_bug_regroup WHERE tenant_id = %s AND rules_version = %s",
                                   (tenant, body.rules))
                async with conn.cursor().copy("COPY workflow_bug_regroup (tenant_id, rules_version, event_id,"
                                              " fingerprint, live_fingerprint) FROM STDIN") as copy:
                    for event_id, live_fp, new_fp in pairs:
                        await copy.write_row((tenant, body.rules, event_id, new_fp, live_fp))
        change = compare_groupings([(live_fp, new_fp) for _, live_fp, new_fp in pairs])
        answer: dict[str, Any] = {
            "live_version": live, "rules_version": body.rules, "reports": len(pairs),
            "groups_before": change.groups_before, "groups_after": change.groups_after,
            "merges": change.merges, "splits": change.splits, "applied": False,
        }
        if body.apply:
            if body.rules == live:
                raise HTTPException(409, f"rules version {live} is already live")
            now = datetime.now(UTC)
            envelopes = [
                new_event(tenant, msgspec.convert({**payload, "rules_version": body.rules}, BugLogged),
                          event_id=uuid.uuid5(event_id, f"regroup:v{body.rules}"), occurred_at=occurred_at,
                          recorded_at=now, actor=body.actor or "regroup", causation_id=event_id)
                for event_id, _, payload, occurred_at in reports
            ]
            adopted = BugRulesAdopted(version=body.rules, previous=live)
            envelopes.append(new_event(tenant, adopted, event_id=uuid.uuid4(), occurred_at=now, recorded_at=now,
                                       actor=body.actor or "regroup"))
            for start in range(0, len(envelopes), 500):
                await publish(request.app.state.publisher, envelopes[start:start + 500])
            answer["applied"] = True
        return answer

    return router
