"""The tally domain's events: someone counts an amount, a milestone is reached, the milestone is announced."""

from __future__ import annotations

from schemas import EventCatalog, Payload, register_catalog


def tally_stream_id(tenant_id: str, counter: str) -> str:
    return f"tally:{tenant_id}:{counter}"


class Counted(Payload, frozen=True, kw_only=True):
    """Someone added `amount` to a counter."""

    counter: str
    amount: int


class MilestoneReached(Payload, frozen=True, kw_only=True):
    """A counter's total crossed a multiple of MILESTONE (tests.tally.fold); the effect worker announces it."""

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
