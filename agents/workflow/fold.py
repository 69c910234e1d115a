"""The workflow fold: tasks (phase machine, gates, overrides, sessions, artifacts, commits, PR), sprints, bugs.

The fold decides every request from event time and the template; its decisions are applied when made, so
their echoes on the log change nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from msgspec.structs import replace

from agents.batching import FoldState, StateCodec
from schemas import Envelope, Payload, emitted
from schemas.bugrules import classify, normalise_message, normalise_path
from schemas.bugrules import rules as bug_rules
from schemas.workflow import (
    ArtifactRecorded,
    BugGrouped,
    BugLogged,
    BugRulesAdopted,
    CommitCaptured,
    GateItem,
    PhaseCompleted,
    PhaseCompletionRejected,
    PhaseCompletionRequested,
    PhaseOverridden,
    PhaseStarted,
    PullRequestLinked,
    SessionEnded,
    SessionEndRequested,
    SessionStarted,
    SessionStartRequested,
    SprintCreated,
    SprintUpdated,
    TaskCommandRejected,
    TaskCreated,
    TaskStatusUpdated,
    TaskUpdated,
)

ACTOR = "fold:workflow"
REJECTIONS_KEPT = 50
BUG_TASKS_KEPT = 200


@dataclass(frozen=True, slots=True)
class FoldConfig:
    """What the fold decides with: the templates (agents.workflow.Templates) and the gate policy."""

    templates: Any
    allow_phase_skip: bool = False
    allow_user_override: bool = True


class PhaseEntry(msgspec.Struct, kw_only=True):
    """One phase a task entered: when, in which session, and how it was left."""

    phase: str
    session_key: str
    started_at: datetime
    completed_at: datetime | None = None
    overridden: bool = False
    skipped: bool = False


class OverrideRecord(msgspec.Struct, kw_only=True):
    """A gate someone overrode."""

    phase: str
    session_key: str
    actor: str
    reason: str
    at: datetime
    missing: list[GateItem] = []
    recommended: list[GateItem] = []


class RejectionRecord(msgspec.Struct, kw_only=True):
    """A refused request: the attempts of the audit trail."""

    command: str
    kind: str
    reason: str
    actor: str
    at: datetime
    phase: str | None = None
    missing: list[GateItem] = []
    recommended: list[GateItem] = []


class ArtifactEntry(msgspec.Struct, kw_only=True):
    """The latest recorded version of an artifact."""

    name: str
    content_hash: str
    size: int
    phase: str | None
    at: datetime


class CommitEntry(msgspec.Struct, kw_only=True):
    """A captured commit and the phase it was captured in."""

    hash: str
    short_hash: str
    message: str
    author: str
    phase: str | None
    at: datetime
    branch: str | None = None


class PullRequestEntry(msgspec.Struct, kw_only=True):
    """The task's linked pull request."""

    url: str
    number: int | None
    provider: str | None
    at: datetime


class SessionEntry(msgspec.Struct, kw_only=True):
    """One work session on a task."""

    session_key: str
    started_at: datetime
    ended_at: datetime | None = None
    forced: bool = False
    resumed: int = 0


class TaskState(FoldState, kw_only=True, tag="task", tag_field="kind"):
    """One task: its phase machine and everything recorded against it."""

    tenant_id: str
    task_code: str
    title: str
    type: str
    phases: list[str]
    created_at: datetime
    updated_at: datetime
    sprint_code: str | None = None
    description: str = ""
    status: str = "todo"
    fields: dict[str, Any] = {}
    # None once the last phase is complete.
    phase: str | None = None
    active_session: str | None = None
    sessions: list[SessionEntry] = []
    history: list[PhaseEntry] = []
    overrides: list[OverrideRecord] = []
    rejections: list[RejectionRecord] = []
    artifacts: dict[str, ArtifactEntry] = {}
    commits: list[CommitEntry] = []
    pull_request: PullRequestEntry | None = None


class SprintState(FoldState, kw_only=True, tag="sprint", tag_field="kind"):
    """One sprint (its tasks are found through their sprint_code)."""

    tenant_id: str
    sprint_code: str
    title: str
    created_at: datetime
    updated_at: datetime
    status: str = "active"
    description: str = ""
    fields: dict[str, Any] = {}


