"""The workflow commands of the `baton` CLI: they talk to the HTTP API of a running Baton.

The API is found at BATON_WORKFLOW_API_URL, else at the port of the running `baton dev` (.baton/runtime.json);
the bearer token is BATON_WORKFLOW_TOKEN, else one signed for BATON_WORKFLOW_TENANT (default: the first tenant).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.markup import escape
from rich.table import Table

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
REJECTED_EXIT = 1
PENDING_EXIT = 3
console = Console()
err_console = Console(stderr=True)


class CliSettings(BaseSettings):
    """Where the workflow commands send their requests, and as whom."""

    model_config = SettingsConfigDict(env_prefix="BATON_WORKFLOW_", extra="ignore")

    api_url: str | None = None
    token: str | None = None
    tenant: str | None = None
    actor: str | None = None


def _actor(given: str | None) -> str:
    return given or CliSettings().actor or f"cli:{os.environ.get('USER', 'someone')}"


def _api() -> httpx.Client:
    from streams.cli import (
        connected_settings,  # the CLI imports this module while it builds itself
    )

    cli_settings = CliSettings()
    settings = None
    url = cli_settings.api_url
    if url is None:
        settings = connected_settings()
        url = f"http://{settings.api_host}:{settings.api_port}"
    token = cli_settings.token
    if token is None:
        from agents.tenants import load_tenants
        from streams.auth import issue_token

        settings = settings or connected_settings()
        tenant = cli_settings.tenant or next(iter(load_tenants(settings.tenants_file).by_id))
        token = issue_token(settings, tenant, 3600)
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _call(method: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        with _api() as api:
            response = api.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the Baton API: {exc}")
    if response.status_code in (401, 422) or response.status_code >= 500:
        _fail(f"{response.status_code}: {response.json().get('detail', response.text)}")
    return response


def _fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[red]{escape(message)}[/red]")
    raise typer.Exit(code)


def _answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON of a decided request; exits when it was rejected or is still pending."""
    body = response.json()
    if response.status_code == 202 and body.get("status") == "pending":
        err_console.print(f"[yellow]Not decided yet (event {body['event_id']}); check again shortly.[/yellow]")
        raise typer.Exit(PENDING_EXIT)
    if response.status_code >= 400:
        reason = body.get("reason") or body.get("detail") or response.text
        err_console.print(f"[red]✗ {escape(str(reason))}[/red]")
        for item in body.get("missing", []):
            err_console.print(f"[red]✗ Required {item['kind']} missing: {escape(item['name'])}[/red]")
        for item in body.get("recommended", []):
            err_console.print(f"[yellow]⚠ Recommended {item['kind']} missing: {escape(item['name'])}[/yellow]")
        raise typer.Exit(REJECTED_EXIT)
    return body


def _fields(pairs: list[str]) -> dict[str, str]:
    fields = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            _fail(f"--field {pair!r}: expected NAME=VALUE")
        fields[name] = value
    return fields


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, timeout=30)
    except FileNotFoundError:
        _fail("git is not installed")
    except subprocess.CalledProcessError as exc:
        _fail(f"git {' '.join(args)}: {exc.stderr.strip() or exc}")
    return done.stdout.strip()


sprint_cli = typer.Typer(help="Sprints.", no_args_is_help=True)
task_cli = typer.Typer(help="Tasks and their sessions.", no_args_is_help=True)
phase_cli = typer.Typer(help="Phases of a task.", no_args_is_help=True)
artifact_cli = typer.Typer(help="Task artifacts.", no_args_is_help=True)
bug_cli = typer.Typer(help="Log and list bugs.", no_args_is_help=True)
bugs_cli = typer.Typer(help="The bug table: list, regroup under another rules version.", no_args_is_help=True)
git_cli = typer.Typer(help="Git commits and pull requests of a task.", no_args_is_help=True)

Actor = Annotated[str | None, typer.Option(help="Who acts (default BATON_WORKFLOW_ACTOR or cli:$USER).")]


@sprint_cli.command("create")
def sprint_create(code: str, title: Annotated[str, typer.Option()], description: str = "") -> None:
    """Create a sprint."""
    _answer(_call("POST", "/v1/sprints", json={"sprint_code": code, "title": title, "description": description}))
    console.print(f"Sprint {escape(code)} created.")


