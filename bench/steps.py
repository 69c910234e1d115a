"""Steps benchmark on the embedded broker and PostgreSQL: per-step orchestration overhead, steps/s, and the
largest budget overshoot when 1,000 steps race one user's daily budget (must be 0).

    .venv/bin/python -m bench.steps [--chains 20 --chain-length 10 --parallel 400 --race 1000 --fetch-wait-ms 10]

Overhead: in chains of no-op steps (transform "@"), the time from one step's `executed` event to the next's —
the next step requested by the execution fold, estimated by the runner, approved by the budget fold, executed
and recorded: requested → approved → executed plus the one hop that requests it. Steps/s: independent no-op
steps from submission to the last `executed`. Race: model steps against a local fake Anthropic server, every
one bigger than a 1/3 share of the limit's headroom when it arrives; overshoot = used − limit per scope.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import psycopg
from pydantic import SecretStr

from bench.fake_anthropic import FakeAnthropic
from streams.auth import issue_token
from streams.embedded import EmbeddedBroker, EmbeddedPostgres
from streams.runtime import Runtime
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TENANT = "acme"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def wait_done(api: httpx.Client, ids: list[str], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        pending = {i for i in pending if (r := api.get(f"/v1/executions/{i}")).status_code != 200
                   or r.json()["status"] not in ("succeeded", "failed", "cancelled")}
        time.sleep(0.2)
    if pending:
        raise SystemExit(f"{len(pending)} executions did not finish within {within_s:.0f} s")


def executed_times(database_url: str, prefix: str) -> dict[tuple[str, str], float]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT payload->>'execution_id', payload->>'step_id', occurred_at FROM events"
                            " WHERE type = 'steps.step.executed' AND payload->>'execution_id' LIKE %s",
                            (f"{prefix}%",)).fetchall()
    return {(e, s): at.timestamp() for e, s, at in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chains", type=int, default=20)
    parser.add_argument("--chain-length", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=400, help="independent no-op steps for steps/s")
    parser.add_argument("--race", type=int, default=1000, help="model steps racing one user's budget")
    parser.add_argument("--fetch-wait-ms", type=int, default=10)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-steps-"))
    broker = EmbeddedBroker().start(tmp / "broker.log")
    postgres = EmbeddedPostgres(tmp / "pgdata").start()
    run = uuid.uuid4().hex[:6]
    with FakeAnthropic(reply="ok") as fake:
        settings = Settings(
            kafka_bootstrap_servers=broker.bootstrap_servers, database_url=postgres.fresh_database("bench_steps"),
            broker_profile="embedded", app_id=f"bench-steps-{run}", topic_prefix=f"bench-steps-{run}.",
            topic_partitions=4, tenants_file=ROOT / "examples" / "tenants.toml", data_dir=tmp / "runtime",
            api_port=0, fetch_wait_ms=args.fetch_wait_ms, log_level="warn",
            anthropic_api_key=SecretStr("sk-bench"), anthropic_base_url=fake.base_url,
        )
        try:
            with Runtime(settings).start() as runtime:
                token = issue_token(runtime.settings, TENANT)
                with httpx.Client(base_url=runtime.api_url, timeout=120,
                                  headers={"Authorization": f"Bearer {token}"}) as api:
                    report(api, runtime.settings, args)
        finally:
            postgres.stop()
            broker.stop()


def report(api: httpx.Client, settings: Settings, args: argparse.Namespace) -> None:
    noop = {"intent": "transform", "spec": {"expression": "@"}}
    # Warm-up: topics, consumer groups and connections.
    api.post("/v1/executions?wait=true", json={"agent_id": "warm", "user_id": "warm",
                                               "steps": [{"step_id": "w", **noop}]})

    chains = [f"chain-{i}" for i in range(args.chains)]
    for execution_id in chains:
        steps = [{"step_id": f"s{k}", **noop, "depends_on": [f"s{k - 1}"] if k else []}
                 for k in range(args.chain_length)]
        api.post("/v1/executions", json={"execution_id": execution_id, "agent_id": "bench", "user_id": "bench",
                                         "steps": steps})
    wait_done(api, chains, 600)
    times = executed_times(settings.database_url, "chain-")
    overhead = [(times[(e, f"s{k}")] - times[(e, f"s{k - 1}")]) * 1000
                for e in chains for k in range(1, args.chain_length)]

    per_execution = 10
    parallel = [f"par-{i}" for i in range(max(1, args.parallel // per_execution))]
    started = time.time()
    for execution_id in parallel:
        api.post("/v1/executions", json={"execution_id": execution_id, "agent_id": "bench", "user_id": "bench",
                                         "steps": [{"step_id": f"s{k}", **noop} for k in range(per_execution)]})
    wait_done(api, parallel, 600)
    done = executed_times(settings.database_url, "par-")
    steps_per_s = len(done) / (max(done.values()) - started)

    limit = 100_000
    api.put("/v1/budgets", json={"scope": "user", "id": "racer", "tokens": limit})
    time.sleep(1)
    race = [f"race-{i}" for i in range(max(1, args.race // 10))]
    text = "The parcel is late and the customer asks where it is. " * 20
    for n, execution_id in enumerate(race):
        api.post("/v1/executions", json={
            "execution_id": execution_id, "agent_id": f"agent-{n % 4}", "user_id": "racer",
            "steps": [{"step_id": f"s{k}", "intent": "summarize", "input": text} for k in range(10)]})
    wait_done(api, race, 900)
    results = [api.get(f"/v1/executions/{i}").json()["metrics"] for i in race]
    budget = api.get("/v1/budgets", params={"scope": "user", "id": "racer"}).json()
    approved = sum(r["executed"] for r in results)
    rejected = sum(r["rejected"] for r in results)
    overshoot = max(0, budget["used_tokens"] + budget["reserved_tokens"] - limit)

    print(f"per-step orchestration overhead (no-op handler, {len(overhead)} samples, fetch wait "
          f"{args.fetch_wait_ms} ms): p50 {statistics.median(overhead):.1f} ms, p99 {percentile(overhead, 99):.1f} ms")
    print(f"throughput: {len(done)} independent no-op steps in {max(done.values()) - started:.2f} s = "
          f"{steps_per_s:.0f} steps/s")
    print(f"race: {approved + rejected} model steps for one user's {limit} tokens: {approved} approved, {rejected} "
          f"rejected; used {budget['used_tokens']}, reserved {budget['reserved_tokens']}; "
          f"largest overshoot {overshoot} tokens")


if __name__ == "__main__":
    main()
