"""The workflow what-if re-fold: the log folded again in memory under a candidate template and gate policy, with
each phase-completion request's outcome on the log (before) and under the candidate (after). Nothing is published."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from agents.batching import Folder
from agents.workflow.fold import ACTOR, FoldConfig, fold
from schemas import Envelope
from schemas.workflow import (
    WORKFLOW_INGESTIBLE,
    PhaseCompleted,
    PhaseCompletionRejected,
    PhaseCompletionRequested,
    PhaseOverridden,
)

REQUESTED = "workflow.phase.completion.requested"
OUTCOME_EVENTS = frozenset({"workflow.phase.completed", "workflow.phase.completion.rejected",
                            "workflow.phase.overridden"})


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one phase-completion request was decided: completed, overridden (completed past a failed gate) or
    rejected (with the rejection's kind), the phase it concerned and a readable reason."""

    outcome: str
    phase: str | None
    kind: str = ""
    reason: str = ""

    @property
    def label(self) -> tuple[str, str | None, str]:
        """What is compared: the outcome, the phase and the rejection kind (not the reason's wording)."""
        return self.outcome, self.phase, self.kind

    def __str__(self) -> str:
        head = f"{self.outcome} {self.phase or '-'}" + (f" ({self.kind})" if self.kind else "")
        return f"{head}: {self.reason}" if self.reason else head


@dataclass(frozen=True, slots=True)
class Request:
    """One phase-completion request of the log."""

    event_id: str
    tenant_id: str
    task_code: str
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class Change:
    """A request whose outcome differs under the candidate; None: no decision (on the log, or in the re-fold)."""

    request: Request
    before: Outcome | None
    after: Outcome | None


@dataclass(frozen=True)
class Simulation:
    """Each phase-completion request's outcome on the log (before) and under the candidate (after)."""

    requests: list[Request]
    before: dict[str, Outcome]
    after: dict[str, Outcome]
    events: int

    def counts(self) -> tuple[Counter, Counter]:
        """Requests by outcome (completed / overridden / rejected kind) before and after."""
        def key(o: Outcome | None) -> str:
            return "undecided" if o is None else (f"rejected:{o.kind}" if o.kind else o.outcome)
        return (Counter(key(self.before.get(r.event_id)) for r in self.requests),
                Counter(key(self.after.get(r.event_id)) for r in self.requests))

    def changed(self) -> list[Change]:
        """The requests whose outcome, phase or rejection kind differs, in log order."""
        pairs = [Change(r, self.before.get(r.event_id), self.after.get(r.event_id)) for r in self.requests]
        return [c for c in pairs if (c.before.label if c.before else None) != (c.after.label if c.after else None)]


def outcome_of(decisions: Iterable[Envelope]) -> Outcome | None:
    """The outcome the decision events caused by one request record (None: they hold none)."""
    by_type = {e.type: e.payload for e in decisions if e.type in OUTCOME_EVENTS}
    rejected = by_type.get("workflow.phase.completion.rejected")
    if isinstance(rejected, PhaseCompletionRejected):
        return Outcome("rejected", rejected.phase, rejected.kind, rejected.reason)
    completed = by_type.get("workflow.phase.completed")
    overridden = by_type.get("workflow.phase.overridden")
    if isinstance(overridden, PhaseOverridden):
        missing = ", ".join(f"{m.kind} {m.name}" for m in overridden.missing)
        return Outcome("overridden", overridden.phase, "", f"by {overridden.actor} without {missing}: {overridden.reason}")
    if isinstance(completed, PhaseCompleted):
        target = completed.next_phase or "done"
        skipped = f" (skipping {', '.join(completed.skipped)})" if completed.skipped else ""
        return Outcome("completed", completed.phase, "", f"next {target}{skipped}")
    return None


def _from_fold(envelope: Envelope) -> bool:
    """A decision the fold emitted (a status update after a session start, say): recomputed, never re-applied."""
    return envelope.actor == ACTOR and envelope.causation_id is not None


def simulate(envelopes: Sequence[Envelope], config: FoldConfig) -> Simulation:
    """Re-fold a workflow log (in log order) under `config`: every stream from its requests and facts (the
    ingestible events), the decisions on the log set aside as the "before" and made again by the fold."""
    folder = Folder(fold, config)
    states: dict[str, object] = {}
    requests: list[Request] = []
    recorded: dict[str, list[Envelope]] = {}
    after: dict[str, Outcome] = {}
    seen: set[str] = set()
    for envelope in envelopes:
        if envelope.type in OUTCOME_EVENTS and envelope.causation_id is not None:
            recorded.setdefault(str(envelope.causation_id), []).append(envelope)
        if envelope.type not in WORKFLOW_INGESTIBLE or _from_fold(envelope):
            continue
        key = envelope.stream_id
        state, out = folder.apply(states.get(key), envelope)
        states[key] = state
        if isinstance(envelope.payload, PhaseCompletionRequested):
            event_id = str(envelope.event_id)
            if event_id not in seen:  # a request the log holds twice is decided once
                seen.add(event_id)
                requests.append(Request(event_id, envelope.tenant_id, envelope.payload.task_code, envelope.occurred_at))
            if (decided := outcome_of(out)) is not None:
                after[event_id] = decided
    before = {r.event_id: o for r in requests if (o := outcome_of(recorded.get(r.event_id, ()))) is not None}
    return Simulation(requests=requests, before=before, after=after, events=len(envelopes))