class BugState(FoldState, kw_only=True, tag="bug", tag_field="kind"):
    """Every occurrence of one fingerprint under one rules version."""

    tenant_id: str
    fingerprint: str
    rules_version: int
    classification: str
    message: str
    normalized_message: str
    file: str
    line: int | None
    first_seen: datetime
    last_seen: datetime
    occurrences: int = 0
    tasks: list[str] = []
    last_task: str | None = None


class RulesState(FoldState, kw_only=True, tag="bugrules", tag_field="kind"):
    """The bug rules version a tenant's bug list groups by."""

    tenant_id: str
    version: int
    adopted_at: datetime
    previous: list[int] = []


WorkflowState = TaskState | SprintState | BugState | RulesState
CODEC = StateCodec.json(WorkflowState)


Result = tuple[Any, list[Payload]]


def fold(state: WorkflowState | None, envelope: Envelope, config: FoldConfig) -> tuple[WorkflowState | None, list[Envelope]]:
    """Apply one event; requests are answered with decision events."""
    handler = _HANDLERS.get(type(envelope.payload))
    if handler is None:
        return state, []
    new_state, payloads = handler(state, envelope, config)
    return new_state, [emitted(envelope, index, payload, actor=ACTOR) for index, payload in enumerate(payloads)]


def _phase_template(config: FoldConfig, state: TaskState, phase: str) -> Any:
    return config.templates.of(state.tenant_id).phases.get(phase)


def _goal(config: FoldConfig, state: TaskState, phase: str) -> tuple[str, str]:
    template = _phase_template(config, state, phase)
    return (template.goal, template.description) if template is not None else ("", "")


def _present(value: Any) -> bool:
    return value not in (None, "", [], {})


def gate(state: TaskState, phase_template: Any) -> tuple[list[GateItem], list[GateItem]]:
    """(missing required items, missing recommended items) of the task for one phase."""
    if phase_template is None:
        return [], []
    known = {**state.fields, "title": state.title, "sprint_code": state.sprint_code, "description": state.description}
    fields = {name for name, value in known.items() if _present(value)}
    missing = [GateItem(kind="artifact", name=a) for a in phase_template.artifacts.required if a not in state.artifacts]
    missing += [GateItem(kind="field", name=f) for f in phase_template.fields.required if f not in fields]
    recommended = [GateItem(kind="artifact", name=a) for a in phase_template.artifacts.optional if a not in state.artifacts]
    recommended += [GateItem(kind="field", name=f) for f in phase_template.fields.recommended if f not in fields]
    return missing, recommended


def _rejected(state: TaskState | None, envelope: Envelope, kind: str, reason: str) -> Result:
    payload = envelope.payload
    rejection = TaskCommandRejected(task_code=payload.task_code, command=envelope.type, kind=kind,  # type: ignore[attr-defined, arg-type]
                                    reason=reason)
    if state is None:
        return None, [rejection]
    return _remember(state, envelope, kind, reason), [rejection]


def _remember(state: TaskState, envelope: Envelope, kind: str, reason: str, phase: str | None = None,
              missing: list[GateItem] | None = None, recommended: list[GateItem] | None = None) -> TaskState:
    record = RejectionRecord(command=envelope.type, kind=kind, reason=reason, actor=envelope.actor,
                             at=envelope.occurred_at, phase=phase, missing=missing or [], recommended=recommended or [])
    return replace(state, rejections=[*state.rejections, record][-REJECTIONS_KEPT:], updated_at=envelope.occurred_at)


def _create(state: TaskState | None, envelope: Envelope, config: FoldConfig) -> Result:
    p: TaskCreated = envelope.payload  # type: ignore[assignment]
    if state is not None:
        return _rejected(state, envelope, "exists", f"task {p.task_code} already exists")
    template = config.templates.of(envelope.tenant_id)
    variant = p.type or template.default_variant
    if variant not in template.variants:
        return _rejected(None, envelope, "unknown_type",
                         f"task type {variant!r} is not a variant of the template ({', '.join(template.variants)})")
    phases = list(template.phases_of(variant))
    return TaskState(
        tenant_id=envelope.tenant_id, task_code=p.task_code, title=p.title, type=variant, phases=phases,
        phase=phases[0], sprint_code=p.sprint_code, description=p.description, fields=dict(p.fields),
        created_at=envelope.occurred_at, updated_at=envelope.occurred_at,
    ), []


