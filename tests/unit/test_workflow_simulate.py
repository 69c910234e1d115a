"""The workflow what-if: the log re-folded under a candidate template; phase completions allowed or refused."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import yaml

from agents.batching import Folder
from agents.workflow.fold import FoldConfig
from agents.workflow.fold import fold as workflow_fold
from agents.workflow.simulate import Outcome, simulate
from agents.workflow.templates import (
    DEFAULT_TEMPLATE,
    Templates,
    load_template,
    parse_template,
)
from schemas import Envelope, Payload, new_event
from schemas.workflow import (
    ArtifactRecorded,
    PhaseCompletionRequested,
    SessionStartRequested,
    TaskCreated,
)

T0 = datetime(2025, 1, 13, 9, tzinfo=UTC)
HASH = "a" * 64


def config_with(**intake_artifacts: list[str]) -> FoldConfig:
    """The default template with the intake phase's required artifacts replaced (none given: as it is)."""
    document = yaml.safe_load(DEFAULT_TEMPLATE.read_text(encoding="utf-8"))
    if "required" in intake_artifacts:
        document["phases"]["intake"]["artifacts"]["required"] = intake_artifacts["required"]
    return FoldConfig(templates=Templates(parse_template(yaml.safe_dump(document), "candidate.yaml")))


def live_log() -> tuple[list[Envelope], dict[str, str]]:
    """The log as the live fold (default template) wrote it, decisions included, two tasks interleaved:
    TSK-001 asks to complete intake without TASK.md (rejected), TSK-002 with it (completed)."""
    folder = Folder(workflow_fold, FoldConfig(templates=Templates(load_template(DEFAULT_TEMPLATE))))
    states: dict[str, object] = {}
    log: list[Envelope] = []
    requests: dict[str, str] = {}
    at = T0

    def send(payload: Payload) -> Envelope:
        nonlocal at
        at += timedelta(minutes=1)
        envelope = new_event("acme", payload, event_id=uuid.uuid4(), occurred_at=at, recorded_at=at,
                             actor="agent:claude")
        states[envelope.stream_id], out = folder.apply(states.get(envelope.stream_id), envelope)
        log.extend([envelope, *out])
        return envelope

    for code in ("TSK-001", "TSK-002"):
        send(TaskCreated(task_code=code, title=f"Task {code}"))
        send(SessionStartRequested(task_code=code))
    send(ArtifactRecorded(task_code="TSK-002", name="TASK.md", content_hash=HASH, size=10))
    for code in ("TSK-001", "TSK-002"):
        requests[code] = str(send(PhaseCompletionRequested(task_code=code)).event_id)
    return log, requests


def test_the_log_records_one_rejection_and_one_completion() -> None:
    log, requests = live_log()
    decided = {(str(e.causation_id), e.type) for e in log
               if e.type in ("workflow.phase.completed", "workflow.phase.completion.rejected")}
    assert decided == {(requests["TSK-001"], "workflow.phase.completion.rejected"),
                       (requests["TSK-002"], "workflow.phase.completed")}
    # The fold's own status updates are on the log too: the re-fold must not apply them again.
    assert any(e.type == "workflow.task.status.updated" and e.actor == "fold:workflow" for e in log)


def test_the_same_template_changes_nothing() -> None:
    log, requests = live_log()
    result = simulate(log, config_with())
    assert [r.event_id for r in result.requests] == [requests["TSK-001"], requests["TSK-002"]]
    assert result.before == result.after
    assert result.after[requests["TSK-001"]] == Outcome("rejected", "intake", "gate",
                                                         "phase intake is missing artifact TASK.md")
    assert result.changed() == []
    assert result.counts() == ({"rejected:gate": 1, "completed": 1}, {"rejected:gate": 1, "completed": 1})


def test_a_removed_gate_turns_the_rejection_into_a_completion() -> None:
    log, requests = live_log()
    result = simulate(log, config_with(required=[]))
    changed = [(c.request.event_id, c.request.task_code, c.before, c.after) for c in result.changed()]
    assert changed == [(requests["TSK-001"], "TSK-001",
                        Outcome("rejected", "intake", "gate", "phase intake is missing artifact TASK.md"),
                        Outcome("completed", "intake", "", "next research"))]
    assert result.counts() == ({"rejected:gate": 1, "completed": 1}, {"completed": 2})


def test_an_added_gate_turns_the_completion_into_a_rejection() -> None:
    log, requests = live_log()
    result = simulate(log, config_with(required=["TASK.md", "NOTES.md"]))
    changed = [(c.request.task_code, c.before, c.after) for c in result.changed()]
    assert changed == [("TSK-002", Outcome("completed", "intake", "", "next research"),
                        Outcome("rejected", "intake", "gate", "phase intake is missing artifact NOTES.md"))]
    # TSK-001 is still refused at the same gate (now missing both): not a change.
    assert result.after[requests["TSK-001"]].reason == "phase intake is missing artifact TASK.md, artifact NOTES.md"
    assert result.counts()[1] == {"rejected:gate": 2}


def test_overrides_follow_the_candidate_policy() -> None:
    """An override on the log (default policy allows it) is refused when the candidate forbids overrides."""
    log, _ = live_log()
    at = log[-1].occurred_at + timedelta(minutes=1)
    folder = Folder(workflow_fold, config_with())
    state = None
    for envelope in log:
        if envelope.stream_id.endswith("TSK-001"):
            state, _out = folder.apply(state, envelope)
    request = new_event("acme", PhaseCompletionRequested(task_code="TSK-001", override=True, reason="urgent"),
                        event_id=uuid.uuid4(), occurred_at=at, recorded_at=at, actor="user:ann")
    state, out = folder.apply(state, request)
    log = [*log, request, *out]
    candidate = FoldConfig(templates=config_with().templates, allow_user_override=False)
    changed = [(c.request.task_code, c.before.outcome, c.after.kind) for c in simulate(log, candidate).changed()]
    assert changed == [("TSK-001", "overridden", "override_not_allowed")]


def test_the_command_refuses_a_bad_template_in_one_line(tmp_path) -> None:
    from typer.testing import CliRunner

    from streams.cli import cli

    template = tmp_path / "candidate.yaml"
    template.write_text("version: 1\nvariants: {feature: [intake]}\nphases: {intake: {order: 1, goal: [\n")
    result = CliRunner().invoke(cli, ["workflow", "simulate", "--template", str(template)])
    assert result.exit_code == 2
    assert result.output.startswith(f"{template}: not valid YAML: ") and result.output.count("\n") == 1