@task_cli.command("create")
def task_create(
    code: str, title: Annotated[str, typer.Option()], sprint: str | None = None,
    type: Annotated[str | None, typer.Option(help="Template variant, e.g. feature or bug_fix.")] = None,
    description: str = "", field: Annotated[list[str], typer.Option(help="NAME=VALUE, repeatable.")] = [],  # noqa: B006
) -> None:
    """Create a task."""
    body = _answer(_call("POST", "/v1/tasks", json={
        "task_code": code, "title": title, "sprint_code": sprint, "type": type, "description": description,
        "fields": _fields(field)}))
    console.print(f"Task {escape(code)} created ({body['type']}: {' → '.join(body['phases'])}).")


@task_cli.command("update")
def task_update(code: str, field: Annotated[list[str], typer.Option(help="NAME=VALUE, repeatable.")] = [],  # noqa: B006
                title: str | None = None, description: str | None = None) -> None:
    """Change a task's fields, title or description."""
    _answer(_call("PATCH", f"/v1/tasks/{code}", json={"fields": _fields(field), "title": title,
                                                      "description": description}))
    console.print(f"Task {escape(code)} updated.")


@task_cli.command("start")
def task_start(code: str, actor: Actor = None) -> None:
    """Start (or resume) the task's session; prints the phase's goal and instructions."""
    body = _answer(_call("POST", f"/v1/tasks/{code}/start", json={"actor": _actor(actor)}))
    verb = "Resumed" if body["resumed"] else "Started"
    console.print(f"{verb} session {body['session_key']} of {escape(code)} in phase [bold]{body['phase'].upper()}[/bold]")
    console.print(f"Goal: {escape(body['goal'])}")
    if body["description"]:
        console.print(escape(body["description"].rstrip()))


@task_cli.command("end")
def task_end(code: str, force: Annotated[bool, typer.Option(help="End before the last phase is complete.")] = False,
             actor: Actor = None) -> None:
    """End the task's session."""
    body = _answer(_call("POST", f"/v1/tasks/{code}/end", json={"force": force, "actor": _actor(actor)}))
    forced = f" (forced in phase {body['phase']})" if body["forced"] else ""
    console.print(f"Session {body['session_key']} ended{forced}.")


@task_cli.command("show")
def task_show(code: str) -> None:
    """A task's phase, history, overrides, artifacts, commits, PR and bugs."""
    response = _call("GET", f"/v1/tasks/{code}")
    if response.status_code == 404:
        _fail(f"no task {code}", REJECTED_EXIT)
    task = response.json()
    console.print(f"[bold]{escape(code)}[/bold] {escape(task['title'])} · {task['type']} · {task['status']} · "
                  f"phase {task['phase'] or 'complete'} · session {task['active_session'] or 'none'}")
    for entry in task["history"]:
        mark = "⏭" if entry["skipped"] else ("⚠" if entry["overridden"] else ("✓" if entry["completed_at"] else "…"))
        console.print(f"  {mark} {entry['phase']}: {entry['started_at']} → {entry['completed_at'] or ''}")
    for override in task["overrides"]:
        console.print(f"  ⚠ override of {override['phase']} by {escape(override['actor'])}: {escape(override['reason'])}")
    for name in (a["name"] for a in task["artifacts"]):
        console.print(f"  artifact {escape(name)}")
    for commit in task["commits"]:
        console.print(f"  commit {commit['short_hash']} {escape(commit['message'])} (phase {commit['phase']})")
    if task["pull_request"]:
        console.print(f"  PR {task['pull_request']['url']}")
    for bug in task["bugs"]:
        console.print(f"  bug {bug['fingerprint'][:12]} ×{bug['occurrences']} [{bug['classification']}] {escape(bug['message'])}")


