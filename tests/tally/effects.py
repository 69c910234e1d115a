"""The tally effect worker: answers each milestone with an announcement event."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas import Envelope, emitted
from tests.tally.schemas import MilestoneAnnounced


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
