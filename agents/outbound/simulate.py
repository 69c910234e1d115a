"""The outbound what-if re-fold: the log folded again under another policy, no network and no sends, with each
message's outcome before and after."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from agents.outbound.fold import OutboundConfig, OutboundState, fold
from agents.outbound.wakeups import tick_for
from schemas import Envelope
from schemas.outbound import DECISION_EVENTS, MessageQueued


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where one message ended: sent (a send was decided), deferred, or dropped, with the reason."""

    message_id: str
    user_id: str
    agent_id: str
    priority: str
    outcome: str
    reason: str

    @property
    def label(self) -> tuple[str, str]:
        return self.outcome, self.reason


@dataclass(frozen=True)
class Simulation:
    """Each message's outcome on the log (before) and under the simulated policy (after)."""

    before: dict[str, Outcome]
    after: dict[str, Outcome]
    queued: dict[str, datetime]
    events: int

    def counts(self, since: datetime | None = None) -> tuple[Counter, Counter]:
        keep = {m for m, at in self.queued.items() if since is None or at >= since}
        return (Counter(o.label for m, o in self.before.items() if m in keep),
                Counter(o.label for m, o in self.after.items() if m in keep))

    def changed(self, since: datetime | None = None) -> list[tuple[Outcome | None, Outcome | None]]:
        keep = [m for m, at in sorted(self.queued.items(), key=lambda kv: kv[1]) if since is None or at >= since]
        pairs = [(self.before.get(m), self.after.get(m)) for m in keep]
        return [(b, a) for b, a in pairs if (b.label if b else None) != (a.label if a else None)]


_OUTCOME = {"approved": "sent", "released": "sent", "deferred": "deferred", "dropped": "dropped"}


def _record(outcomes: dict[str, Outcome], envelope: Envelope) -> None:
    payload = envelope.payload
    outcomes[payload.message_id] = Outcome(  # type: ignore[attr-defined]
        payload.message_id, payload.user_id, payload.agent_id, payload.priority,  # type: ignore[attr-defined]
        _OUTCOME[envelope.type.rsplit(".", 1)[1]], payload.reason)  # type: ignore[attr-defined]


def simulate(envelopes: Sequence[Envelope], config: OutboundConfig, horizon: datetime | None = None) -> Simulation:
    """Re-fold an outbound log under `config`, no network and no sends: each user's wake-ups become ticks at
    their due time (as the timer would publish them), up to `horizon` (default: the log's last event time)."""
    before: dict[str, Outcome] = {}
    after: dict[str, Outcome] = {}
    queued: dict[str, datetime] = {}
    states: dict[str, OutboundState | None] = {}
    horizon = horizon or max((e.occurred_at for e in envelopes), default=None)

    def apply(key: str, envelope: Envelope) -> None:
        state, out = fold(states.get(key), envelope, config)
        states[key] = state
        for event in out:
            if event.type in DECISION_EVENTS:
                _record(after, event)

    def wake_until(key: str, until: datetime) -> None:
        state = states.get(key)
        while state is not None and state.wakeup_at is not None and state.wakeup_at <= until:
            due = state.wakeup_at
            apply(key, tick_for(state.tenant_id, state.user_id, due, due))
            state = states[key]
            if state is not None and state.wakeup_at is not None and state.wakeup_at <= due:
                break  # no progress: leave the rest to later events

    for envelope in envelopes:
        key = envelope.stream_id
        if envelope.type in DECISION_EVENTS:
            _record(before, envelope)
            continue
        if isinstance(envelope.payload, MessageQueued):
            queued.setdefault(str(envelope.event_id), envelope.occurred_at)
        wake_until(key, envelope.occurred_at)
        apply(key, envelope)
    if horizon is not None:
        for key in list(states):
            wake_until(key, horizon)
    return Simulation(before=before, after=after, queued=queued, events=len(envelopes))