def _update(state: TaskState | None, envelope: Envelope, _config: FoldConfig) -> Result:
    p: TaskUpdated = envelope.payload  # type: ignore[assignment]
    if state is None:
        return _rejected(None, envelope, "no_task", f"no task {p.task_code}")
    fields = {**state.fields, **p.fields}
    return replace(
        state, title=p.title or state.title, sprint_code=p.sprint_code or state.sprint_code,
        description=state.description if p.description is None else p.description,
        fields={k: v for k, v in fields.items() if v is not None}, updated_at=envelope.occurred_at,
    ), []


def _status(state: TaskState | None, envelope: Envelope, _config: FoldConfig) -> Result:
    p: TaskStatusUpdated = envelope.payload  # type: ignore[assignment]
    if state is None:
        return _rejected(None, envelope, "no_task", f"no task {p.task_code}")
    return replace(state, status=p.status, updated_at=envelope.occurred_at), []


def _session_key(state: TaskState, at: datetime) -> str:
    key = f"sess_{state.task_code}_{at.strftime('%Y%m%d_%H%M%S')}"
    taken = {s.session_key for s in state.sessions}
    suffix = 2
    unique = key
    while unique in taken:
        unique, suffix = f"{key}_{suffix}", suffix + 1
    return unique


def _start(state: TaskState | None, envelope: Envelope, config: FoldConfig) -> Result:
    p: SessionStartRequested = envelope.payload  # type: ignore[assignment]
    if state is None:
        return _rejected(None, envelope, "no_task", f"no task {p.task_code}")
    if state.phase is None:
        return _rejected(state, envelope, "task_complete", f"task {p.task_code} has completed every phase")
    at = envelope.occurred_at
    goal, description = _goal(config, state, state.phase)
    if state.active_session is not None:
        sessions = [replace(s, resumed=s.resumed + 1) if s.session_key == state.active_session else s
                    for s in state.sessions]
        started = SessionStarted(task_code=state.task_code, session_key=state.active_session, phase=state.phase,
                                 resumed=True, goal=goal, description=description)
        return replace(state, sessions=sessions, updated_at=at), [started]
    key = _session_key(state, at)
    out: list[Payload] = [SessionStarted(task_code=state.task_code, session_key=key, phase=state.phase,
                                         resumed=False, goal=goal, description=description)]
    history = state.history
    if not history or history[-1].phase != state.phase or history[-1].completed_at is not None:
        history = [*history, PhaseEntry(phase=state.phase, session_key=key, started_at=at)]
        out.append(PhaseStarted(task_code=state.task_code, session_key=key, phase=state.phase, goal=goal,
                                description=description))
    status = state.status
    if status != "in_progress":
        status = "in_progress"
        out.append(TaskStatusUpdated(task_code=state.task_code, status=status, reason="session started"))
    return replace(state, active_session=key, sessions=[*state.sessions, SessionEntry(session_key=key, started_at=at)],
                   history=history, status=status, updated_at=at), out


def _end(state: TaskState | None, envelope: Envelope, _config: FoldConfig) -> Result:
    p: SessionEndRequested = envelope.payload  # type: ignore[assignment]
    if state is None:
        return _rejected(None, envelope, "no_task", f"no task {p.task_code}")
    if state.active_session is None:
        return _rejected(state, envelope, "no_session", f"task {p.task_code} has no active session")
    if state.phase is not None and not p.force:
        return _rejected(state, envelope, "session_open",
                         f"phase {state.phase} of {p.task_code} is not complete; end with force to close the session")
    forced = state.phase is not None
    at = envelope.occurred_at
    sessions = [replace(s, ended_at=at, forced=forced) if s.session_key == state.active_session else s
                for s in state.sessions]
    ended = SessionEnded(task_code=state.task_code, session_key=state.active_session, phase=state.phase, forced=forced)
    return replace(state, active_session=None, sessions=sessions, updated_at=at), [ended]


