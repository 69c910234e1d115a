"""Workflow read-model rows: tasks, their sessions, sprints, bugs and each tenant's bug rules."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from agents.workflow.fold import BugState, RulesState, SprintState, TaskState
from projections.readmodel import ReadModel
from projections.workflow.search import SEARCH, SEARCH_TYPES
from schemas.workflow import (
    bug_rules_stream_id,
    bug_stream_id,
    sprint_stream_id,
    task_stream_id,
)

_json = msgspec.json.Encoder(order="deterministic")


def _doc(value: object) -> str:
    return _json.encode(value).decode()


def task_rows(state: object) -> Iterable[tuple]:
    """The workflow_tasks row of a task state."""
    if not isinstance(state, TaskState):
        return ()
    return ((
        task_stream_id(state.tenant_id, state.task_code), state.tenant_id, state.task_code, state.sprint_code,
        state.title, state.type, state.description, state.status, state.phase, state.active_session,
        _doc(state.phases), _doc(state.fields), _doc(state.sessions), _doc(state.history), _doc(state.overrides),
        _doc(state.rejections), _doc(list(state.artifacts.values())), _doc(state.commits),
        None if state.pull_request is None else _doc(state.pull_request), state.created_at, state.updated_at,
    ),)


def session_rows(state: object) -> Iterable[tuple]:
    """One workflow_sessions row per session of a task state."""
    if not isinstance(state, TaskState):
        return ()
    return [(f"{state.tenant_id}:{s.session_key}", state.tenant_id, s.session_key, state.task_code, s.started_at,
             s.ended_at, s.forced) for s in state.sessions]


def sprint_rows(state: object) -> Iterable[tuple]:
    """The workflow_sprints row of a sprint state."""
    if not isinstance(state, SprintState):
        return ()
    return ((sprint_stream_id(state.tenant_id, state.sprint_code), state.tenant_id, state.sprint_code, state.title,
             state.status, state.description, _doc(state.fields), state.created_at, state.updated_at),)


def bug_rows(state: object) -> Iterable[tuple]:
    """The workflow_bugs row of a bug state."""
    if not isinstance(state, BugState):
        return ()
    return ((bug_stream_id(state.tenant_id, state.fingerprint), state.tenant_id, state.fingerprint, state.rules_version,
             state.classification, state.message, state.normalized_message, state.file, state.line, state.first_seen,
             state.last_seen, state.occurrences, _doc(state.tasks), state.last_task),)


def rules_rows(state: object) -> Iterable[tuple]:
    """The workflow_bug_rules row of a tenant's rules state."""
    if not isinstance(state, RulesState):
        return ()
    return ((bug_rules_stream_id(state.tenant_id), state.tenant_id, state.version, state.adopted_at, _doc(state.previous)),)


TASKS = ReadModel(
    table="workflow_tasks",
    columns=(
        ("stream_id", "text"), ("tenant_id", "text"), ("task_code", "text"), ("sprint_code", "text"),
        ("title", "text"), ("type", "text"), ("description", "text"), ("status", "text"), ("phase", "text"),
        ("active_session", "text"), ("phases", "jsonb"), ("fields", "jsonb"), ("sessions", "jsonb"),
        ("history", "jsonb"), ("overrides", "jsonb"), ("rejections", "jsonb"), ("artifacts", "jsonb"),
        ("commits", "jsonb"), ("pull_request", "jsonb"), ("created_at", "timestamptz"), ("updated_at", "timestamptz"),
    ),
    rows=task_rows,
)
SESSIONS = ReadModel(
    table="workflow_sessions",
    columns=(("id", "text"), ("tenant_id", "text"), ("session_key", "text"), ("task_code", "text"),
             ("started_at", "timestamptz"), ("ended_at", "timestamptz"), ("forced", "boolean")),
    rows=session_rows,
)
SPRINTS = ReadModel(
    table="workflow_sprints",
    columns=(("stream_id", "text"), ("tenant_id", "text"), ("sprint_code", "text"), ("title", "text"),
             ("status", "text"), ("description", "text"), ("fields", "jsonb"), ("created_at", "timestamptz"),
             ("updated_at", "timestamptz")),
    rows=sprint_rows,
)
BUGS = ReadModel(
    table="workflow_bugs",
    columns=(("stream_id", "text"), ("tenant_id", "text"), ("fingerprint", "text"), ("rules_version", "integer"),
             ("classification", "text"), ("message", "text"), ("normalized_message", "text"), ("file", "text"),
             ("line", "integer"), ("first_seen", "timestamptz"), ("last_seen", "timestamptz"),
             ("occurrences", "integer"), ("tasks", "jsonb"), ("last_task", "text")),
    rows=bug_rows,
)
BUG_RULES = ReadModel(
    table="workflow_bug_rules",
    columns=(("stream_id", "text"), ("tenant_id", "text"), ("version", "integer"), ("adopted_at", "timestamptz"),
             ("previous", "jsonb")),
    rows=rules_rows,
)

# Context search: tables derived from the events archive (projections/workflow/search.py), not from states.
READ_MODELS = (TASKS, SESSIONS, SPRINTS, BUGS, BUG_RULES, SEARCH, SEARCH_TYPES)
