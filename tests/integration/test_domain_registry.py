"""A domain registered from outside the spine (tests/tally/) is folded, projected, queried and verified."""

from __future__ import annotations

import subprocess
import sys

import httpx
import psycopg
import pytest

from streams.auth import issue_token
from streams.embedded import child_env, free_port
from streams.runtime import Runtime
from streams.settings import Settings, settings_env
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def tally_runtime(settings: Settings):
    runtime = Runtime(settings.model_copy(update={"api_port": free_port(), "extra_domains": "tests.tally:DOMAIN"}))
    try:
        runtime.start()
        yield runtime
    finally:
        runtime.stop()


def counted(counter: str, amount: int, source_id: str) -> dict:
    return {"type": "tally.counted", "occurred_at": "2026-12-01T10:00:00Z", "source_id": source_id,
            "payload": {"counter": counter, "amount": amount}}


def test_registered_domain_is_folded_projected_queried_and_verified(tally_runtime: Runtime) -> None:
    settings = tally_runtime.settings
    headers = {"Authorization": f"Bearer {issue_token(settings, 'acme')}"}
    with httpx.Client(base_url=tally_runtime.api_url, headers=headers, timeout=10) as api:
        events = [counted("cups", 4, "a"), counted("cups", 4, "b"), counted("cups", 4, "c"), counted("cups", 4, "a"),
                  counted("plates", 1, "d")]
        assert api.post("/v1/events", json={"events": events}).status_code == 202
        # Emitted by Baton, not ingestible; unknown payload field; both rejected before the log.
        reached = {**counted("cups", 1, "x"), "type": "tally.milestone.reached",
                   "payload": {"counter": "cups", "total": 1}}
        assert api.post("/v1/events", json=reached).status_code == 422
        assert api.post("/v1/events", json={**counted("cups", 1, "y"), "payload": {"counter": "cups"}}).status_code == 422

        cups = eventually(lambda: (r := api.get("/v1/tallies/cups")).status_code == 200
                          and r.json()["announced"] == 1 and r.json(), "cups projected with its announcement")
        # The repeated source id "a" is one event: 3 counts of 4; crossing 10 emitted one milestone, announced once.
        assert cups == {"total": 12, "counts": 3, "milestones": 1, "announced": 1}
        assert eventually(lambda: api.get("/v1/tallies/plates").status_code == 200, "plates")
        globex = {"Authorization": f"Bearer {issue_token(settings, 'globex')}"}
        assert api.get("/v1/tallies/cups", headers=globex).status_code == 404
        assert "/v1/tallies/{counter}" in api.get("/openapi.json").json()["paths"]

    verify = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "--verify"],
                            env=child_env(COLUMNS="200", **settings_env(settings)),
                            capture_output=True, text=True, timeout=300, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "tally_counters" in verify.stdout

    with psycopg.connect(settings.database_url) as conn:
        conn.execute("UPDATE tally_counters SET total = 99 WHERE counter = 'cups'")
    tampered = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "--verify"],
                              env=child_env(COLUMNS="200", **settings_env(settings)),
                              capture_output=True, text=True, timeout=300, check=False)
    assert tampered.returncode == 1
    assert "tally_counters differs tally:acme:cups total" in tampered.stdout