def _complete(state: TaskState | None, envelope: Envelope, config: FoldConfig) -> Result:
    p: PhaseCompletionRequested = envelope.payload  # type: ignore[assignment]

    def refuse(kind: str, reason: str, missing: list[GateItem] | None = None,
               recommended: list[GateItem] | None = None) -> Result:
        rejection = PhaseCompletionRejected(
            task_code=p.task_code, session_key=state.active_session if state else None,
            phase=state.phase if state else None, kind=kind, reason=reason,  # type: ignore[arg-type]
            missing=missing or [], recommended=recommended or [],
        )
        if state is None:
            return None, [rejection]
        return _remember(state, envelope, kind, reason, state.phase, missing, recommended), [rejection]

    if state is None:
        return refuse("no_task", f"no task {p.task_code}")
    if state.phase is None:
        return refuse("task_complete", f"task {p.task_code} has completed every phase")
    if state.active_session is None:
        return refuse("no_session", f"task {p.task_code} has no active session; start it first")
    current = state.phase
    if p.phase is not None and p.phase != current:
        return refuse("stale_phase", f"the current phase of {p.task_code} is {current}, not {p.phase}")
    index = state.phases.index(current)
    following = state.phases[index + 1:]
    target = following[0] if following else None
    skipped: list[str] = []
    if p.to_phase is not None:
        if p.to_phase not in following:
            return refuse("unknown_phase", f"{p.to_phase} is not a later phase of {p.task_code} ({', '.join(following) or 'none left'})")
        skipped = following[:following.index(p.to_phase)]
        if skipped and not config.allow_phase_skip:
            return refuse("skip_not_allowed", f"phases advance in order: {current} is followed by {target}")
        target = p.to_phase
    phase_template = _phase_template(config, state, current)
    missing, recommended = gate(state, phase_template)
    overridden = False
    if missing:
        if not p.override:
            names = ", ".join(f"{m.kind} {m.name}" for m in missing)
            return refuse("gate", f"phase {current} is missing {names}", missing, recommended)
        if not config.allow_user_override:
            return refuse("override_not_allowed", "overrides are not allowed", missing, recommended)
        if not (p.reason or "").strip():
            return refuse("override_needs_reason", "an override needs a reason", missing, recommended)
        overridden = True
    at = envelope.occurred_at
    key = state.active_session
    out: list[Payload] = []
    overrides = state.overrides
    if overridden:
        record = OverrideRecord(phase=current, session_key=key, actor=envelope.actor, reason=p.reason or "", at=at,
                                missing=missing, recommended=recommended)
        overrides = [*overrides, record]
        out.append(PhaseOverridden(task_code=state.task_code, session_key=key, phase=current, actor=envelope.actor,
                                   reason=p.reason or "", missing=missing, recommended=recommended))
    next_step = (phase_template.next_step if phase_template is not None else "").replace("{task}", state.task_code)
    out.append(PhaseCompleted(task_code=state.task_code, session_key=key, phase=current, next_phase=target,
                              next_step=next_step, overridden=overridden, recommended=recommended, skipped=skipped))
    history = [replace(h, completed_at=at, overridden=overridden) if h is state.history[-1] and h.phase == current else h
               for h in state.history]
    history += [PhaseEntry(phase=s, session_key=key, started_at=at, completed_at=at, skipped=True) for s in skipped]
    status = state.status
    if target is not None:
        goal, description = _goal(config, state, target)
        history.append(PhaseEntry(phase=target, session_key=key, started_at=at))
        out.append(PhaseStarted(task_code=state.task_code, session_key=key, phase=target, goal=goal, description=description))
    else:
        status = "done"
        out.append(TaskStatusUpdated(task_code=state.task_code, status=status, reason="every phase complete"))
    return replace(state, phase=target, history=history, overrides=overrides, status=status, updated_at=at), out


def _artifact(state: TaskState | None, envelope: Envelope, _config: FoldConfig) -> Result:
    p: ArtifactRecorded = envelope.payload  # type: ignore[assignment]
    if state is None:
        return _rejected(None, envelope, "no_task", f"no task {p.task_code}")
    entry = ArtifactEntry(name=p.name, content_hash=p.content_hash, size=p.size, phase=state.phase,
                          at=envelope.occurred_at)
    return replace(state, artifacts={**state.artifacts, p.name: entry}, updated_at=envelope.occurred_at), []


def _commit(state: TaskState | None, envelope: Envelope, _config: FoldConfig) -> Result:
    p: CommitCaptured = envelope.payload  # type: ignore[assignment]
    if state is None:
        return _rejected(None, envelope, "no_task", f"no task {p.task_code}")
    if any(c.hash == p.hash for c in state.commits):
        return state, []
    entry = CommitEntry(hash=p.hash, short_hash=p.short_hash, message=p.message, author=p.author, phase=state.phase,
                        at=envelope.occurred_at, branch=p.branch)
    return replace(state, commits=[*state.commits, entry], updated_at=envelope.occurred_at), []