@phase_cli.command("complete")
def phase_complete(
    task: str, override: Annotated[bool, typer.Option(help="Pass a failed gate (needs --reason).")] = False,
    reason: str | None = None, to: Annotated[str | None, typer.Option(help="Phase to move to (a skip).")] = None,
    actor: Actor = None,
) -> None:
    """Complete the current phase: ✗ for each missing required item, ⚠ for each recommended one, then the next step."""
    body = _answer(_call("POST", f"/v1/tasks/{task}/phases/complete", json={
        "override": override, "reason": reason, "to_phase": to, "actor": _actor(actor)}))
    if body["overridden"]:
        console.print(f"[yellow]⚠ Gate of {body['phase']} overridden: {escape(reason or '')}[/yellow]")
    for item in body["recommended"]:
        console.print(f"[yellow]⚠ Recommended {item['kind']} missing: {escape(item['name'])}[/yellow]")
    following = body["next_phase"].upper() if body["next_phase"] else "done"
    console.print(f"[green]✓ Phase {body['phase'].upper()} complete → {following}[/green]")
    console.print(escape(body["next_step"].rstrip()))


@artifact_cli.command("add")
def artifact_add(task: str, file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
                 name: Annotated[str | None, typer.Option(help="Artifact name (default: the file name).")] = None) -> None:
    """Record a file as an artifact of the task (its sha256 and size)."""
    data = file.read_bytes()
    body = _answer(_call("POST", f"/v1/tasks/{task}/artifacts", json={
        "name": name or file.name, "content_hash": hashlib.sha256(data).hexdigest(), "size": len(data)}))
    console.print(f"Artifact {escape(name or file.name)} ({len(data)} bytes) recorded for {escape(task)} "
                  f"in phase {body['phase'] or 'complete'}.")


@bug_cli.command("log")
def bug_log(
    message: str, task: str | None = None, file: str | None = None, line: int | None = None,
    stack: Annotated[Path | None, typer.Option(exists=True, dir_okay=False, help="File holding the stack trace.")] = None,
) -> None:
    """Log an error: prints whether it is new or a duplicate, its count and its class."""
    body = _answer(_call("POST", "/v1/bugs", json={
        "task_code": task, "message": message, "file": file, "line": line,
        "stack": stack.read_text(errors="replace") if stack else None}))
    console.print(f"{body['status'].upper()} bug {body['fingerprint'][:12]} · seen {body['occurrences']}× · "
                  f"class {body['classification']} · rules v{body['rules_version']}")


def _bugs_list(task: str | None, min_count: int, classification: str | None) -> None:
    params = {k: v for k, v in {"task": task, "min_count": min_count, "classification": classification}.items() if v}
    body = _call("GET", "/v1/bugs", params=params).json()
    table = Table("fingerprint", "count", "class", "message", "file:line", "last task", "last seen",
                  title=f"Bugs (rules v{body['rules_version']})")
    for bug in body["bugs"]:
        table.add_row(bug["fingerprint"][:12], str(bug["occurrences"]), bug["classification"], escape(bug["message"]),
                      f"{bug['file']}:{bug['line'] if bug['line'] is not None else ''}", bug["last_task"] or "",
                      bug["last_seen"])
    console.print(table if body["bugs"] else "No bugs.")


@bug_cli.command("list")
def bug_list(task: str | None = None, min_count: int = 1, classification: str | None = None) -> None:
    """Bugs under the live rules version, most frequent first."""
    _bugs_list(task, min_count, classification)


bugs_cli.command("list")(bug_list)


@bugs_cli.command("regroup")
def bugs_regroup(rules: Annotated[int, typer.Option(help="The rules version to regroup under.")],
                 apply: Annotated[bool, typer.Option(help="Make the regrouping live.")] = False) -> None:
    """Regroup every logged bug under another rules version (a shadow table); print merges and splits."""
    body = _answer(_call("POST", "/v1/bugs/regroup", json={"rules": rules, "apply": apply}))
    console.print(f"{body['reports']} logged errors: {body['groups_before']} bugs under v{body['live_version']}, "
                  f"{body['groups_after']} under v{body['rules_version']}.")
    for new, lives in body["merges"].items():
        console.print(f"  merge {', '.join(f[:12] for f in lives)} → {new[:12]}")
    for live, news in body["splits"].items():
        console.print(f"  split {live[:12]} → {', '.join(f[:12] for f in news)}")
    if not body["merges"] and not body["splits"]:
        console.print("  no group merges or splits.")
    console.print(f"v{body['rules_version']} is now live." if body["applied"] else "Dry run: add --apply to make it live.")


