"""The `baton steps` commands: run an execution from a JSON file, show a scope's budget; through the Python API
(streams.domains.steps.client) against Baton's HTTP API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from streams.auth import issue_token
from streams.domains.steps.client import Steps

steps_cli = typer.Typer(help="Agent step executions: run, budgets, flags.", no_args_is_help=True)


def _client() -> Steps:
    from streams.cli import connected_settings

    settings = connected_settings(database=False)
    return Steps(f"http://{settings.api_host}:{settings.api_port}", issue_token(settings, _tenant()))


_TENANT: dict[str, str] = {"id": "acme"}


def _tenant() -> str:
    return _TENANT["id"]


@steps_cli.callback()
def _options(tenant: Annotated[str, typer.Option(help="Tenant to act for.")] = "acme") -> None:
    _TENANT["id"] = tenant


@steps_cli.command("run")
def run_file(path: Annotated[Path, typer.Argument(help="JSON file: an execution as POST /v1/executions takes it.")]
             ) -> None:
    """Run an execution from a JSON file and print its result with metrics."""
    from streams.cli import console

    body = json.loads(path.read_text())
    with _client() as steps:
        result = steps.run(**{k: body[k] for k in body if k in _START_FIELDS})
    console.print_json(data={"status": result["status"], "metrics": result["metrics"],
                             "steps": {s["step_id"]: s["status"] for s in result["steps"]}})


_START_FIELDS = ("agent_id", "user_id", "steps", "execution_id", "token_budget", "usd_budget", "context",
                 "task_code")


@steps_cli.command("budget")
def budget(scope: Annotated[str, typer.Argument(help="user, agent or tenant")],
           subject: Annotated[str | None, typer.Argument(help="user or agent id")] = None,
           day: Annotated[str | None, typer.Option("--date", help="tenant-local day, YYYY-MM-DD")] = None) -> None:
    """Show a scope's limit, use and reservations on a day."""
    from streams.cli import console

    with _client() as steps:
        console.print_json(data=steps.budget(scope, subject, day))


def add_commands(cli: typer.Typer) -> None:
    """`baton steps ...`."""
    cli.add_typer(steps_cli, name="steps")
