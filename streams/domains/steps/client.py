"""The Python API for agent code (start an execution, run its steps, get the result with metrics) and the
`baton steps` commands; both speak to Baton's HTTP API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from streams.auth import issue_token


class StepsApiError(RuntimeError):
    """Baton refused a request or could not be reached; the message has the status and Baton's reason."""


def step(step_id: str, intent: str, input: Any = None, *, spec: dict[str, Any] | None = None,  # noqa: A002
         depends_on: list[str] | None = None, token_budget: int | None = None) -> dict[str, Any]:
    """One step of an execution, as POST /v1/executions takes it."""
    return {"step_id": step_id, "intent": intent, "input": input, "spec": spec or {},
            "depends_on": depends_on or [], "token_budget": token_budget}


class Steps:
    """Agent-side client: `Steps(url, token).run(agent_id=..., user_id=..., steps=[step(...), ...])`."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 90.0,
                 client: httpx.Client | None = None) -> None:
        self._http = client or httpx.Client(base_url=base_url, timeout=timeout_s,
                                            headers={"Authorization": f"Bearer {token}"})

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def start(self, *, agent_id: str, user_id: str, steps: list[dict[str, Any]], execution_id: str | None = None,
              token_budget: int | None = None, usd_budget: float | None = None, context: str = "",
              task_code: str | None = None) -> str:
        """Start an execution; returns its id at once (the steps run on Baton's workers)."""
        body = self._body(agent_id, user_id, steps, execution_id, token_budget, usd_budget, context, task_code)
        return self._call("POST", "/v1/executions", json=body)["execution_id"]

    def run(self, *, agent_id: str, user_id: str, steps: list[dict[str, Any]], execution_id: str | None = None,
            token_budget: int | None = None, usd_budget: float | None = None, context: str = "",
            task_code: str | None = None) -> dict[str, Any]:
        """Start an execution and wait for its result: steps with outputs and decisions, and its metrics."""
        body = self._body(agent_id, user_id, steps, execution_id, token_budget, usd_budget, context, task_code)
        answer = self._call("POST", "/v1/executions", params={"wait": "true"}, json=body)
        if "steps" not in answer:
            raise StepsApiError(f"execution {answer['execution_id']} is still {answer['status']}; get() it later")
        return answer

    def get(self, execution_id: str) -> dict[str, Any]:
        """An execution as projected now."""
        return self._call("GET", f"/v1/executions/{execution_id}")

    def budget(self, scope: str, subject: str | None = None, day: str | None = None) -> dict[str, Any]:
        """A user's, agent's or the tenant's use of a local day (default today)."""
        params = {"scope": scope, **({"id": subject} if subject else {}), **({"date": day} if day else {})}
        return self._call("GET", "/v1/budgets", params=params)

    def set_budget(self, scope: str, subject: str = "*", *, tokens: int | None = None,
                   usd: float | None = None) -> None:
        """Set a scope's limit (subject "*": the default of every user, agent or execution)."""
        self._call("PUT", "/v1/budgets", json={"scope": scope, "id": subject, "tokens": tokens, "usd": usd})

    def set_flags(self, **flags: bool) -> None:
        """Set the tenant's flags (orchestration, compression, routing, caching, fail_open, degrade_over_budget)."""
        self._call("PUT", "/v1/flags", json=flags)

    @staticmethod
    def _body(agent_id: str, user_id: str, steps: list[dict[str, Any]], execution_id: str | None,
              token_budget: int | None, usd_budget: float | None, context: str,
              task_code: str | None) -> dict[str, Any]:
        return {"agent_id": agent_id, "user_id": user_id, "steps": steps, "execution_id": execution_id,
                "token_budget": token_budget, "usd_budget": usd_budget, "context": context, "task_code": task_code}

    def _call(self, method: str, path: str, **options: Any) -> Any:
        try:
            response = self._http.request(method, path, **options)
        except httpx.HTTPError as exc:
            raise StepsApiError(f"{method} {path}: {exc}") from exc
        if response.status_code >= 400:
            raise StepsApiError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()


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
