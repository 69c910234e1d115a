"""The workflow domain end to end on one runtime: phases over HTTP, overrides, bugs, search, git, replay."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from streams.auth import issue_token
from streams.domains.workflow.cli import add_commands
from streams.embedded import child_env
from streams.runtime import Runtime
from streams.settings import settings_env
from tests.fixtures.runtime import module_runtime
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration
HASH = "b" * 64


@pytest.fixture(scope="module")
def runtime(bootstrap_servers: str, postgres_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    with module_runtime(bootstrap_servers, postgres_server_url, tmp_path_factory.mktemp("wf") / "baton") as running:
        yield running


@pytest.fixture(scope="module")
def api(runtime: Runtime) -> Iterator[httpx.Client]:
    token = issue_token(runtime.settings, "acme")
    with httpx.Client(base_url=runtime.api_url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def artifact(api: httpx.Client, task: str, name: str) -> None:
    assert api.post(f"/v1/tasks/{task}/artifacts", json={"name": name, "content_hash": HASH, "size": 3}).status_code == 202


def create(api: httpx.Client, task: str, **extra: object) -> None:
    response = api.post("/v1/tasks", json={"task_code": task, "title": f"Task {task}", **extra})
    assert response.status_code == 201, response.text


def test_six_phase_path_with_a_gate_blocked_then_passed(api: httpx.Client) -> None:
    assert api.post("/v1/sprints", json={"sprint_code": "SPR-1", "title": "Auth"}).status_code == 202
    create(api, "TSK-1", sprint_code="SPR-1", fields={"tags": "auth", "acceptance_criteria": "logs in"})
    started = api.post("/v1/tasks/TSK-1/start", json={"actor": "agent:claude"})
    assert started.status_code == 200, started.text
    assert started.json()["phase"] == "intake" and started.json()["session_key"].startswith("sess_TSK-1_")

    blocked = api.post("/v1/tasks/TSK-1/phases/complete", json={})
    assert blocked.status_code == 409
    assert blocked.json()["missing"] == [{"kind": "artifact", "name": "TASK.md"}]
    artifact(api, "TSK-1", "TASK.md")
    passed = api.post("/v1/tasks/TSK-1/phases/complete", json={})
    assert passed.status_code == 200, passed.text
    assert passed.json()["next_phase"] == "research" and "RESEARCH" in passed.json()["next_step"]

    for phase, name in (("research", "CONTEXT.md"), ("plan", "PLAN.md"), ("execute", None), ("review", "CHANGES.md"),
                        ("close", None)):
        if name:
            artifact(api, "TSK-1", name)
        done = api.post("/v1/tasks/TSK-1/phases/complete", json={"phase": phase})
        assert done.status_code == 200 and done.json()["phase"] == phase, done.text
    assert done.json()["next_phase"] is None
    assert api.post("/v1/tasks/TSK-1/end", json={}).status_code == 200

    task = eventually(lambda: (t := api.get("/v1/tasks/TSK-1").json()).get("status") == "done"
                      and t["active_session"] is None and t, "task done and its session ended")
    assert [h["phase"] for h in task["history"]] == ["intake", "research", "plan", "execute", "review", "close"]
    assert task["rejections"][0]["kind"] == "gate" and task["active_session"] is None
    sprint = api.get("/v1/sprints/SPR-1").json()
    assert sprint["tasks_by_phase"] == {"complete": [{"task_code": "TSK-1", "title": "Task TSK-1", "type": "feature",
                                                      "status": "done"}]}


def test_override_is_in_the_audit_trail_with_actor_and_reason(api: httpx.Client) -> None:
    create(api, "TSK-2", sprint_code="SPR-1")
    assert api.post("/v1/tasks/TSK-2/start", json={}).status_code == 200
    assert api.post("/v1/tasks/TSK-2/phases/complete", json={"override": True}).status_code == 422
    overridden = api.post("/v1/tasks/TSK-2/phases/complete",
                          json={"override": True, "reason": "ticket holds the spec", "actor": "user:ana"})
    assert overridden.status_code == 200 and overridden.json()["overridden"] is True
    task = eventually(lambda: (t := api.get("/v1/tasks/TSK-2").json()).get("overrides") and t, "override projected")
    assert task["overrides"][0] | {"at": None} == {
        "phase": "intake", "session_key": task["active_session"], "actor": "user:ana", "reason": "ticket holds the spec",
        "at": None, "missing": [{"kind": "artifact", "name": "TASK.md"}],
        "recommended": [{"kind": "field", "name": "acceptance_criteria"}, {"kind": "field", "name": "tags"}]}
    sprint = api.get("/v1/sprints/SPR-1").json()
    assert [t["task_code"] for t in sprint["tasks_by_phase"]["research"]] == ["TSK-2"]
    # Search rows are derived from the archive within half a second of it.
    hits = eventually(lambda: api.get("/v1/search", params={"q": "ticket spec", "scope": "task", "id": "TSK-2",
                                                            "no_cache": True}).json()["results"], "override searchable")
    assert {h["type"] for h in hits} == {"workflow.phase.completion.requested", "workflow.phase.overridden"}
    assert all("**ticket**" in h["snippet"] and "**spec**" in h["snippet"] for h in hits)


def test_bug_fix_variant_resume_and_forced_end(api: httpx.Client) -> None:
    create(api, "BUG-1", type="bug_fix")
    assert api.post("/v1/tasks", json={"task_code": "BUG-2", "title": "x", "type": "spike"}).status_code == 422
    first = api.post("/v1/tasks/BUG-1/start", json={}).json()
    resumed = api.post("/v1/tasks/BUG-1/start", json={}).json()
    assert resumed["resumed"] is True and resumed["session_key"] == first["session_key"]
    for name in ("TASK.md", "CONTEXT.md"):
        artifact(api, "BUG-1", name)
        completed = api.post("/v1/tasks/BUG-1/phases/complete", json={})
        assert completed.status_code == 200
    assert completed.json()["next_phase"] == "execute"  # no plan phase in a bug fix
    refused = api.post("/v1/tasks/BUG-1/end", json={})
    assert refused.status_code == 409 and refused.json()["kind"] == "session_open"
    forced = api.post("/v1/tasks/BUG-1/end", json={"force": True}).json()
    assert forced["forced"] is True and forced["phase"] == "execute"
    assert api.post("/v1/tasks/NOPE/start", json={}).status_code == 404


def test_bugs_dedupe_classify_and_regroup(api: httpx.Client) -> None:
    logs = [
        {"task_code": "TSK-1", "message": "Undefined variable: foo at 0x7ffe12", "file": "/srv/api/app/a.py", "line": 42},
        {"task_code": "TSK-2", "message": "Undefined variable: foo at 0x55aa01", "file": "/app/app/a.py", "line": 42},
        {"task_code": "TSK-2", "message": "Undefined variable: foo at 0x55aa01", "file": "/app/app/a.py", "line": 77},
        {"task_code": "TSK-1", "message": "HTTP status 404 from billing", "file": "app/pay.py", "line": 5},
        {"task_code": "TSK-1", "message": "HTTP status 500 from billing", "file": "app/pay.py", "line": 5},
    ]
    answers = [api.post("/v1/bugs", json=log).json() for log in logs]
    assert [a["status"] for a in answers] == ["new", "duplicate", "new", "new", "duplicate"]
    assert answers[1]["occurrences"] == 2 and answers[1]["classification"] == "name" and answers[1]["rules_version"] == 1
    listed = eventually(lambda: (b := api.get("/v1/bugs", params={"min_count": 2}).json()["bugs"]) and len(b) == 2 and b,
                        "duplicates listed")
    assert {b["fingerprint"] for b in listed} == {answers[1]["fingerprint"], answers[4]["fingerprint"]}
    assert api.get("/v1/bugs", params={"task": "TSK-2"}).json()["bugs"][0]["tasks"] == ["TSK-1", "TSK-2"]
    assert [b["fingerprint"] for b in api.get("/v1/tasks/TSK-2").json()["bugs"]] == [
        answers[1]["fingerprint"], answers[2]["fingerprint"]]

    dry = api.post("/v1/bugs/regroup", json={"rules": 2}).json()
    assert (dry["reports"], dry["groups_before"], dry["groups_after"], dry["applied"]) == (5, 3, 3, False)
    assert sorted(next(iter(dry["merges"].values()))) == sorted([answers[0]["fingerprint"], answers[2]["fingerprint"]])
    assert list(dry["splits"]) == [answers[3]["fingerprint"]]
    assert api.get("/v1/bugs").json()["rules_version"] == 1
    assert api.post("/v1/bugs/regroup", json={"rules": 2, "apply": True}).json()["applied"] is True
    regrouped = eventually(lambda: (b := api.get("/v1/bugs").json())["rules_version"] == 2
                           and sum(x["occurrences"] for x in b["bugs"]) == 5 and b, "v2 live")
    assert sorted(b["occurrences"] for b in regrouped["bugs"]) == [1, 1, 3]
    again = api.post("/v1/bugs", json=logs[2]).json()
    assert (again["status"], again["occurrences"], again["rules_version"]) == ("duplicate", 4, 2)


def ingest_update(api: httpx.Client, task: str, description: str, at: datetime, source: str) -> None:
    event = {"type": "workflow.task.updated", "occurred_at": at.isoformat(), "source_id": source,
             "payload": {"task_code": task, "description": description}}
    assert api.post("/v1/events", json=event).status_code == 202


def test_search_scopes_ranking_snippets_summary_and_cache(api: httpx.Client) -> None:
    create(api, "SRCH-1", sprint_code="SPR-9")
    create(api, "SRCH-2")
    now = datetime.now(UTC)
    ingest_update(api, "SRCH-1", "zebra migration plan", now - timedelta(days=30), "old")
    ingest_update(api, "SRCH-1", "zebra migration plan", now - timedelta(minutes=1), "new")
    ingest_update(api, "SRCH-2", "zebra migration elsewhere", now, "other")
    ingest_update(api, "SRCH-2", "la validación del formulario falló", now, "es")

    def hits(q: str = "zebra", **params: object) -> dict:
        return api.get("/v1/search", params={"q": q, **params}).json()

    task_hits = eventually(lambda: len((h := hits(scope="task", id="SRCH-1", no_cache=True))["results"]) == 2 and h,
                           "both updates archived")["results"]
    assert task_hits[0]["occurred_at"] > task_hits[1]["occurred_at"] and task_hits[0]["score"] > task_hits[1]["score"]
    assert "**zebra**" in task_hits[0]["snippet"]
    assert eventually(lambda: len(hits(scope="project", no_cache=True)["results"]) == 3, "project scope")
    # The sprint scope follows the task's sprint in its read model, projected a moment after the events.
    eventually(lambda: {h["task_code"] for h in hits(scope="sprint", id="SPR-9", no_cache=True)["results"]}
               == {"SRCH-1"}, "sprint scope")
    # The Spanish update may land in the archive's next batch: wait for it, then read what it says.
    spanish = eventually(lambda: (r := hits("validaciones", scope="task", id="SRCH-2", no_cache=True)["results"])
                         and r, "the Spanish update archived")
    assert len(spanish) == 1 and "**validación**" in spanish[0]["snippet"]

    summary = api.get("/v1/search", params={"scope": "task", "id": "SRCH-1", "summary": True}).json()["summary"]
    assert {row["type"]: row["count"] for row in summary["by_type"]} == {"workflow.task.created": 1,
                                                                        "workflow.task.updated": 2}
    assert summary["total"] == 3 and summary["span_seconds"] >= 29 * 86400

    assert hits("migration", scope="task", id="SRCH-1")["cached"] is False
    assert hits("migration", scope="task", id="SRCH-1")["cached"] is True
    assert hits("migration", scope="task", id="SRCH-2")["cached"] is False
    ingest_update(api, "SRCH-1", "migration again", now, "third")
    fresh = eventually(lambda: len((h := hits("migration", scope="task", id="SRCH-1"))["results"]) == 3 and h,
                       "cache invalidated")
    assert fresh["cached"] is False
    assert api.get("/v1/search", params={"q": "x", "scope": "session", "id": "sess_nope"}).status_code == 404


def test_git_capture_and_changes_against_a_real_repository(api: httpx.Client, runtime: Runtime, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q", "-b", "main")
    git("config", "user.email", "jo@example.com")
    git("config", "user.name", "Jo Doe")
    (repo / "app.py").write_text("print(1)\n")
    git("add", ".")
    git("commit", "-q", "-m", "feat: first")
    create(api, "GIT-1", description="Add the greeting")
    api.post("/v1/tasks/GIT-1/start", json={})
    # The capture's answer names the phase the task read model holds, which follows the start a moment later.
    eventually(lambda: api.get("/v1/tasks/GIT-1").json().get("phase") == "intake", "the started task projected")
    monkeypatch.setenv("BATON_WORKFLOW_API_URL", runtime.api_url)
    monkeypatch.setenv("BATON_WORKFLOW_TOKEN", issue_token(runtime.settings, "acme"))
    cli = typer.Typer()
    add_commands(cli)
    runner = CliRunner()
    captured = runner.invoke(cli, ["git", "capture", "GIT-1", "--repo", str(repo)])
    assert captured.exit_code == 0, captured.output
    assert "in phase intake" in captured.output
    (repo / "app.py").write_text("print(2)\nprint(3)\n")
    (repo / "lib.py").write_text("x = 1\n")
    git("add", ".")
    git("commit", "-q", "-m", "feat: second")
    assert runner.invoke(cli, ["git", "capture", "GIT-1", "--repo", str(repo)]).exit_code == 0
    head = git("rev-parse", "HEAD")
    task = eventually(lambda: len((t := api.get("/v1/tasks/GIT-1").json())["commits"]) == 2 and t, "commits projected")
    assert task["commits"][1] | {"at": None} == {"hash": head, "short_hash": head[:7], "message": "feat: second",
                                                 "author": "Jo Doe <jo@example.com>", "phase": "intake", "at": None,
                                                 "branch": "main"}
    linked = runner.invoke(cli, ["git", "link-pr", "GIT-1", "https://github.com/org/repo/pull/123"])
    assert "#123" in linked.output
    written = runner.invoke(cli, ["changes", "GIT-1", "--repo", str(repo)])
    assert written.exit_code == 0, written.output
    changes = (repo / "CHANGES.md").read_text()
    assert "**Task**: Task GIT-1 (GIT-1)" in changes and "- app.py\n- lib.py" in changes
    assert "2 files changed, 3 insertions(+)" in changes and "(Phase: intake)" in changes

    blocked = runner.invoke(cli, ["phase", "complete", "GIT-1"])
    assert blocked.exit_code == 1 and "✗ Required artifact missing: TASK.md" in blocked.output
    assert "⚠ Recommended field missing: tags" in blocked.output
    (repo / "TASK.md").write_text("the task")
    assert runner.invoke(cli, ["artifact", "add", "GIT-1", str(repo / "TASK.md")]).exit_code == 0
    done = runner.invoke(cli, ["phase", "complete", "GIT-1"])
    assert done.exit_code == 0 and "✓ Phase INTAKE complete → RESEARCH" in done.output
    logged = runner.invoke(cli, ["bug", "log", "ImportError: No module named 'yaml'", "--task", "GIT-1"])
    assert "NEW bug" in logged.output and "class import" in logged.output


def test_replay_rebuilds_identical_read_models(runtime: Runtime, api: httpx.Client) -> None:
    eventually(lambda: api.get("/v1/tasks/GIT-1").json()["pull_request"], "last events projected")
    verify = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "--verify"],
                            env=child_env(COLUMNS="200", **settings_env(runtime.settings)),
                            capture_output=True, text=True, timeout=300, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "workflow_tasks" in verify.stdout and "workflow_bugs" in verify.stdout
