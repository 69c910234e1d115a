"""Workflow events: sprints, tasks moving through phases with gates and overrides, artifacts, commits, PRs, bugs.

Requests (`...requested`) are what callers ask for; the task fold answers each with its decision (started,
completed, overridden, rejected), so the log holds every attempt as well as every transition.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from schemas.catalog import EventCatalog
from schemas.codec import register_catalog
from schemas.envelope import Payload

Code = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
Text = Annotated[str, msgspec.Meta(max_length=10_000)]
ShortText = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
Fields = dict[str, Any]


def task_stream_id(tenant_id: str, task_code: str) -> str:
    """Stream id of one task (its sessions, phases, artifacts, commits and PR)."""
    return f"task:{tenant_id}:{task_code}"


def sprint_stream_id(tenant_id: str, sprint_code: str) -> str:
    """Stream id of one sprint."""
    return f"sprint:{tenant_id}:{sprint_code}"


def bug_stream_id(tenant_id: str, fingerprint: str) -> str:
    """Stream id of one bug: every occurrence with this fingerprint."""
    return f"bug:{tenant_id}:{fingerprint}"


def bug_rules_stream_id(tenant_id: str) -> str:
    """Stream id of a tenant's choice of bug normalisation rules."""
    return f"bugrules:{tenant_id}"


class GateItem(msgspec.Struct, frozen=True, kw_only=True):
    """Something a phase gate checks: an artifact or a task field."""

    kind: Literal["artifact", "field"]
    name: str


class SprintCreated(Payload, frozen=True, kw_only=True):
    """A sprint was created."""

    sprint_code: Code
    title: ShortText
    status: ShortText = "active"
    description: Text = ""
    fields: Fields = {}


class SprintUpdated(Payload, frozen=True, kw_only=True):
    """A sprint's title, status, description or fields changed (None: unchanged)."""

    sprint_code: Code
    title: ShortText | None = None
    status: ShortText | None = None
    description: Text | None = None
    fields: Fields = {}


class TaskCreated(Payload, frozen=True, kw_only=True):
    """A task was asked for; type names a template variant (None: the template's default)."""

    task_code: Code
    title: ShortText
    sprint_code: Code | None = None
    type: Code | None = None
    description: Text = ""
    fields: Fields = {}


class TaskUpdated(Payload, frozen=True, kw_only=True):
    """A task's title, sprint or description changed; fields are merged (a null value removes the field)."""

    task_code: Code
    title: ShortText | None = None
    sprint_code: Code | None = None
    description: Text | None = None
    fields: Fields = {}


class TaskStatusUpdated(Payload, frozen=True, kw_only=True):
    """A task's status changed (the fold sets in_progress and done; anyone may set others, e.g. blocked)."""

    task_code: Code
    status: ShortText
    reason: Text = ""


class SessionStartRequested(Payload, frozen=True, kw_only=True):
    """Someone asked to start (or resume) a task's session."""

    task_code: Code


class SessionStarted(Payload, frozen=True, kw_only=True):
    """A session started, or an active one was resumed; phase is the current one with its instructions."""

    task_code: str
    session_key: str
    phase: str
    resumed: bool
    goal: str
    description: str


class SessionEndRequested(Payload, frozen=True, kw_only=True):
    """Someone asked to end a task's session; force ends it before the last phase is complete."""

    task_code: Code
    force: bool = False


class SessionEnded(Payload, frozen=True, kw_only=True):
    """A session ended; forced when phases were left incomplete."""

    task_code: str
    session_key: str
    phase: str | None
    forced: bool


class PhaseCompletionRequested(Payload, frozen=True, kw_only=True):
    """Someone asked to complete the current phase (optionally naming it, or the phase to move to)."""

    task_code: Code
    phase: Code | None = None
    to_phase: Code | None = None
    override: bool = False
    reason: Text | None = None


class PhaseStarted(Payload, frozen=True, kw_only=True):
    """A task entered a phase."""

    task_code: str
    session_key: str
    phase: str
    goal: str
    description: str


class PhaseCompleted(Payload, frozen=True, kw_only=True):
    """A phase passed its gate (or was overridden); next_phase None means the task is complete."""

    task_code: str
    session_key: str
    phase: str
    next_phase: str | None
    next_step: str
    overridden: bool = False
    recommended: list[GateItem] = []
    skipped: list[str] = []


class PhaseOverridden(Payload, frozen=True, kw_only=True):
    """A failed gate was overridden: by whom, why, and what it was missing. Kept forever."""

    task_code: str
    session_key: str
    phase: str
    actor: str
    reason: str
    missing: list[GateItem] = []
    recommended: list[GateItem] = []


RejectionKind = Literal[
    "gate", "override_not_allowed", "override_needs_reason", "skip_not_allowed", "unknown_phase",
    "stale_phase", "no_session", "no_task", "task_complete",
]


class PhaseCompletionRejected(Payload, frozen=True, kw_only=True):
    """A completion was refused: what is missing (required) and what is only recommended."""

    task_code: str
    session_key: str | None
    phase: str | None
    kind: RejectionKind
    reason: str
    missing: list[GateItem] = []
    recommended: list[GateItem] = []


CommandRejectionKind = Literal["no_task", "exists", "unknown_type", "no_session", "session_open", "task_complete"]