def _pull_request(state: TaskState | None, envelope: Envelope, _config: FoldConfig) -> Result:
    p: PullRequestLinked = envelope.payload  # type: ignore[assignment]
    if state is None:
        return _rejected(None, envelope, "no_task", f"no task {p.task_code}")
    entry = PullRequestEntry(url=p.url, number=p.number, provider=p.provider, at=envelope.occurred_at)
    return replace(state, pull_request=entry, updated_at=envelope.occurred_at), []


def _sprint_created(state: SprintState | None, envelope: Envelope, _config: FoldConfig) -> Result:
    p: SprintCreated = envelope.payload  # type: ignore[assignment]
    at = envelope.occurred_at
    if state is not None:
        return replace(state, title=p.title, status=p.status, description=p.description,
                       fields={**state.fields, **p.fields}, updated_at=at), []
    return SprintState(tenant_id=envelope.tenant_id, sprint_code=p.sprint_code, title=p.title, status=p.status,
                       description=p.description, fields=dict(p.fields), created_at=at, updated_at=at), []


def _sprint_updated(state: SprintState | None, envelope: Envelope, _config: FoldConfig) -> Result:
    p: SprintUpdated = envelope.payload  # type: ignore[assignment]
    at = envelope.occurred_at
    state = state or SprintState(tenant_id=envelope.tenant_id, sprint_code=p.sprint_code, title=p.sprint_code,
                                 created_at=at, updated_at=at)
    fields = {**state.fields, **p.fields}
    return replace(state, title=p.title or state.title, status=p.status or state.status,
                   description=state.description if p.description is None else p.description,
                   fields={k: v for k, v in fields.items() if v is not None}, updated_at=at), []


def _bug_logged(state: BugState | None, envelope: Envelope, _config: FoldConfig) -> Result:
    p: BugLogged = envelope.payload  # type: ignore[assignment]
    at = envelope.occurred_at
    if state is None:
        version = bug_rules(p.rules_version).version
        state = BugState(
            tenant_id=envelope.tenant_id, fingerprint=envelope.stream_id.rsplit(":", 1)[1], rules_version=version,
            classification=classify(p.message, p.stack), message=p.message,
            normalized_message=normalise_message(p.message, version), file=normalise_path(p.file, p.project_root),
            line=p.line, first_seen=at, last_seen=at,
        )
    tasks = state.tasks
    if p.task_code is not None:
        tasks = [*(t for t in tasks if t != p.task_code), p.task_code][-BUG_TASKS_KEPT:]
    latest = at >= state.last_seen
    state = replace(
        state, occurrences=state.occurrences + 1, tasks=tasks, first_seen=min(state.first_seen, at),
        last_seen=max(state.last_seen, at), last_task=(p.task_code or state.last_task) if latest else state.last_task,
    )
    grouped = BugGrouped(fingerprint=state.fingerprint, rules_version=state.rules_version, task_code=p.task_code,
                         new=state.occurrences == 1, occurrences=state.occurrences,
                         classification=state.classification, first_seen=state.first_seen, last_seen=state.last_seen)
    return state, [grouped]


def _rules_adopted(state: RulesState | None, envelope: Envelope, _config: FoldConfig) -> Result:
    p: BugRulesAdopted = envelope.payload  # type: ignore[assignment]
    previous = [*state.previous, state.version] if state is not None else [p.previous]
    return RulesState(tenant_id=envelope.tenant_id, version=p.version, adopted_at=envelope.occurred_at,
                      previous=previous, applied_event_ids=state.applied_event_ids if state else []), []


# Decision events (session started, phase completed, bug grouped...) have no handler: applied when made.
_HANDLERS: dict[type, Callable[[Any, Envelope, FoldConfig], Result]] = {
    TaskCreated: _create,
    TaskUpdated: _update,
    TaskStatusUpdated: _status,
    SessionStartRequested: _start,
    SessionEndRequested: _end,
    PhaseCompletionRequested: _complete,
    ArtifactRecorded: _artifact,
    CommitCaptured: _commit,
    PullRequestLinked: _pull_request,
    SprintCreated: _sprint_created,
    SprintUpdated: _sprint_updated,
    BugLogged: _bug_logged,
    BugRulesAdopted: _rules_adopted,
}