@git_cli.command("capture")
def git_capture(task: str, repo: Annotated[Path, typer.Option(help="The repository.")] = Path(".")) -> None:
    """Record HEAD of the repository for the task, with the task's current phase."""
    full, short, author, subject = _git(repo, "log", "-1", "--format=%H%x00%h%x00%an <%ae>%x00%s").split("\x00")
    branch = _git(repo, "rev-parse", "--abbrev-ref", "HEAD")
    body = _answer(_call("POST", f"/v1/tasks/{task}/commits", json={
        "hash": full, "short_hash": short, "message": subject, "author": author, "branch": branch}))
    console.print(f"Captured {short} ({escape(subject)}) for {escape(task)} in phase {body['phase'] or 'complete'}.")


@git_cli.command("link-pr")
def git_link_pr(task: str, url: str) -> None:
    """Link a pull request to the task."""
    body = _answer(_call("POST", f"/v1/tasks/{task}/pull-request", json={"url": url}))
    number = f" #{body['number']}" if body["number"] else ""
    console.print(f"Linked {escape(url)} to {escape(task)} ({body['provider'] or 'unknown provider'}{number}).")


def changes_markdown(task: dict[str, Any], files: list[str], stat: str, today: str) -> str:
    """CHANGES.md for a task, its modified files and diff stat."""
    lines = ["# Changes Summary", "", f"**Task**: {task['title']} ({task['task_code']})", f"**Date**: {today}", "",
             "## Overview", task["description"] or task["title"], "", "## Modified Files",
             *(f"- {name}" for name in files), "", "## Diff Summary", stat or "no changes", "", "## Related Commits",
             *(f"- {c['short_hash']} - {c['message']} (Phase: {c['phase'] or 'complete'})" for c in task["commits"]), ""]
    return "\n".join(lines)


def changes(
    task: str, repo: Annotated[Path, typer.Option(help="The repository.")] = Path("."),
    output: Annotated[Path, typer.Option(help="File to write.")] = Path("CHANGES.md"),
    record: Annotated[bool, typer.Option(help="Record the file as the task's CHANGES.md artifact.")] = True,
) -> None:
    """Write CHANGES.md from the task's recorded commits and the diff stat between them."""
    response = _call("GET", f"/v1/tasks/{task}")
    if response.status_code == 404:
        _fail(f"no task {task}", REJECTED_EXIT)
    found = response.json()
    if not found["commits"]:
        _fail(f"task {task} has no captured commits (baton git capture {task})", REJECTED_EXIT)
    first, last = found["commits"][0]["hash"], found["commits"][-1]["hash"]
    parents = _git(repo, "rev-list", "--parents", "-n", "1", first).split()
    base = parents[1] if len(parents) > 1 else EMPTY_TREE
    files = _git(repo, "diff", "--name-only", base, last).splitlines()
    stat = (_git(repo, "diff", "--stat", base, last).splitlines() or [""])[-1].strip()
    target = output if output.is_absolute() else repo / output
    target.write_text(changes_markdown(found, files, stat, datetime.now(UTC).date().isoformat()), encoding="utf-8")
    console.print(f"Wrote {target} ({len(files)} files, {stat or 'no changes'}).")
    if record:
        artifact_add(task, target, "CHANGES.md")