class TaskCommandRejected(Payload, frozen=True, kw_only=True):
    """A task request other than a phase completion was refused (command names the request's type)."""

    task_code: str
    command: str
    kind: CommandRejectionKind
    reason: str


class ArtifactRecorded(Payload, frozen=True, kw_only=True):
    """A task artifact (a file such as PLAN.md) was recorded with its content hash and size."""

    task_code: Code
    name: ShortText
    content_hash: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    size: Annotated[int, msgspec.Meta(ge=0)]


class CommitCaptured(Payload, frozen=True, kw_only=True):
    """A git commit was captured for a task; the fold records the phase it was captured in."""

    task_code: Code
    hash: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{7,64}$")]
    short_hash: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{4,64}$")]
    message: Text
    author: ShortText
    branch: ShortText | None = None


class PullRequestLinked(Payload, frozen=True, kw_only=True):
    """A pull request was linked to a task."""

    task_code: Code
    url: Annotated[str, msgspec.Meta(min_length=8, max_length=2000, pattern=r"^https?://")]
    number: Annotated[int, msgspec.Meta(ge=1)] | None = None
    provider: ShortText | None = None


class BugLogged(Payload, frozen=True, kw_only=True):
    """An error was seen (by a person, an agent or a failed step); its fingerprint picks the bug it belongs to.

    rules_version None groups it by the default normalisation rules; project_root is stripped from paths.
    """

    task_code: Code | None = None
    message: Annotated[str, msgspec.Meta(min_length=1, max_length=10_000)]
    file: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
    line: Annotated[int, msgspec.Meta(ge=0)] | None = None
    stack: Annotated[str, msgspec.Meta(max_length=100_000)] | None = None
    project_root: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
    # The versions of agents.bugrules.RULES (a new version adds its number here).
    rules_version: Literal[1, 2, 3] | None = None


class BugGrouped(Payload, frozen=True, kw_only=True):
    """The bug fold's answer to a logged error: which bug, whether it is new, how often it was seen."""

    fingerprint: str
    rules_version: int
    task_code: str | None
    new: bool
    occurrences: int
    classification: str
    first_seen: datetime
    last_seen: datetime


class BugRulesAdopted(Payload, frozen=True, kw_only=True):
    """A tenant's bug list now groups by another rules version (its history was re-logged under it)."""

    version: int
    previous: int


WORKFLOW_EVENTS: dict[str, type[Payload]] = {
    "workflow.sprint.created": SprintCreated,
    "workflow.sprint.updated": SprintUpdated,
    "workflow.task.created": TaskCreated,
    "workflow.task.updated": TaskUpdated,
    "workflow.task.status.updated": TaskStatusUpdated,
    "workflow.session.start.requested": SessionStartRequested,
    "workflow.session.started": SessionStarted,
    "workflow.session.end.requested": SessionEndRequested,
    "workflow.session.ended": SessionEnded,
    "workflow.phase.completion.requested": PhaseCompletionRequested,
    "workflow.phase.started": PhaseStarted,
    "workflow.phase.completed": PhaseCompleted,
    "workflow.phase.overridden": PhaseOverridden,
    "workflow.phase.completion.rejected": PhaseCompletionRejected,
    "workflow.task.command.rejected": TaskCommandRejected,
    "workflow.artifact.recorded": ArtifactRecorded,
    "workflow.commit.captured": CommitCaptured,
    "workflow.pull_request.linked": PullRequestLinked,
    "workflow.bug.logged": BugLogged,
    "workflow.bug.grouped": BugGrouped,
    "workflow.bug.rules.adopted": BugRulesAdopted,
}

WORKFLOW_INGESTIBLE = frozenset({
    "workflow.sprint.created", "workflow.sprint.updated", "workflow.task.created", "workflow.task.updated",
    "workflow.task.status.updated", "workflow.session.start.requested", "workflow.session.end.requested",
    "workflow.phase.completion.requested", "workflow.artifact.recorded", "workflow.commit.captured",
    "workflow.pull_request.linked", "workflow.bug.logged",
})


def bug_fingerprint(payload: BugLogged) -> str:
    """The fingerprint of a logged error under its rules version."""
    from schemas.bugrules import (
        fingerprint,  # pure rules; schemas import neither faust nor psycopg
    )

    return fingerprint(payload.message, payload.file, payload.line, payload.stack,
                       version=payload.rules_version, project_root=payload.project_root)


def workflow_stream_id(tenant_id: str, payload: Payload) -> str:
    """Sprint events by sprint, bugs by fingerprint, rules by tenant, everything else by task."""
    if isinstance(payload, SprintCreated | SprintUpdated):
        return sprint_stream_id(tenant_id, payload.sprint_code)
    if isinstance(payload, BugLogged):
        return bug_stream_id(tenant_id, bug_fingerprint(payload))
    if isinstance(payload, BugGrouped):
        return bug_stream_id(tenant_id, payload.fingerprint)
    if isinstance(payload, BugRulesAdopted):
        return bug_rules_stream_id(tenant_id)
    return task_stream_id(tenant_id, payload.task_code)  # type: ignore[attr-defined]


CATALOG = register_catalog(EventCatalog(
    domain="workflow",
    events=WORKFLOW_EVENTS,
    ingestible=WORKFLOW_INGESTIBLE,
    stream_id=workflow_stream_id,
))
