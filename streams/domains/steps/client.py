"""The Python API for agent code: start an execution, run its steps, get the result with metrics, read and set
budgets and flags; it speaks to Baton's HTTP API (the `baton steps` commands, streams.domains.steps.cli, use it)."""

from __future__ import annotations

from typing import Any

import httpx

from streams.errors import StreamsError


class StepsApiError(StreamsError, RuntimeError):
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