def search(
    query: str, scope: Annotated[str, typer.Option(help="session | task | sprint | project")] = "project",
    id: Annotated[str | None, typer.Option("--id", help="Session key, task code or sprint code.")] = None,
    summary: Annotated[bool, typer.Option(help="Counts by event type, first and last time, span.")] = False,
    limit: int = 10, no_cache: Annotated[bool, typer.Option("--no-cache", help="Bypass the result cache.")] = False,
) -> None:
    """Search the history of a session, task, sprint or the whole project."""
    if scope not in ("session", "task", "sprint", "project"):
        _fail(f"--scope must be session, task, sprint or project, not {scope!r}")
    query = "" if query == "any" and summary else query
    params = {"q": query, "scope": scope, "id": id, "summary": summary, "limit": limit, "no_cache": no_cache}
    response = _call("GET", "/v1/search", params={k: v for k, v in params.items() if v is not None})
    if response.status_code == 404:
        _fail(response.json()["detail"], REJECTED_EXIT)
    body = response.json()
    cached = " (cached)" if body["cached"] else ""
    if summary:
        found = body["summary"]
        console.print(f"{found['total']} events in {scope} {id or ''}{cached}: first {found['first']}, "
                      f"last {found['last']}, span {found['span_seconds'] / 3600:.1f} h")
        for row in found["by_type"]:
            console.print(f"  {row['count']:>6}  {row['type']}")
        return
    table = Table("score", "when", "type", "task", "snippet", title=f"{len(body['results'])} results{cached}")
    for row in body["results"]:
        snippet = escape(row["snippet"]).replace("**", "\x00")
        parts = snippet.split("\x00")
        marked = "".join(f"[bold yellow]{p}[/bold yellow]" if i % 2 else p for i, p in enumerate(parts))
        table.add_row(f"{row['score']:.4f}", row["occurred_at"][:19], row["type"], row["task_code"] or "", marked)
    console.print(table)


workflow_cli = typer.Typer(help="The workflow itself: what-if replay of the phase gates.", no_args_is_help=True)


@workflow_cli.command("simulate")
def workflow_simulate(
    template: Annotated[Path, typer.Option(help="The candidate template (YAML), for every tenant.")],
    allow_phase_skip: Annotated[bool | None, typer.Option(
        "--allow-phase-skip/--no-allow-phase-skip", help="Default: BATON_WORKFLOW_ALLOW_PHASE_SKIP.")] = None,
    allow_user_override: Annotated[bool | None, typer.Option(
        "--allow-user-override/--no-allow-user-override", help="Default: BATON_WORKFLOW_ALLOW_USER_OVERRIDE.")] = None,
    show: Annotated[int, typer.Option(min=0, help="Changed requests listed at most.")] = 20,
) -> None:
    """Re-fold the workflow log in memory under a candidate template and show which past phase completions
    would have been refused or allowed. Nothing is published."""
    import asyncio

    from agents.workflow.config import WorkflowSettings, fold_config
    from agents.workflow.simulate import simulate as run_simulation
    from agents.workflow.templates import TemplateError, Templates, load_template
    from streams.cli import connected_settings
    from streams.logs import read_domain_log
    from streams.settings import loaded

    try:
        candidate = load_template(template)
    except TemplateError as exc:
        # One line, however wide: YAML errors span several.
        err_console.print(" ".join(str(exc).split()), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2) from None
    config = fold_config(loaded(WorkflowSettings), Templates(candidate), allow_phase_skip=allow_phase_skip,
                         allow_user_override=allow_user_override)
    envelopes = asyncio.run(read_domain_log(connected_settings(database=False), "workflow"))
    result = run_simulation(envelopes, config)
    before, after = result.counts()
    table = Table("outcome", "before", "after", "change",
                  title=f"workflow simulate: {result.events} events, {len(result.requests)} phase completions")
    for outcome in sorted(set(before) | set(after)):
        b, a = before[outcome], after[outcome]
        table.add_row(outcome, str(b), str(a), f"{a - b:+d}" if a != b else "", style=None if a == b else "yellow")
    console.print(table)
    changed = result.changed()
    listing = Table("at", "task", "phase", "before", "after", title=f"{len(changed)} phase completions change outcome")
    for change in changed[:show]:
        shown = change.before or change.after
        listing.add_row(change.request.occurred_at.isoformat(timespec="seconds"), escape(change.request.task_code),
                        escape(shown.phase or "-" if shown else "-"), escape(str(change.before or "-")), escape(str(change.after or "-")))
    console.print(listing if changed else "No phase completion changes outcome.")


def add_commands(cli: typer.Typer) -> None:
    """Add the workflow commands to the `baton` CLI."""
    for name, group in (("sprint", sprint_cli), ("task", task_cli), ("phase", phase_cli), ("artifact", artifact_cli),
                        ("bug", bug_cli), ("bugs", bugs_cli), ("git", git_cli), ("workflow", workflow_cli)):
        cli.add_typer(group, name=name)
    cli.command("changes")(changes)
    cli.command("search")(search)
