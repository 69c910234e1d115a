"""`baton status` tells a script whether Baton is healthy: roles up, lag per domain within bounds."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx
import pytest

from streams.auth import issue_token
from streams.embedded import child_env
from streams.runtime import Runtime
from streams.settings import settings_env
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration


def status(runtime: Runtime, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", "status", *args],
                          env=child_env(COLUMNS="200", **settings_env(runtime.settings)),
                          capture_output=True, text=True, timeout=60, check=False)


def inbound(n: int) -> dict:
    return {"type": "conversation.message.received", "occurred_at": "2026-12-01T10:00:00Z", "source_id": f"s{n}",
            "payload": {"contact": f"3466500000{n}", "whatsapp_message_id": f"wamid.status.{n}",
                        "message_type": "text", "text": "hola"}}


def test_status_reports_roles_lag_and_last_events_and_fails_when_a_role_is_down(runtime: Runtime,
                                                                               api: httpx.Client) -> None:
    assert api.post("/v1/events", json={"events": [inbound(n) for n in range(4)]}).status_code == 202
    healthy = eventually(lambda: (r := status(runtime, "--max-lag", "0")).returncode == 0 and r,
                         "everything folded and projected, lag 0")
    out = healthy.stdout
    assert "healthy" in out and "Dead letters: 0" in out
    for role in ("supervisor", "worker", "projector", "api"):
        assert re.search(rf"│ {role} +│ up ", out), out
    # 4 messages and what they caused: sessions and their one-run outcomes (message.answered; the routing requests
    # are not logged).
    conversations = re.search(r"│ conversations +│ (\d+) +│ 0 +│ 0 +│ (\S+ \S+)", out)
    assert conversations and int(conversations.group(1)) == 4 * 3 and conversations.group(2) >= "2026-12-01 10:00:00"
    assert re.search(r"│ costs +│ 0 +│ 0 +│ 0 +│ - ", out)

    # The console's System page asks the API, which answers for itself: up, without calling its own /healthz.
    service = issue_token(runtime.settings, "acme", service=True)
    ops = httpx.get(f"{runtime.api_url}/v1/ops/status", headers={"Authorization": f"Bearer {service}"}, timeout=10)
    assert ops.status_code == 200, ops.text
    roles = {r["role"]: r for r in ops.json()["roles"]}
    assert roles["api"]["up"] and roles["api"]["state"] == "up" and "healthz" not in roles["api"]["detail"], roles
    assert all(roles[r]["up"] and roles[r]["restarts"] == 0 and roles[r]["last_exit_code"] is None
               for r in ("worker", "projector")), roles

    runtime.kill("projector", signal.SIGKILL)
    assert api.post("/v1/events", json={"events": [inbound(n) for n in range(4, 8)]}).status_code == 202
    down = eventually(lambda: (r := status(runtime, "--max-lag", "0")).returncode == 1
                      and "projector lag" in r.stdout and r, "the projector down and lagging")
    assert "projector is down" in down.stdout
    # A generous bound still fails while a role is down.
    assert status(runtime, "--max-lag", "1000000").returncode == 1
