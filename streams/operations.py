"""Operator routes (service tokens only): system status, dead letters and their re-drive, for the console.

A service token acts for its own tenant: it lists and re-drives only the dead letters whose original record names
that tenant (streams.deadletter.tenant_of). A letter whose record names no tenant (it could not be read) is
shown and re-driven by no token; the operator does that with `baton deadletter`, which reads the broker itself.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Annotated

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from agents.batching import BadRecord, Record, envelope_of
from schemas import UnstorableEvent, check_storable
from streams.auth import Caller, CallerDep
from streams.deadletter import DeadLetter, DeadLetterError, letter_id, list_dead_letters
from streams.publisher import Publisher
from streams.registry import domain_of_topic
from streams.settings import Settings
from streams.status import collect_status


def _operator(caller: CallerDep) -> Caller:
    if not caller.service:
        raise HTTPException(403, "operator routes need a service token (baton token --tenant T --service)")
    return caller


Operator = Annotated[Caller, Depends(_operator)]
# How far back (records per partition of the dead-letter topic) listing and re-drive look for a tenant's letters.
SCAN = 1000


class RoleView(BaseModel):
    role: str
    up: bool
    detail: str
    state: str  # up, down, or restarting (exited; `baton dev` restarts it after its backoff)
    restarts: int
    last_exit_code: int | None
    last_exit_at: datetime | None


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
    model_config = ConfigDict(extra="forbid")

    ids: list[Annotated[str, Field(max_length=300)]] = Field(max_length=SCAN)


class RedriveOut(BaseModel):
    redriven: list[str]
    # [id, reason] pairs; an array schema rather than a tuple's prefixItems, which not every OpenAPI tool reads.
    refused: list[Annotated[list[str], Field(min_length=2, max_length=2)]]


def ops_router() -> APIRouter:
    """GET /v1/ops/status, GET /v1/ops/deadletters, POST /v1/ops/deadletters/redrive."""
    router = APIRouter(tags=["ops"], responses={401: {"description": "Missing or invalid bearer token"},
                                                403: {"description": "Not a service token"}})

    @router.get("/v1/ops/status", response_model=StatusView, summary="Roles, lag per domain, dead letters")
    async def status(request: Request, _operator: Operator) -> StatusView:
        # This process answers: the API is up, and it never calls itself (that would wait on its own event loop).
        found = await collect_status(request.app.state.settings, api_detail=f"answering (pid {os.getpid()})")
        return StatusView(roles=[RoleView(role=r.role, up=r.up, detail=r.detail, state=r.state, restarts=r.restarts,
                                          last_exit_code=r.last_exit_code, last_exit_at=r.last_exit_at)
                                 for r in found.roles],
                          domains=[DomainView(domain=d.domain, records=d.records, worker_lag=d.worker_lag,
                                              projector_lag=d.projector_lag, last_event_at=d.last_event_at)
                                   for d in found.domains],
                          dead_letters=found.dead_letters)

    @router.get("/v1/ops/deadletters", response_model=list[LetterView], summary="Dead letters with their reasons")
    async def dead_letters(request: Request, operator: Operator,
                           limit: Annotated[int, Query(ge=1, le=SCAN)] = 100) -> list[LetterView]:
        """The newest dead letters of the caller's tenant, newest first."""
        letters = await list_dead_letters(request.app.state.settings, limit, tenant_id=operator.tenant_id, scan=SCAN)
        return [LetterView(id=letter_id(d), source_topic=d.source_topic, partition=d.partition, offset=d.offset,
                           stage=d.stage, reason=d.reason, failed_at=d.failed_at, value=d.value)
                for d in reversed(letters)]

    @router.post("/v1/ops/deadletters/redrive", response_model=RedriveOut, summary="Re-drive dead letters")
    async def redrive_letters(request: Request, operator: Operator, body: RedriveIn) -> RedriveOut:
        """Publish the caller's tenant's dead letters again; another tenant's id is unknown (404) like any other."""
        settings = request.app.state.settings
        letters = {letter_id(d): d
                   for d in await list_dead_letters(settings, SCAN, tenant_id=operator.tenant_id, scan=SCAN)}
        if unknown := [i for i in body.ids if i not in letters]:
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise HTTPException(404, f"no dead letter {', '.join(unknown[:10])}{more}")
        report = await redrive(settings, [letters[i] for i in dict.fromkeys(body.ids)])
        return RedriveOut(redriven=report.redriven, refused=report.refused)

    return router


class Redrive(msgspec.Struct, frozen=True, kw_only=True):
    """What a re-drive did: letters published again to their source topic, and those refused, with why."""

    redriven: list[str]
    refused: list[tuple[str, str]]


async def redrive(settings: Settings, letters: list[DeadLetter]) -> Redrive:
    """Publish the original records of dead letters again, once they hold a valid event for their key.

    A letter whose bytes still fail (a decode error, a key that is not the stream id, a type no longer known, a
    value the read models cannot hold) is refused and stays where it is; a re-driven event keeps its id, so a fold
    that applied it meanwhile skips it.
    Only domain topics are re-driven into: a changelog's records are rebuilt by the worker, not re-sent.
    """
    domain_topics = domain_of_topic(settings)
    envelopes, redriven, refused = [], [], []
    for letter in letters:
        if letter.source_topic not in domain_topics:
            refused.append((letter_id(letter), f"{letter.source_topic} is not a domain topic"))
            continue
        try:
            record = Record(letter.source_topic, letter.partition, letter.offset, letter.raw_key(), letter.raw_value())
            envelopes.append(check_storable(envelope_of(record)))
        except (BadRecord, DeadLetterError, UnstorableEvent) as exc:
            refused.append((letter_id(letter), str(exc)))
            continue
        redriven.append(letter_id(letter))
    if envelopes:
        async with Publisher(settings) as publisher:
            await publisher.publish(envelopes)
    return Redrive(redriven=redriven, refused=refused)
