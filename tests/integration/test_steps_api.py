"""The steps domain end to end on one runtime: executions over HTTP with a real Anthropic client against a local
fake, many steps racing one user's daily budget (never passed), flags, audit, bugs and replay --verify."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest
from pydantic import SecretStr

from streams.auth import issue_token
from streams.embedded import child_env
from streams.runtime import Runtime
from streams.settings import settings_env
from tests.fixtures.anthropic import FakeAnthropic, count_tokens, error_body
from tests.fixtures.runtime import module_runtime
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration
CONTEXT = "Support handbook. " + " ".join(f"Rule {i}: be brief and cite the order id." for i in range(500))
ORDERS = [{"id": f"o{i}", "sku": "A" if i % 2 else "B", "qty": i, "status": "paid" if i % 3 else "open"}
          for i in range(1, 9)]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(reply='{"customer": "Ana", "total": 3}') as server:
        yield server


@pytest.fixture(scope="module")
def runtime(bootstrap_servers: str, postgres_server_url: str, tmp_path_factory: pytest.TempPathFactory,
            fake: FakeAnthropic) -> Iterator[Runtime]:
    with module_runtime(bootstrap_servers, postgres_server_url, tmp_path_factory.mktemp("steps") / "baton",
                        fetch_wait_ms=50, anthropic_api_key=SecretStr("sk-test"),
                        anthropic_base_url=fake.base_url) as running:
        yield running


@pytest.fixture(scope="module")
def api(runtime: Runtime) -> Iterator[httpx.Client]:
    token = issue_token(runtime.settings, "acme")
    with httpx.Client(base_url=runtime.api_url, timeout=90, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def workflow(user: str = "u1", agent: str = "support-bot", **extra) -> dict:
    return {
        "agent_id": agent, "user_id": user, "context": CONTEXT, "token_budget": 200_000, **extra,
        "steps": [
            {"step_id": "check", "intent": "validate", "input": ORDERS,
             "spec": {"schema": {"type": "array", "items": {"required": ["id", "qty"]}}}},
            {"step_id": "paid", "intent": "filter", "depends_on": ["check"],
             "spec": {"items": "steps.check.value", "where": "status == 'paid'"}},
            {"step_id": "totals", "intent": "aggregate", "depends_on": ["paid"],
             "spec": {"items": "steps.paid", "group_by": "sku", "metrics": {"units": {"op": "sum", "of": "qty"}}}},
            {"step_id": "facts", "intent": "extract", "input": "Ana   wrote:\n\n\n\nmy order o3 is late\nmy order o3 is late",
             "spec": {"instruction": "Extract the customer and the order."}},
            {"step_id": "big", "intent": "conditional", "depends_on": ["totals"],
             "spec": {"when": "steps.totals.A.units > `5`", "then": ["notify"], "else": ["skip_note"]}},
            {"step_id": "notify", "intent": "send", "depends_on": ["big", "facts"],
             "spec": {"message_type": "order_update", "fields_from": "steps.facts"}},
            {"step_id": "skip_note", "intent": "transform", "depends_on": ["big"], "spec": {"expression": "input"}},
        ],
    }


KNOWN = ("steps", "executed", "skipped", "failed", "rejected", "degraded", "input_tokens", "output_tokens",
         "cache_write_tokens", "cache_read_tokens", "tokens_used")


def test_an_execution_runs_its_dag_in_parallel_and_answers_with_outputs_and_metrics(api: httpx.Client,
                                                                                     runtime: Runtime,
                                                                                     fake: FakeAnthropic) -> None:
    response = api.post("/v1/executions?wait=true", json=workflow(execution_id="wf-1"))
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["status"] == "succeeded", result
    steps = {s["step_id"]: s for s in result["steps"]}
    assert steps["totals"]["output"] == {"A": {"units": 13}, "B": {"units": 14}}
    assert steps["facts"]["output"] == {"customer": "Ana", "total": 3}
    assert steps["facts"]["model"] == "claude-haiku-4-5" and steps["skip_note"]["status"] == "skipped"
    assert steps["notify"]["output"]["queued"] == "outbound"
    metrics = result["metrics"]
    assert metrics["executed"] == 6 and metrics["skipped"] == 1 and metrics["tokens_used"] > 0
    assert metrics["cache_write_tokens"] > 0 and metrics["saved"]["routing"]["usd"] > 0
    assert metrics["saved"]["compression"]["tokens"] > 0
    assert metrics["budget_utilisation"]["execution"] > 0
    # The two independent roots were requested by one fold step.
    assert steps["check"]["requested_at"] == steps["facts"]["requested_at"]
    first_calls = len(fake.requests)
    again = api.post("/v1/executions?wait=true", json=workflow(execution_id="wf-2"))
    assert again.json()["metrics"]["cache_read_tokens"] > 0  # the stable prefix was served from the cache
    # The one model call as the fake billed it: the system prompt written to the cache, the prompt, the reply.
    (call,) = [r for r in fake.requests[:first_calls]
               if r["path"] == "/v1/messages" and "o3 is late" in str(r["messages"])]
    cache_write, prompt, output = (count_tokens(call["system"]), count_tokens(call["messages"]),
                                   count_tokens('{"customer": "Ana", "total": 3}'))
    assert {k: metrics[k] for k in KNOWN} == {
        "steps": 7, "executed": 6, "skipped": 1, "failed": 0, "rejected": 0, "degraded": 0,
        "input_tokens": prompt + cache_write, "output_tokens": output, "cache_write_tokens": cache_write,
        "cache_read_tokens": 0, "tokens_used": prompt + cache_write + output}
    assert metrics["cost_usd"] == pytest.approx((prompt * 1.0 + cache_write * 1.25 + output * 5.0) / 1e6, abs=1e-9)
    other = {"Authorization": f"Bearer {issue_token(runtime.settings, 'globex')}"}
    assert api.get("/v1/executions/wf-1", headers=other).status_code == 404

    audit = api.get("/v1/audit", params={"entity": "wf-1"}).json()
    actions = [a["action"] for a in audit]
    assert actions[0] == "started" and "initialised" in actions and actions[-1] == "completed"
    assert actions.count("step_executed") == 6
    # Every record names who made it happen (the token's subject) and which part of Baton wrote it.
    assert {a["actor"] for a in audit} == {"tenant:acme"}
    assert {"fold:steps", "effect:steps", "tenant:acme"} <= {a["recorded_by"] for a in audit}
    day = result["steps"][0]["finished_at"][:10]
    # The rollups are a read model of their own: wf-2's step may reach them after wf-2's answer.
    haiku = eventually(lambda: next((r for r in api.get("/v1/rollups", params={"by": "model", "date": day}).json()
                                     if r["subject"] == "claude-haiku-4-5" and r["steps"] >= 2), None),
                       "both executions' haiku steps in the model rollup")
    assert haiku["usd_saved"] > 0
    assert [r["subject"] for r in api.get("/v1/rollups", params={"by": "agent", "date": day}).json()] == ["support-bot"]


def test_bad_executions_are_refused_naming_the_field(api: httpx.Client) -> None:
    cycle = workflow(execution_id="bad")
    cycle["steps"][0]["depends_on"] = ["notify"]
    assert "dependency cycle" in api.post("/v1/executions", json=cycle).json()["detail"]
    unknown = {**workflow(), "steps": [{"step_id": "a", "intent": "teleport"}]}
    response = api.post("/v1/executions", json=unknown)
    assert response.status_code == 422 and response.json()["detail"][0]["loc"][-1] == "intent"


def test_many_concurrent_steps_never_pass_one_users_daily_budget(api: httpx.Client) -> None:
    limit = 12_000
    assert api.put("/v1/budgets", json={"scope": "user", "id": "racer", "tokens": limit}).status_code == 202
    steps = [{"step_id": f"s{i}", "intent": "summarize", "input": f"Order {i} is late. " * 40} for i in range(25)]
    ids = []
    for n, agent in enumerate(("bot-a", "bot-b", "bot-a", "bot-b")):
        body = {"execution_id": f"race-{n}", "agent_id": agent, "user_id": "racer", "steps": steps}
        assert api.post("/v1/executions", json=body).status_code == 202
        ids.append(f"race-{n}")
    results = [eventually(lambda i=i: (r := api.get(f"/v1/executions/{i}")).status_code == 200
                          and r.json()["status"] in ("failed", "succeeded") and r.json(), f"{i} finished", 120)
               for i in ids]
    executed = sum(r["metrics"]["executed"] for r in results)
    rejected = sum(r["metrics"]["rejected"] for r in results)
    assert executed > 0 and rejected > 0 and executed + rejected == 100
    used = sum(r["metrics"]["tokens_used"] for r in results)
    budget = eventually(lambda: (b := api.get("/v1/budgets", params={"scope": "user", "id": "racer"}).json())
                        ["reserved_tokens"] == 0 and b["used_tokens"] == used and b, "reservations settled")
    assert budget["used_tokens"] <= limit and budget["limit_tokens"] == limit
    reasons = {s["decision"][:90] for r in results for s in r["steps"] if s["status"] == "rejected"}
    assert budget["rejected"] == rejected, reasons
    refused = api.get("/v1/audit", params={"entity": "user:racer", "action": "budget_exceeded"}).json()
    assert len(refused) == rejected and refused[0]["details"]["limit_tokens"] == limit


def test_flags_change_with_old_and_new_values_and_orchestration_off_passes_through(api: httpx.Client) -> None:
    assert api.put("/v1/flags", json={"orchestration": False}).status_code == 202
    eventually(lambda: [a for a in api.get("/v1/audit", params={"entity": "flags"}).json()
                        if a["details"]["new"]["orchestration"] is False], "flag change applied")
    result = api.post("/v1/executions?wait=true", json={
        "agent_id": "plain", "user_id": "racer", "steps": [{"step_id": "s", "intent": "summarize", "input": "x " * 50}],
    }).json()
    # Over the racer's budget, but orchestration is off: recorded, not enforced, plain unrouted call.
    assert result["status"] == "succeeded" and result["steps"][0]["model"] == "claude-sonnet-4-5"
    assert "not enforced" in result["steps"][0]["decision"]
    change = api.get("/v1/audit", params={"entity": "flags"}).json()[-1]["details"]
    assert change["old"]["orchestration"] is True and change["new"]["orchestration"] is False
    assert api.put("/v1/flags", json={"orchestration": True}).status_code == 202


def test_a_failed_step_becomes_a_bug(api: httpx.Client) -> None:
    body = {"execution_id": "broken", "agent_id": "bugbot", "user_id": "u2", "task_code": "TSK-STEPS",
            "steps": [{"step_id": "v", "intent": "validate", "input": {"x": 1}, "spec": {"schema": {"required": ["y"]}}}]}
    result = api.post("/v1/executions?wait=true", json=body).json()
    assert result["status"] == "failed" and "'y' is a required property" in result["steps"][0]["error"]
    bugs = eventually(lambda: [b for b in api.get("/v1/bugs").json()["bugs"] if "validate step failed" in b["message"]],
                      "bug logged")
    assert bugs[0]["fingerprint"] and bugs[0]["file"].endswith("agents/steps/intents.py")


def flag_changes(api: httpx.Client) -> list[dict]:
    return api.get("/v1/audit", params={"entity": "flags"}).json()


def test_a_misspelt_or_empty_flag_change_is_refused_and_a_change_to_nothing_records_nothing(
        api: httpx.Client, runtime: Runtime) -> None:
    # The previous test's last change has been applied: nothing but this test's changes comes after `before`.
    (before,) = eventually(lambda: (not (c := flag_changes(api)) or c[-1]["details"]["new"]["orchestration"])
                           and (c,), "orchestration back on")
    misspelt = api.put("/v1/flags", json={"orchestraton": False, "caching": False})
    assert misspelt.status_code == 422, misspelt.text
    assert [e["loc"] for e in misspelt.json()["detail"]] == [["body", "orchestraton"]]
    empty = api.put("/v1/flags", json={})
    assert empty.status_code == 422 and "orchestration" in empty.json()["detail"]
    assert api.put("/v1/budgets", json={"scope": "user", "id": "u9", "tokns": 5}).status_code == 422
    # A change to the values in force records nothing; the real change after it is the only new record.
    assert api.put("/v1/flags", json={"orchestration": True, "caching": True}).status_code == 202
    assert api.put("/v1/flags", json={"fail_open": True}).status_code == 202
    after = eventually(lambda: len(c := flag_changes(api)) > len(before) and c, "flag change applied")
    assert len(after) == len(before) + 1
    (change,) = after[len(before):]
    assert (change["details"]["old"]["fail_open"], change["details"]["new"]["fail_open"]) == (False, True)
    assert change["actor"] == "tenant:acme" and change["recorded_by"] == "fold:steps"
    # A service token is named as the service.
    service = {"Authorization": f"Bearer {issue_token(runtime.settings, 'acme', service=True, subject='ops-bot')}"}
    assert api.put("/v1/flags", json={"fail_open": False}, headers=service).status_code == 202
    back = eventually(lambda: len(c := flag_changes(api)) > len(after) and c, "flag change applied")
    assert back[-1]["actor"] == "service:ops-bot" and back[-1]["details"]["new"]["fail_open"] is False


def test_a_failed_model_call_shows_as_degraded_on_the_execution(api: httpx.Client, fake: FakeAnthropic) -> None:
    def overloaded(body: dict) -> tuple[int, dict] | None:
        return (529, error_body("overloaded_error", "busy")) if "DEGRADE-ME" in str(body["messages"]) else None

    fake.responder = overloaded
    try:
        result = api.post("/v1/executions?wait=true", json={
            "execution_id": "degraded-1", "agent_id": "plain", "user_id": "u3",
            "steps": [{"step_id": "s", "intent": "summarize", "input": "DEGRADE-ME one two three"},
                      {"step_id": "t", "intent": "transform", "depends_on": ["s"], "spec": {"expression": "steps.s"}}],
        }).json()
    finally:
        fake.responder = None
    assert result["status"] == "succeeded", result
    step = result["steps"][0]
    assert step["output"] == "DEGRADE-ME one two three" and len(step["degraded"]) == 1
    assert step["degraded"][0].startswith("deterministic: model call failed") and "529" in step["degraded"][0]
    assert result["metrics"]["degraded"] == 1 and result["steps"][1]["degraded"] == []
    audit = api.get("/v1/audit", params={"entity": "degraded-1", "action": "step_degraded"}).json()
    assert [a["entity"] for a in audit] == ["execution:degraded-1/step:s"]


def test_a_flag_changed_during_an_execution_applies_only_to_later_executions(api: httpx.Client,
                                                                             fake: FakeAnthropic) -> None:
    """The issue's run: orchestration switched off while step a runs; step b (over the limit) is still refused."""
    entered, release = threading.Event(), threading.Event()

    def held(body: dict) -> None:
        if "HOLD-ME" in str(body["messages"]):
            entered.set()
            release.wait(30)

    limit = 2000
    assert api.put("/v1/budgets", json={"scope": "user", "id": "midrun", "tokens": limit}).status_code == 202
    eventually(lambda: api.get("/v1/audit", params={"entity": "user:midrun", "action": "budget_changed"}).json(),
               "limit applied")
    fake.responder = held
    try:
        body = {"execution_id": "midrun-1", "agent_id": "plain", "user_id": "midrun", "steps": [
            {"step_id": "a", "intent": "summarize", "input": "HOLD-ME " + "x " * 50},
            {"step_id": "b", "intent": "summarize", "depends_on": ["a"], "input": "word " * 2500}]}
        assert api.post("/v1/executions", json=body).status_code == 202
        assert entered.wait(60), "step a never reached the model"
        changes = len(flag_changes(api))
        assert api.put("/v1/flags", json={"orchestration": False}).status_code == 202
        eventually(lambda: len(flag_changes(api)) > changes, "orchestration switched off")
    finally:
        release.set()
        fake.responder = None
    try:
        result = eventually(lambda: (r := api.get("/v1/executions/midrun-1").json()).get("status")
                            in ("failed", "succeeded") and r, "midrun-1 finished", 120)
        assert result["flags"]["orchestration"] is True
        a, b = result["steps"]
        assert a["status"] == "executed" and "not enforced" not in a["decision"]
        assert b["status"] == "rejected" and b["decision"].startswith("rejected by user"), b["decision"]
        # The budget is another stream than the execution: its read model follows on its own.
        used = eventually(lambda: (u := api.get("/v1/budgets", params={"scope": "user", "id": "midrun"}).json())
                          ["reserved_tokens"] == 0 and u["rejected"] > 0 and u, "reservations settled, b rejected")
        assert 0 < used["used_tokens"] <= limit and used["rejected"] == 1
    finally:
        assert api.put("/v1/flags", json={"orchestration": True}).status_code == 202
        eventually(lambda: flag_changes(api)[-1]["details"]["new"]["orchestration"] is True, "orchestration back on")


def test_replay_rebuilds_identical_read_models_without_network(runtime: Runtime, fake: FakeAnthropic) -> None:
    calls = len(fake.requests)
    env = settings_env(runtime.settings)
    env["ANTHROPIC_BASE_URL"] = "http://127.0.0.1:9"  # nothing listens: replay must not call out
    verify = subprocess.run([sys.executable, "-m", "streams.cli", "replay", "--verify"],
                            env=child_env(COLUMNS="200", **env), capture_output=True, text=True, timeout=300,
                            check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "steps_executions" in verify.stdout and "steps_budget_days" in verify.stdout
    assert len(fake.requests) == calls
