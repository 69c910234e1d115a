"""The learning API on a real runtime, with fake agents that are real HTTP servers on localhost.

One runtime serves the module; each test uses learners of its own, so the tests do not interfere.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from streams.auth import issue_token
from streams.embedded import child_env
from streams.runtime import Runtime
from streams.settings import settings_env
from tests.fixtures.learning_agents import AGENTS, FakeAgents, Reply
from tests.fixtures.runtime import module_runtime
from tests.fixtures.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
INTENT = {"topic": "Machine Learning", "depth": "informed", "end_goal": "Build production ML models",
          "time_per_day_min": 60, "user_tz": "America/New_York",
          "meta": {"learning_style": "project-first", "hardware_specs": "M4 Mac Mini 24GB"}}


class Learning:
    """The module's runtime and fake agents, and clients per learner."""

    def __init__(self, runtime: Runtime, agents: FakeAgents) -> None:
        self.runtime = runtime
        self.agents = agents
        self.settings = runtime.settings

    def client(self, learner: str | None, *, service: bool = False, tenant: str = "acme",
               **headers: str) -> httpx.Client:
        token = issue_token(self.settings, tenant, subject=learner if not service else "edge", service=service)
        return httpx.Client(base_url=self.runtime.api_url, timeout=30,
                            headers={"Authorization": f"Bearer {token}", **headers})


@pytest.fixture(scope="module")
def learning(bootstrap_servers: str, postgres_server_url: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Learning]:
    with FakeAgents() as agents, pytest.MonkeyPatch.context() as env:
        # Every agent is asked at every run (no freshness window), retries wait milliseconds.
        for key, value in {"AGENTS": agents.env, "FRESHNESS_S": "", "DEFAULT_FRESHNESS_S": "0",
                           "BACKOFF_S": "0.05", "AGENT_TIMEOUT_S": "1", "SIGNALS_DEADLINE_S": "10",
                           "RATE_PER_S": "5", "BURST": "30"}.items():
            env.setenv(f"BATON_LEARNING_{key}", value)
        with module_runtime(bootstrap_servers, postgres_server_url, tmp_path_factory.mktemp("baton")) as runtime:
            yield Learning(runtime, agents)


def sync(api: httpx.Client, **changes) -> dict:
    response = api.post("/v1/learning/intent.sync", json={**INTENT, **changes})
    assert response.status_code == 200, response.text
    return response.json()


def run(api: httpx.Client, week: int, day: int, force_refresh: bool = False) -> dict:
    response = api.post("/v1/learning/day.run", json={"week": week, "day": day, "force_refresh": force_refresh})
    assert response.status_code == 200, response.text
    return response.json()


def status_when(api: httpx.Client, ready) -> dict:
    return eventually(lambda: (s := api.get("/v1/learning/status").json()) and ready(s) and s, "status projected")


def test_full_flow_sync_run_done_status(learning: Learning) -> None:
    with learning.client("ada", **{"X-User-ID": "mallory"}) as api:  # a user token's X-User-ID is ignored
        intent = sync(api)
        assert intent["active"] is True and intent["user_tz"] == "America/New_York"
        assert set(intent) >= {"intent_id", "topic", "depth", "end_goal", "time_per_day_min", "created_at"}

        plan = run(api, 1, 3)
        assert set(plan) == {"session_id", "plan_md", "plan_json_summary", "degraded_mode", "cache_hits",
                             "cache_misses", "signal_quality"}
        assert plan["plan_json_summary"]["title"] == "Neural Network Fundamentals"
        assert plan["plan_json_summary"]["steps"][:2] == ["Review basics", "Implement a simple NN"]
        assert plan["degraded_mode"] is False and (plan["cache_hits"], plan["cache_misses"]) == (0, 4)
        assert plan["signal_quality"] == {a: {"available": True, "fresh": True} for a in AGENTS}

        done = api.post("/v1/learning/day.done", json={"session_id": plan["session_id"], "completion_time_min": 45,
                                                        "confidence": 7, "notes": "Struggled with backprop"})
        assert done.status_code == 200, done.text
        body = done.json()
        assert body["ok"] is True
        assert body["next_day_hint"] == ("Good time investment! For day 4, focus on reinforcing concepts to build "
                                         "confidence.")
        assert body["completion_summary"]["session_id"] == plan["session_id"]
        assert body["completion_summary"]["confidence"] == 7 and "completed_at" in body["completion_summary"]

        status = status_when(api, lambda s: s["learning_stats"]["completed_sessions"] == 1)
    assert status["user_id"] == "ada"
    assert status["active_intent"]["id"] == intent["intent_id"]
    assert status["active_intent"]["topic"] == "Machine Learning"
    latest = status["latest_session"]
    assert (latest["id"], latest["week"], latest["day"]) == (plan["session_id"], 1, 3)
    assert latest["plan_title"] == "Neural Network Fundamentals" and latest["degraded_mode"] is False
    assert latest["completion"]["completion_time_min"] == 45 and latest["completion"]["notes"] == "Struggled with backprop"
    assert status["learning_stats"] == {"total_sessions": 1, "completed_sessions": 1, "total_time_min": 45,
                                        "average_confidence": 7.0, "current_streak_days": 1}
    assert set(status["signal_freshness"]) == set(AGENTS)
    assert all(s["available"] and s["last_updated"] for s in status["signal_freshness"].values())
    next_run = status["next_scheduled_run"]
    assert (next_run["week"], next_run["day"], next_run["timezone"]) == (1, 4, "America/New_York")
    # A service token speaks for the learner named by X-User-ID.
    with learning.client(None, service=True, **{"X-User-ID": "ada"}) as edge:
        assert edge.get("/v1/learning/status").json()["latest_session"]["id"] == plan["session_id"]
        # Operators list the tenant's learners with the same status; a learner's own token may not.
        listed = {s["user_id"]: s for s in edge.get("/v1/learning/learners").json()}
        assert listed["ada"] == status | {"next_scheduled_run": listed["ada"]["next_scheduled_run"]}
    with learning.client("ada") as ada:
        refused = ada.get("/v1/learning/learners")
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden"


