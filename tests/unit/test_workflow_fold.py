"""The task fold: phases in template order, gates, audited overrides, sessions, variants; bugs and rules."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from agents.workflow.fold import CODEC, FoldConfig, TaskState
from agents.workflow.fold import fold as workflow_fold
from agents.workflow.templates import DEFAULT_TEMPLATE, Templates, load_template
from schemas import Envelope, Payload, new_event
from schemas.workflow import (
    ArtifactRecorded,
    BugLogged,
    CommitCaptured,
    PhaseCompletionRequested,
    PullRequestLinked,
    SessionEndRequested,
    SessionStartRequested,
    TaskCreated,
    TaskUpdated,
)
from tests.fixtures.folds import applied_once

T0 = datetime(2025, 1, 13, 14, 30, 22, tzinfo=UTC)
HASH = "a" * 64
FEATURE = ["intake", "research", "plan", "execute", "review", "close"]
REQUIRED = {"intake": ["TASK.md"], "research": ["CONTEXT.md"], "plan": ["PLAN.md"], "review": ["CHANGES.md"]}


fold = applied_once(workflow_fold)  # as the spine applies it: each event once


class Task:
    """Drives one stream through the fold, feeding every emitted event back as the log would."""

    def __init__(self, **config: bool) -> None:
        self.config = FoldConfig(templates=Templates(load_template(DEFAULT_TEMPLATE)), **config)
        self.state = None
        self.at = T0
        self.log: list[Envelope] = []

    def send(self, payload: Payload, actor: str = "agent:claude") -> list[Envelope]:
        self.at += timedelta(minutes=1)
        envelope = new_event("acme", payload, event_id=uuid.uuid4(), occurred_at=self.at, recorded_at=self.at,
                             actor=actor)
        self.state, out = fold(self.state, envelope, self.config)
        self.log += [envelope, *out]
        for echo in out:  # a decision coming back on its stream changes nothing
            if echo.stream_id == envelope.stream_id:
                again, more = fold(self.state, echo, self.config)
                assert again is self.state and more == []
        return out

    def types(self, out: list[Envelope]) -> list[str]:
        return [e.type for e in out]

    def artifacts(self, phase: str) -> None:
        for name in REQUIRED.get(phase, []):
            self.send(ArtifactRecorded(task_code="TSK-001", name=name, content_hash=HASH, size=10))


def complete(task: Task, **kwargs: object) -> list[Envelope]:
    return task.send(PhaseCompletionRequested(task_code="TSK-001", **kwargs))  # type: ignore[arg-type]


def started(kind: str = "feature") -> Task:
    task = Task()
    assert task.send(TaskCreated(task_code="TSK-001", title="Login", type=kind)) == []
    out = task.send(SessionStartRequested(task_code="TSK-001"))
    assert task.types(out) == ["workflow.session.started", "workflow.phase.started", "workflow.task.status.updated"]
    assert out[0].payload.session_key == "sess_TSK-001_20250113_143222"
    assert out[0].payload.goal.startswith("Understand")
    return task


def test_six_phase_path_in_template_order() -> None:
    task = started()
    for phase in FEATURE:
        task.artifacts(phase)
        out = complete(task)
        done = out[0].payload
        assert done.phase == phase and not done.overridden
        assert done.next_phase == (FEATURE[FEATURE.index(phase) + 1] if phase != "close" else None)
    assert "baton task end TSK-001" in done.next_step
    state = task.state
    assert isinstance(state, TaskState) and state.phase is None and state.status == "done"
    assert [h.phase for h in state.history] == FEATURE and all(h.completed_at for h in state.history)
    assert task.types(task.send(SessionEndRequested(task_code="TSK-001"))) == ["workflow.session.ended"]
    assert CODEC.decode(CODEC.encode(state)) == state


def test_gate_blocks_on_a_missing_artifact_then_passes() -> None:
    task = started()
    out = complete(task)
    assert task.types(out) == ["workflow.phase.completion.rejected"]
    rejected = out[0].payload
    assert rejected.kind == "gate" and [m.name for m in rejected.missing] == ["TASK.md"]
    assert {r.name for r in rejected.recommended} == {"acceptance_criteria", "tags"}
    assert task.state.phase == "intake" and task.state.rejections[-1].kind == "gate"
    task.artifacts("intake")
    task.send(TaskUpdated(task_code="TSK-001", fields={"tags": ["auth"]}))
    out = complete(task)
    assert task.types(out) == ["workflow.phase.completed", "workflow.phase.started"]
    assert [r.name for r in out[0].payload.recommended] == ["acceptance_criteria"]
    assert task.state.phase == "research"


def test_override_is_recorded_with_actor_and_reason() -> None:
    task = started()
    assert complete(task, override=True)[0].payload.kind == "override_needs_reason"
    out = task.send(PhaseCompletionRequested(task_code="TSK-001", override=True, reason="spec is in the ticket"),
                    actor="user:ana")
    assert task.types(out) == ["workflow.phase.overridden", "workflow.phase.completed", "workflow.phase.started"]
    overridden = out[0].payload
    assert (overridden.actor, overridden.reason, [m.name for m in overridden.missing]) == (
        "user:ana", "spec is in the ticket", ["TASK.md"])
    record = task.state.overrides[0]
    assert (record.phase, record.actor, record.reason) == ("intake", "user:ana", "spec is in the ticket")
    assert task.state.history[0].overridden


def test_override_refused_when_not_allowed_and_skips_refused_by_default() -> None:
    task = Task(allow_user_override=False)
    task.send(TaskCreated(task_code="TSK-001", title="Login"))
    task.send(SessionStartRequested(task_code="TSK-001"))
    assert complete(task, override=True, reason="x")[0].payload.kind == "override_not_allowed"
    task.artifacts("intake")
    assert complete(task, to_phase="plan")[0].payload.kind == "skip_not_allowed"
    assert complete(task, phase="plan")[0].payload.kind == "stale_phase"
    assert complete(task, to_phase="intake")[0].payload.kind == "unknown_phase"


def test_skip_when_allowed_marks_skipped_phases() -> None:
    task = Task(allow_phase_skip=True)
    task.send(TaskCreated(task_code="TSK-001", title="Login"))
    task.send(SessionStartRequested(task_code="TSK-001"))
    task.artifacts("intake")
    out = complete(task, to_phase="plan")
    assert out[0].payload.skipped == ["research"] and task.state.phase == "plan"
    assert [(h.phase, h.skipped) for h in task.state.history] == [("intake", False), ("research", True), ("plan", False)]


def test_bug_fix_variant_has_no_plan_phase() -> None:
    task = started("bug_fix")
    assert task.state.phases == ["intake", "research", "execute", "review", "close"]
    task.artifacts("intake")
    complete(task)
    task.artifacts("research")
    assert complete(task)[0].payload.next_phase == "execute"


def test_unknown_type_and_duplicate_task_are_rejected() -> None:
    task = Task()
    out = task.send(TaskCreated(task_code="TSK-001", title="Login", type="spike"))
    assert out[0].payload.kind == "unknown_type" and task.state is None
    task.send(TaskCreated(task_code="TSK-001", title="Login"))
    assert task.send(TaskCreated(task_code="TSK-001", title="Again"))[0].payload.kind == "exists"
    assert task.state.title == "Login"


def test_requests_on_a_missing_task_are_rejected_events() -> None:
    task = Task()
    for request in (SessionStartRequested(task_code="TSK-001"), SessionEndRequested(task_code="TSK-001"),
                    PhaseCompletionRequested(task_code="TSK-001")):
        out = task.send(request)
        assert out[0].payload.kind == "no_task" and out[0].type.endswith("rejected")
    assert task.state is None


def test_resume_and_forced_end() -> None:
    task = started()
    key = task.state.active_session
    out = task.send(SessionStartRequested(task_code="TSK-001"))
    assert task.types(out) == ["workflow.session.started"]
    assert out[0].payload.resumed and out[0].payload.session_key == key and out[0].payload.phase == "intake"
    assert task.state.sessions[0].resumed == 1
    assert task.send(SessionEndRequested(task_code="TSK-001"))[0].payload.kind == "session_open"
    ended = task.send(SessionEndRequested(task_code="TSK-001", force=True))[0].payload
    assert ended.forced and ended.phase == "intake" and task.state.active_session is None
    assert complete(task)[0].payload.kind == "no_session"
    out = task.send(SessionStartRequested(task_code="TSK-001"))
    assert not out[0].payload.resumed and out[0].payload.session_key != key and task.state.phase == "intake"
    assert task.types(out) == ["workflow.session.started"]  # the intake phase is still open from the first session


def test_artifacts_commits_and_pr_are_recorded_with_the_phase() -> None:
    task = started()
    task.send(CommitCaptured(task_code="TSK-001", hash="1612471305" * 4, short_hash="1612471", message="feat: x",
                             author="Jo <jo@example.com>"))
    task.send(CommitCaptured(task_code="TSK-001", hash="1612471305" * 4, short_hash="1612471", message="feat: x",
                             author="Jo <jo@example.com>"))
    task.send(PullRequestLinked(task_code="TSK-001", url="https://github.com/o/r/pull/123", number=123, provider="github"))
    task.artifacts("intake")
    state = task.state
    assert [(c.short_hash, c.phase) for c in state.commits] == [("1612471", "intake")]
    assert state.pull_request.number == 123 and state.artifacts["TASK.md"].phase == "intake"


def test_redelivered_request_changes_nothing() -> None:
    task = started()
    request = task.log[2]
    again, out = fold(task.state, request, task.config)
    assert again is task.state and out == []


def test_bug_fold_counts_occurrences_tasks_and_times() -> None:
    task = Task()
    first = task.send(BugLogged(task_code="TSK-001", message="Undefined variable: foo at 0x7ffe12", file="/app/a.php",
                                line=42))[0].payload
    again = task.send(BugLogged(task_code="TSK-002", message="Undefined variable: foo at 0x1234ab",
                                file="/srv/api/a.php", line=42))[0].payload
    assert first.new and not again.new and again.fingerprint == first.fingerprint
    assert (again.occurrences, again.classification, again.rules_version) == (2, "name", 1)
    assert task.state.tasks == ["TSK-001", "TSK-002"] and task.state.last_task == "TSK-002"
    assert task.state.first_seen < task.state.last_seen and task.state.file == "a.php"


def test_bug_fold_under_rules_three_joins_quoted_ids_that_differ_only_in_numbers() -> None:
    stack = 'Traceback (most recent call last):\n  File "/app/shop/orders.py", line 88, in load\n'
    logged = [BugLogged(message=f"KeyError: 'order_{n}'", file="/app/shop/orders.py", line=88, stack=stack,
                        rules_version=version) for version in (2, 3) for n in (5531, 77)]
    v2_a, v2_b, v3_a, v3_b = (new_event("acme", p, event_id=uuid.uuid4(), occurred_at=T0, recorded_at=T0,
                                        actor="agent:claude") for p in logged)
    assert v2_a.stream_id != v2_b.stream_id  # v2 keeps its two bugs (replay regroups v2 events alike)
    task = Task()
    first = task.send(logged[2])[0].payload
    again = task.send(logged[3])[0].payload
    assert v3_a.stream_id == v3_b.stream_id == f"bug:acme:{first.fingerprint}"
    assert first.new and not again.new and (again.fingerprint, again.occurrences, again.rules_version) == (
        first.fingerprint, 2, 3)
    assert task.state.normalized_message == "KeyError: 'order_#'"


@pytest.mark.parametrize("kind", ["feature", "bug_fix"])
def test_variant_phases_follow_the_template(kind: str) -> None:
    template = load_template(DEFAULT_TEMPLATE)
    assert started(kind).state.phases == template.phases_of(kind)
