"""Policies as events on the real broker and PostgreSQL: the configured policy is adopted at start, a tenant's
policy changes through the API (service tokens only), every event is decided under the policy it is stamped with,
and `replay --verify` is clean under an environment that configures something else entirely."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from streams.auth import issue_token
from streams.embedded import child_env
from streams.runtime import Runtime
from streams.settings import settings_env
from tests.fixtures.runtime import module_runtime
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration

# What the deployment configures while the runtime is live (the default policy, "*").
LIVE_ENV = {"BATON_OUTBOUND_DAILY_LIMIT": "1", "BATON_OUTBOUND_QUIET_HOURS_START": "00:00",
            "BATON_OUTBOUND_QUIET_HOURS_END": "00:00", "BATON_WORKFLOW_ALLOW_USER_OVERRIDE": "false"}
# What the environment says when the log is replayed: every value differs from what decided live.
REPLAY_ENV = {"BATON_OUTBOUND_DAILY_LIMIT": "0", "BATON_OUTBOUND_QUIET_HOURS_START": "00:00",
              "BATON_OUTBOUND_QUIET_HOURS_END": "23:59", "BATON_WORKFLOW_ALLOW_USER_OVERRIDE": "true",
              "BATON_WORKFLOW_ALLOW_PHASE_SKIP": "true"}


@pytest.fixture(scope="module")
def runtime(bootstrap_servers: str, postgres_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    with pytest.MonkeyPatch.context() as env:
        for key, value in LIVE_ENV.items():  # the worker and the API, child processes, read their settings here
            env.setenv(key, value)
        with module_runtime(bootstrap_servers, postgres_server_url, tmp_path_factory.mktemp("pol") / "baton") as running:
            yield running


def client(runtime: Runtime, tenant: str, *, service: bool = False) -> httpx.Client:
    token = issue_token(runtime.settings, tenant, subject="ops" if service else None, service=service)
    return httpx.Client(base_url=runtime.api_url, timeout=30, headers={"Authorization": f"Bearer {token}"})


def queue(api: httpx.Client, user: str, text: str) -> str:
    body = {"user_id": user, "agent_id": "saga", "message_data": {"type": "text", "text": text}}
    response = api.post("/v1/outbound", json=body)
    assert response.status_code == 202, response.text
    return response.json()["message_id"]


def decided(api: httpx.Client, message_id: str) -> dict | None:
    response = api.get(f"/v1/outbound/messages/{message_id}")
    return response.json() if response.status_code == 200 and response.json()["decisions"] else None


def test_the_configured_policy_is_adopted_at_start_and_shown_to_every_tenant(runtime: Runtime) -> None:
    with client(runtime, "acme") as api:
        policies = eventually(lambda: (p := api.get("/v1/policies").json())["in_force"] and p, "policy projected")
    in_force = policies["in_force"]
    assert in_force["scope"] == "*" and in_force["reason"] == "configured" and len(in_force["policy"]) == 64
    assert in_force["sections"]["outbound"]["daily_limit"] == 1
    assert in_force["sections"]["workflow"]["allow_user_override"] is False
    assert set(in_force["sections"]) == {"conversations", "learning", "outbound", "steps", "workflow"}


def test_a_tenants_change_decides_what_follows_and_replay_keeps_what_was_decided(runtime: Runtime) -> None:
    with client(runtime, "acme") as api, client(runtime, "acme", service=True) as ops, \
            client(runtime, "globex") as other:
        # Under the configured policy (no quiet hours) a message goes at once.
        first = queue(api, "ana", "one")
        assert eventually(lambda: decided(api, first), "first decided")["decisions"][0]["decision"] == "approved"

        assert api.patch("/v1/policies/outbound", json={"daily_limit": 5}).status_code == 403  # not a service token
        refused = ops.patch("/v1/policies/outbound", json={"daily_limt": 5})
        assert refused.status_code == 422 and "outbound.daily_limt" in refused.text
        assert ops.patch("/v1/policies/outbound", json={"quiet_hours_start": "25:00"}).status_code == 422
        assert ops.patch("/v1/policies/nowhere", json={}).status_code == 404
        now = datetime.now(UTC)
        quiet = {"quiet_hours_start": f"{(now - timedelta(hours=1)):%H:%M}",
                 "quiet_hours_end": f"{(now + timedelta(hours=1)):%H:%M}"}
        changed = ops.patch("/v1/policies/outbound", json=quiet)
        assert changed.status_code == 200, changed.text
        assert changed.json()["adopted"] and changed.json()["section"] | quiet == changed.json()["section"]
        assert changed.json()["section"]["daily_limit"] == 1  # the fields not named stay as in force
        assert ops.patch("/v1/policies/outbound", json=quiet).json()["adopted"] is False

        # acme's quiet hours now hold its next message; another tenant keeps the default policy.
        second = queue(api, "ana", "two")
        held = eventually(lambda: decided(api, second), "second decided")
        assert (held["decisions"][0]["decision"], held["decisions"][0]["reason"]) == ("deferred", "quiet_hours")
        elsewhere = queue(other, "bo", "one")
        assert eventually(lambda: decided(other, elsewhere), "globex decided")["decisions"][0]["decision"] == "approved"

        history = api.get("/v1/policies").json()
        assert history["in_force"]["scope"] == "acme" and history["in_force"]["reason"] == "command"
        assert history["in_force"]["actor"] == "service:ops"
        assert [a["scope"] for a in history["adoptions"]] == ["*", "acme"]
        assert other.get("/v1/policies").json()["in_force"]["scope"] == "*"  # no other tenant's policy shown

        # Workflow: the configured policy refuses a user override; a tenant change allows it for what follows.
        assert api.post("/v1/tasks", json={"task_code": "P-1", "title": "p"}).status_code == 201
        assert api.post("/v1/tasks/P-1/start", json={}).status_code == 200
        override = {"override": True, "reason": "spec in ticket", "actor": "user:ana"}
        assert api.post("/v1/tasks/P-1/phases/complete", json=override).status_code == 409
        assert ops.patch("/v1/policies/workflow", json={"allow_user_override": True}).status_code == 200
        allowed = api.post("/v1/tasks/P-1/phases/complete", json=override)
        assert allowed.status_code == 200 and allowed.json()["overridden"] is True, allowed.text
        eventually(lambda: api.get("/v1/tasks/P-1").json().get("overrides"), "override projected")
        before = {m: api.get(f"/v1/outbound/messages/{m}").json()["decisions"] for m in (first, second)}

    # The environment now configures other values for everything; replay must not decide with it.
    verify = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "--verify"],
                            env=child_env(COLUMNS="200", **{**settings_env(runtime.settings), **REPLAY_ENV}),
                            capture_output=True, text=True, timeout=300, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "policy_adoptions" in verify.stdout and "outbound_messages" in verify.stdout
    with client(runtime, "acme") as api, client(runtime, "globex") as other:
        assert other.get(f"/v1/outbound/messages/{elsewhere}").json()["decisions"][0]["decision"] == "approved"
        after = {m: api.get(f"/v1/outbound/messages/{m}").json()["decisions"] for m in before}
    assert after == before and before[second][0]["reason"] == "quiet_hours"


def test_an_environment_change_is_adopted_at_restart_and_decides_only_what_follows(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    with client(runtime, "globex") as other:
        before = queue(other, "cy", "before")
        assert eventually(lambda: decided(other, before), "decided")["decisions"][0]["decision"] == "approved"
    for role in ("api", "worker"):
        runtime.kill(role, signal.SIGTERM)
    now = datetime.now(UTC)
    monkeypatch.setenv("BATON_OUTBOUND_QUIET_HOURS_START", f"{(now - timedelta(hours=1)):%H:%M}")
    monkeypatch.setenv("BATON_OUTBOUND_QUIET_HOURS_END", f"{(now + timedelta(hours=1)):%H:%M}")
    runtime.spawn("worker")
    runtime.spawn("api")
    runtime.wait_for_api(60)

    with client(runtime, "globex") as other, client(runtime, "acme") as api:
        policies = eventually(lambda: (p := other.get("/v1/policies").json())["in_force"]["sections"]["outbound"]
                              ["quiet_hours_end"] != "00:00" and p, "the configured change adopted")
        assert policies["in_force"]["reason"] == "configured" and policies["in_force"]["actor"] == "baton"
        assert [a["reason"] for a in policies["adoptions"] if a["scope"] == "*"] == ["configured", "configured"]
        after = queue(other, "cy", "after")
        assert eventually(lambda: decided(other, after), "decided")["decisions"][0]["reason"] == "quiet_hours"
        assert other.get(f"/v1/outbound/messages/{before}").json()["decisions"][0]["decision"] == "approved"
        # acme has a policy of its own: a change of the default does not reach it.
        assert api.get("/v1/policies").json()["in_force"]["scope"] == "acme"

    verify = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "--verify"],
                            env=child_env(COLUMNS="200", **{**settings_env(runtime.settings), **REPLAY_ENV}),
                            capture_output=True, text=True, timeout=300, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