def test_day_runs_are_idempotent_unless_forced(learning: Learning) -> None:
    with learning.client("idem") as api:
        sync(api)
        first = run(api, 2, 1)
        assert run(api, 2, 1) == first
        forced = run(api, 2, 1, force_refresh=True)
        assert forced["session_id"] != first["session_id"]
        assert run(api, 2, 1)["session_id"] == forced["session_id"]
        status = status_when(api, lambda s: s["learning_stats"]["total_sessions"] == 2)
        assert status["latest_session"]["id"] == forced["session_id"]


def test_agent_429_with_retry_after_and_503_then_success(learning: Learning) -> None:
    agents = learning.agents
    agents.push("clo", Reply(429, {"ok": False, "error": "slow down", "code": "rate_limited"}, {"Retry-After": "0.3"}))
    agents.push("alex", Reply(503, {"ok": False, "error": "busy"}))
    with learning.client("retry") as api:
        sync(api)
        before = len(agents.calls("clo")), len(agents.calls("alex"))
        plan = run(api, 1, 1)
    assert plan["degraded_mode"] is False and plan["cache_misses"] == 4
    clo, alex = agents.calls("clo")[before[0]:], agents.calls("alex")[before[1]:]
    assert len(clo) == 2 and clo[1]["at"] - clo[0]["at"] >= 0.3
    assert len(alex) == 2 and alex[0]["headers"]["x-idempotency-key"] == alex[1]["headers"]["x-idempotency-key"]


def test_304_reuses_the_cache_and_a_timeout_degrades_to_the_cached_signal(learning: Learning) -> None:
    agents = learning.agents
    with learning.client("slowta") as api:
        sync(api)
        assert run(api, 1, 1)["cache_misses"] == 4
        agents.push("ta", Reply(delay_s=2.5, body={"ok": True, "data": {"exercises": ["late"]}}))
        plan = run(api, 1, 2)
    assert agents.calls("clo")[-1]["headers"]["if-none-match"] == agents.etag("clo")
    assert plan["degraded_mode"] is True and (plan["cache_hits"], plan["cache_misses"]) == (4, 0)
    assert plan["signal_quality"]["ta"] == {"available": True, "fresh": False}
    assert plan["signal_quality"]["clo"] == {"available": True, "fresh": True}
    assert "Test with data" in plan["plan_json_summary"]["steps"]  # ta's cached signal


