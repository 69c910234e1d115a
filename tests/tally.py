"""A small domain of the tests' own, registered through BATON_EXTRA_DOMAINS: counters that add amounts.

Every part a domain declares is here (events, fold, state codec, read model, migration, router, an effect
worker); nothing outside this file and tests/tally_migrations names it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, HTTPException
from msgspec.structs import replace

from agents.batching import Folder, FoldState, StateCodec
from projections.connections import connection
from projections.readmodel import ReadModel
from projections.routes import Pool
from schemas import Envelope, EventCatalog, Payload, emitted, register_catalog
from streams.auth import Tenant
from streams.registry import Domain

MILESTONE = 10


def tally_stream_id(tenant_id: str, counter: str) -> str:
    return f"tally:{tenant_id}:{counter}"


class Counted(Payload, frozen=True, kw_only=True):
    """Someone added `amount` to a counter."""

    counter: str
    amount: int


class MilestoneReached(Payload, frozen=True, kw_only=True):
    """A counter's total crossed a multiple of MILESTONE; the effect worker announces it."""

    counter: str
    total: int


class MilestoneAnnounced(Payload, frozen=True, kw_only=True):
    """The effect worker announced a milestone."""

    counter: str
    total: int


CATALOG = register_catalog(EventCatalog(
    domain="tally",
    events={"tally.counted": Counted, "tally.milestone.reached": MilestoneReached,
            "tally.milestone.announced": MilestoneAnnounced},
    ingestible=frozenset({"tally.counted"}),
    stream_id=lambda tenant_id, payload: tally_stream_id(tenant_id, payload.counter),  # type: ignore[attr-defined]
))


class TallyState(FoldState, kw_only=True):
    tenant_id: str
    counter: str
    total: int = 0
    counts: int = 0
    milestones: int = 0
    announced: int = 0


def fold(state: TallyState | None, envelope: Envelope, _config: object) -> tuple[TallyState, list[Envelope]]:
    payload = envelope.payload
    state = state or TallyState(tenant_id=envelope.tenant_id, counter=payload.counter)  # type: ignore[attr-defined]
    out: list[Envelope] = []
    changes: dict[str, int] = {}
    if isinstance(payload, Counted):
        total = state.total + payload.amount
        changes = {"total": total, "counts": state.counts + 1}
        if total // MILESTONE > state.total // MILESTONE:
            changes["milestones"] = state.milestones + 1
            out.append(emitted(envelope, 0, MilestoneReached(counter=payload.counter, total=total), actor="fold:tally"))
    elif isinstance(payload, MilestoneAnnounced):
        changes = {"announced": state.announced + 1}
    return replace(state, **changes), out


class Announcer:
    """The effect worker: answers each milestone with an announcement event."""

    effect_types = frozenset({"tally.milestone.reached"})
    not_repeatable: frozenset[str] = frozenset()

    async def run(self, envelope: Envelope) -> list[Envelope]:
        p = envelope.payload
        announced = MilestoneAnnounced(counter=p.counter, total=p.total)  # type: ignore[attr-defined]
        return [emitted(envelope, 0, announced, actor="effect:announcer", occurred_at=datetime.now(UTC))]

    def unknown_outcome(self, envelope: Envelope) -> list[Envelope]:
        return []


COUNTERS = ReadModel(
    table="tally_counters",
    columns=(("stream_id", "text"), ("tenant_id", "text"), ("counter", "text"), ("total", "bigint"),
             ("counts", "integer"), ("milestones", "integer"), ("announced", "integer")),
    row=lambda s: (tally_stream_id(s.tenant_id, s.counter), s.tenant_id, s.counter, s.total, s.counts,
                   s.milestones, s.announced),
)


def router() -> APIRouter:
    routes = APIRouter(tags=["tally"])

    @routes.get("/v1/tallies/{counter}")
    async def tally(counter: str, tenant: Tenant, pool: Pool) -> dict[str, int]:
        async with connection(pool) as conn:
            cur = await conn.execute("SELECT total, counts, milestones, announced FROM tally_counters"
                                     " WHERE tenant_id = %s AND counter = %s", (tenant, counter))
            row = await cur.fetchone()
        if row is None:
            raise HTTPException(404, f"no tally {counter}")
        return dict(zip(("total", "counts", "milestones", "announced"), row, strict=True))

    return routes


DOMAIN = Domain(
    name="tally",
    catalog=CATALOG,
    folder=lambda _settings: Folder(fold=fold, config=None),
    state_table="tallies",
    state_codec=StateCodec.json(TallyState),
    read_models=(COUNTERS,),
    migrations=Path(__file__).resolve().parent / "tally_migrations",
    routers=lambda: (router(),),
    effects=lambda _settings: Announcer(),
)
