"""The tally fold: adds each count to its counter's total and emits a milestone every MILESTONE."""

from __future__ import annotations

from msgspec.structs import replace

from agents.batching import FoldState, StateCodec
from schemas import Envelope, emitted
from tests.tally.schemas import Counted, MilestoneAnnounced, MilestoneReached

MILESTONE = 10


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


CODEC = StateCodec.json(TallyState)