def test_every_error_code(learning: Learning) -> None:
    url = learning.runtime.api_url
    unauthenticated = httpx.get(f"{url}/v1/learning/status")
    assert unauthenticated.status_code == 401 and unauthenticated.json()["code"] == "unauthorized"
    forged = httpx.get(f"{url}/v1/learning/status", headers={"Authorization": "Bearer nonsense"})
    assert forged.status_code == 401 and "error" in forged.json()
    tenant_only = issue_token(learning.settings, "acme")
    no_learner = httpx.get(f"{url}/v1/learning/status", headers={"Authorization": f"Bearer {tenant_only}"})
    assert no_learner.status_code == 401 and "--subject" in no_learner.json()["error"]
    with learning.client(None, service=True) as edge:
        missing = edge.get("/v1/learning/status")
        assert missing.status_code == 400 and missing.json()["error"].startswith("X-User-ID")

    with learning.client("errors") as api:
        early = api.post("/v1/learning/day.run", json={"week": 1, "day": 1})
        assert early.status_code == 409 and early.json() == {"error": "no active learning intent: call intent.sync "
                                                                      "first", "code": "no_active_intent"}
        bad_depth = api.post("/v1/learning/intent.sync", json={**INTENT, "depth": "bottomless"})
        assert bad_depth.status_code == 400 and bad_depth.json()["field"] == "depth"
        assert bad_depth.json()["code"] == "invalid_request" and bad_depth.json()["error"].startswith("depth:")
        bad_zone = api.post("/v1/learning/intent.sync", json={**INTENT, "user_tz": "Mars/Olympus"})
        assert bad_zone.status_code == 400 and bad_zone.json()["field"] == "user_tz"
        sync(api)
        bad_day = api.post("/v1/learning/day.run", json={"week": 1, "day": 9})
        assert bad_day.status_code == 400 and bad_day.json()["field"] == "day"
        unknown = api.post("/v1/learning/day.done", json={"session_id": str(uuid.uuid4()), "completion_time_min": 5,
                                                          "confidence": 5})
        assert unknown.status_code == 404 and unknown.json()["code"] == "session_not_found"
        plan = run(api, 1, 1)
        too_confident = api.post("/v1/learning/day.done", json={"session_id": plan["session_id"],
                                                                "completion_time_min": 5, "confidence": 11})
        assert too_confident.status_code == 400 and too_confident.json()["field"] == "confidence"

    with learning.client("eve") as eve:
        stolen = eve.post("/v1/learning/day.done", json={"session_id": plan["session_id"], "completion_time_min": 5,
                                                         "confidence": 5})
        assert stolen.status_code == 404  # another learner's session does not exist for eve
        assert eve.get("/v1/learning/status").json()["latest_session"] is None
    with learning.client("errors", tenant="globex") as other_tenant:
        assert other_tenant.get("/v1/learning/status").json()["active_intent"] is None

    with learning.client("hasty") as api:
        answers: list[httpx.Response] = []
        started = time.monotonic()
        while not any(a.status_code == 429 for a in answers):
            # BURST tokens plus RATE_PER_S a second since the first: one request past that must be refused.
            assert len(answers) <= 30 + 5 * (time.monotonic() - started) + 1 and len(answers) < 500, \
                f"{len(answers)} requests in {time.monotonic() - started:.1f} s and none refused"
            answers.append(api.get("/v1/learning/status"))
    limited = [a for a in answers if a.status_code == 429]
    assert limited and limited[0].json()["code"] == "rate_limited" and int(limited[0].headers["Retry-After"]) >= 1


def test_the_event_stream_sends_the_callers_events_and_resumes(learning: Learning) -> None:
    seen: list[dict] = []
    connected = threading.Event()

    def listen() -> None:
        with learning.client("listener") as api, api.stream(
                "GET", "/v1/events/stream", params={"types": "learning.intent.synced,learning.day.planned"},
                timeout=httpx.Timeout(30, read=30)) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            connected.set()
            event: dict = {}
            for line in response.iter_lines():
                if line.startswith(("id:", "event:", "data:")):
                    key, _, value = line.partition(": ")
                    event[key.rstrip(":")] = value
                elif not line and event:
                    seen.append(event)
                    event = {}
                    if len(seen) == 2:
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert connected.wait(30)
    with learning.client("listener") as api, learning.client("someone-else") as other:
        sync(other)
        sync(api)
        plan = run(api, 1, 1)
    listener.join(30)
    assert [e["event"] for e in seen] == ["learning.intent.synced", "learning.day.planned"]
    assert json.loads(seen[1]["data"])["payload"]["session_id"] == plan["session_id"]
    assert json.loads(seen[0]["data"])["payload"]["learner"] == "listener"

    # Resuming after the first event replays what followed it, unfiltered this time.
    with learning.client("listener", **{"Last-Event-ID": seen[0]["id"]}) as api, api.stream(
            "GET", "/v1/events/stream") as response:
        types = []
        for line in response.iter_lines():
            if line.startswith("event: "):
                types.append(line.removeprefix("event: "))
            if "learning.day.planned" in types:
                break
    # A day run is three events up to its plan, which carries every agent's signal.
    assert types == ["learning.day.requested", "learning.signals.requested", "learning.day.planned"]


def test_replay_rebuilds_status_with_no_agent_reachable(learning: Learning) -> None:
    with learning.client("replayer") as api:
        sync(api)
        plan = run(api, 1, 1)
        assert api.post("/v1/learning/day.done", json={"session_id": plan["session_id"], "completion_time_min": 30,
                                                        "confidence": 8}).status_code == 200
        live = status_when(api, lambda s: s["learning_stats"]["completed_sessions"] == 1)
    learning.agents.__exit__()  # every agent is gone from now on
    verify = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "--verify"],
                            env=child_env(COLUMNS="200", **settings_env(learning.settings)),
                            capture_output=True, text=True, timeout=300, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    for table in ("learning_learners", "learning_sessions", "learning_signals"):
        assert table in verify.stdout
    with psycopg.connect(learning.settings.database_url) as conn:
        rebuilt = conn.execute("SELECT latest_session->>'id', total_sessions, completed_sessions"
                               " FROM replay_shadow.learning_learners WHERE learner = 'replayer'").fetchone()
    assert rebuilt == (live["latest_session"]["id"], 1, 1)
    shown = subprocess.run([sys.executable, "-m", "streams.cli", "learning", "status", "--tenant", "acme",
                            "--learner", "replayer"], env=child_env(**settings_env(learning.settings)),
                           capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["latest_session"]["id"] == live["latest_session"]["id"]
