"""Operator routes (service tokens only): system status, dead letters and their re-drive, for the console."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel

from streams.auth import Caller, CallerDep
from streams.deadletter import letter_id, list_dead_letters, redrive
from streams.status import collect_status


def _operator(caller: CallerDep) -> Caller:
    if not caller.service:
        raise HTTPException(403, "operator routes need a service token (baton token --tenant T --service)")
    return caller


Operator = Annotated[Caller, Depends(_operator)]


class RoleView(BaseModel):
    role: str
    up: bool
    detail: str


class DomainView(BaseModel):
    domain: str
    records: int
    worker_lag: int
    projector_lag: int
    last_event_at: datetime | None


class StatusView(BaseModel):
    roles: list[RoleView]
    domains: list[DomainView]
    dead_letters: int


class LetterView(BaseModel):
    id: str
    source_topic: str
    partition: int
    offset: int
    stage: str
    reason: str
    failed_at: datetime
    value: str | None


class RedriveIn(BaseModel):
    ids: list[str]


class RedriveOut(BaseModel):
    redriven: list[str]
    refused: list[tuple[str, str]]


def ops_router() -> APIRouter:
    """GET /v1/ops/status, GET /v1/ops/deadletters, POST /v1/ops/deadletters/redrive."""
    router = APIRouter(tags=["ops"], responses={401: {"description": "Missing or invalid bearer token"},
                                                403: {"description": "Not a service token"}})

    @router.get("/v1/ops/status", response_model=StatusView, summary="Roles, lag per domain, dead letters")
    async def status(request: Request, _operator: Operator) -> StatusView:
        found = await collect_status(request.app.state.settings)
        return StatusView(roles=[RoleView(role=r.role, up=r.up, detail=r.detail) for r in found.roles],
                          domains=[DomainView(domain=d.domain, records=d.records, worker_lag=d.worker_lag,
                                              projector_lag=d.projector_lag, last_event_at=d.last_event_at)
                                   for d in found.domains],
                          dead_letters=found.dead_letters)

    @router.get("/v1/ops/deadletters", response_model=list[LetterView], summary="Dead letters with their reasons")
    async def dead_letters(request: Request, _operator: Operator, limit: int = 100) -> list[LetterView]:
        letters = await list_dead_letters(request.app.state.settings, limit)
        return [LetterView(id=letter_id(d), source_topic=d.source_topic, partition=d.partition, offset=d.offset,
                           stage=d.stage, reason=d.reason, failed_at=d.failed_at, value=d.value)
                for d in reversed(letters)]

    @router.post("/v1/ops/deadletters/redrive", response_model=RedriveOut, summary="Re-drive dead letters")
    async def redrive_letters(request: Request, _operator: Operator, body: RedriveIn) -> RedriveOut:
        settings = request.app.state.settings
        letters = {letter_id(d): d for d in await list_dead_letters(settings, 1000)}
        if unknown := [i for i in body.ids if i not in letters]:
            raise HTTPException(404, f"no dead letter {', '.join(unknown)}")
        report = await redrive(settings, [letters[i] for i in dict.fromkeys(body.ids)])
        return RedriveOut(redriven=report.redriven, refused=report.refused)

    return router
