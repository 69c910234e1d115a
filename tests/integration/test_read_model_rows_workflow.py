"""The workflow read models on a real PostgreSQL: rows projected from known events, read back by column name.

Task T-1 (a bug fix, phases intake, research, execute, review, close of examples/workflow.yaml) goes through two
sessions, a passed gate, an overridden one, a refused request, an artifact, a commit and a pull request.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from projections.workflow.readmodels import BUG_RULES, BUGS, SESSIONS, SPRINTS, TASKS
from schemas import Payload
from schemas.workflow import (
    ArtifactRecorded,
    BugLogged,
    BugRulesAdopted,
    CommitCaptured,
    PhaseCompletionRequested,
    PullRequestLinked,
    SessionEndRequested,
    SessionStartRequested,
    SprintCreated,
    SprintUpdated,
    TaskCreated,
    TaskUpdated,
)
from tests.fixtures.folds import states_after

pytestmark = pytest.mark.integration

HASH = "ab" * 32
SESSION_1, SESSION_2 = "sess_T-1_20260302_100100", "sess_T-1_20260302_100900"


def utc(hhmm: str, day: int = 2) -> datetime:
    return datetime(2026, 3, day, int(hhmm[:2]), int(hhmm[3:]), tzinfo=UTC)


def fold_all(events: list[tuple[str, Payload]]) -> list:
    """The state after each event (one stream), folded with the domain's own folder; actor `ana`."""
    return states_after("workflow", [(utc(when), payload, None) for when, payload in events], actor="ana")


def task_story() -> list:
    return fold_all([
        ("10:00", TaskCreated(task_code="T-1", title="Add retries", sprint_code="S-7", type="bug_fix",
                              description="Retry failed sends", fields={"acceptance_criteria": "sent twice"})),
        ("10:01", SessionStartRequested(task_code="T-1")),
        ("10:02", ArtifactRecorded(task_code="T-1", name="TASK.md", content_hash=HASH, size=120)),
        ("10:03", PhaseCompletionRequested(task_code="T-1")),  # intake's gate passes: TASK.md and a title
        ("10:04", CommitCaptured(task_code="T-1", hash="abcdef1234567", short_hash="abcdef1", message="Retry sends",
                                 author="ana", branch="fix/retries")),
        ("10:05", PhaseCompletionRequested(task_code="T-1", override=True, reason="context is in the issue")),
        ("10:06", PhaseCompletionRequested(task_code="T-1", phase="review")),  # stale: refused
        ("10:07", PullRequestLinked(task_code="T-1", url="https://git.example/pr/9", number=9, provider="github")),
        ("10:08", SessionEndRequested(task_code="T-1", force=True)),
        ("10:08", TaskUpdated(task_code="T-1", title="Add send retries",
                              fields={"tags": ["outbound"], "acceptance_criteria": None})),
        ("10:09", SessionStartRequested(task_code="T-1")),
    ])


async def test_workflow_tasks_columns_by_name(project_rows) -> None:
    states = task_story()
    (row,) = await project_rows(TASKS, states[:1])
    assert (row["title"], row["status"], row["phase"], row["active_session"]) == ("Add retries", "todo", "intake", None)
    assert row["fields"] == {"acceptance_criteria": "sent twice"}
    assert (row["sessions"], row["history"], row["pull_request"]) == ([], [], None)

    (row,) = await project_rows(TASKS, states[-1:])  # upserted
    assert (row["stream_id"], row["tenant_id"], row["task_code"]) == ("task:acme:T-1", "acme", "T-1")
    assert row["sprint_code"] == "S-7"
    assert (row["title"], row["type"], row["description"]) == ("Add send retries", "bug_fix", "Retry failed sends")
    assert (row["status"], row["phase"], row["active_session"]) == ("in_progress", "execute", SESSION_2)
    assert row["phases"] == ["intake", "research", "execute", "review", "close"]
    assert row["fields"] == {"tags": ["outbound"]}
    assert [(s["session_key"], s["started_at"], s["ended_at"], s["forced"]) for s in row["sessions"]] == [
        (SESSION_1, "2026-03-02T10:01:00Z", "2026-03-02T10:08:00Z", True), (SESSION_2, "2026-03-02T10:09:00Z", None, False)]
    assert [(h["phase"], h["started_at"], h["completed_at"], h["overridden"]) for h in row["history"]] == [
        ("intake", "2026-03-02T10:01:00Z", "2026-03-02T10:03:00Z", False),
        ("research", "2026-03-02T10:03:00Z", "2026-03-02T10:05:00Z", True),
        ("execute", "2026-03-02T10:05:00Z", None, False)]
    (override,) = row["overrides"]
    assert (override["phase"], override["actor"], override["reason"]) == ("research", "ana", "context is in the issue")
    assert override["missing"] == [{"kind": "artifact", "name": "CONTEXT.md"}]
    (rejection,) = row["rejections"]
    assert (rejection["kind"], rejection["phase"], rejection["at"]) == ("stale_phase", "execute", "2026-03-02T10:06:00Z")
    assert row["artifacts"] == [
        {"name": "TASK.md", "content_hash": HASH, "size": 120, "phase": "intake", "at": "2026-03-02T10:02:00Z"}]
    assert row["commits"] == [{"hash": "abcdef1234567", "short_hash": "abcdef1", "message": "Retry sends",
                               "author": "ana", "phase": "research", "at": "2026-03-02T10:04:00Z",
                               "branch": "fix/retries"}]
    assert row["pull_request"] == {"url": "https://git.example/pr/9", "number": 9, "provider": "github",
                                   "at": "2026-03-02T10:07:00Z"}
    assert (row["created_at"], row["updated_at"]) == (utc("10:00"), utc("10:09"))


async def test_workflow_sessions_columns_by_name(project_rows) -> None:
    states = task_story()
    (open_row,) = await project_rows(SESSIONS, [states[1]])
    assert (open_row["ended_at"], open_row["forced"]) == (None, False)

    first, second = await project_rows(SESSIONS, states[-1:])  # the first upserted (ended), the second inserted
    assert first["id"] == f"acme:{SESSION_1}"
    assert (first["tenant_id"], first["session_key"], first["task_code"]) == ("acme", SESSION_1, "T-1")
    assert (first["started_at"], first["ended_at"], first["forced"]) == (utc("10:01"), utc("10:08"), True)
    assert second["id"] == f"acme:{SESSION_2}"
    assert (second["tenant_id"], second["session_key"], second["task_code"]) == ("acme", SESSION_2, "T-1")
    assert (second["started_at"], second["ended_at"], second["forced"]) == (utc("10:09"), None, False)


async def test_workflow_sprints_columns_by_name(project_rows) -> None:
    created, updated = fold_all([
        ("09:00", SprintCreated(sprint_code="S-7", title="Sprint seven", status="planned", description="Ship retries",
                                fields={"goal": "fewer failures"})),
        ("09:30", SprintUpdated(sprint_code="S-7", status="active", fields={"capacity": 12})),
    ])
    (row,) = await project_rows(SPRINTS, [created])
    assert (row["status"], row["updated_at"]) == ("planned", utc("09:00"))
    (row,) = await project_rows(SPRINTS, [updated])
    assert (row["stream_id"], row["tenant_id"], row["sprint_code"]) == ("sprint:acme:S-7", "acme", "S-7")
    assert (row["title"], row["status"], row["description"]) == ("Sprint seven", "active", "Ship retries")
    assert row["fields"] == {"goal": "fewer failures", "capacity": 12}
    assert (row["created_at"], row["updated_at"]) == (utc("09:00"), utc("09:30"))


async def test_workflow_bugs_columns_by_name(project_rows) -> None:
    def logged(task: str, request: int) -> BugLogged:
        return BugLogged(task_code=task, message=f"TimeoutError: request {request} timed out after 30s",
                         file="/app/src/worker.py", line=42)

    first, second = fold_all([("11:00", logged("T-1", 123)), ("11:45", logged("T-2", 456))])
    # Rules v1: sha256 over the version, the normalised message, the relative path and the line.
    normalised = "TimeoutError: request # timed out after #s"
    fingerprint = hashlib.sha256(f"v1|{normalised}|src/worker.py|42|".encode()).hexdigest()
    (row,) = await project_rows(BUGS, [first])
    assert (row["occurrences"], row["last_task"], row["last_seen"]) == (1, "T-1", utc("11:00"))

    (row,) = await project_rows(BUGS, [second])
    assert row["stream_id"] == f"bug:acme:{fingerprint}"
    assert (row["tenant_id"], row["fingerprint"], row["rules_version"]) == ("acme", fingerprint, 1)
    assert row["classification"] == "timeout"
    assert row["message"] == "TimeoutError: request 123 timed out after 30s"
    assert row["normalized_message"] == normalised
    assert (row["file"], row["line"]) == ("src/worker.py", 42)
    assert (row["first_seen"], row["last_seen"]) == (utc("11:00"), utc("11:45"))
    assert row["occurrences"] == 2
    assert (row["tasks"], row["last_task"]) == (["T-1", "T-2"], "T-2")


async def test_workflow_bug_rules_columns_by_name(project_rows) -> None:
    first, second = fold_all([("12:00", BugRulesAdopted(version=3, previous=1)),
                              ("12:30", BugRulesAdopted(version=2, previous=3))])
    (row,) = await project_rows(BUG_RULES, [first])
    assert (row["version"], row["adopted_at"], row["previous"]) == (3, utc("12:00"), [1])
    (row,) = await project_rows(BUG_RULES, [second])
    assert (row["stream_id"], row["tenant_id"]) == ("bugrules:acme", "acme")
    assert (row["version"], row["adopted_at"], row["previous"]) == (2, utc("12:30"), [1, 3])
