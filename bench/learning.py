"""Learning-plan figures: API latencies on a real runtime, and the signal cache hit rate over a simulated week.

    .venv/bin/python -m bench.learning [--learners 20] [--status 500] [--week-learners 100]

1. latency (embedded broker and PostgreSQL, real worker, projector and API; fake agents on localhost): per
   learner one intent.sync, a first day.run (agents called), day.runs of the next days with every agent's
   signal fresh in the cache (no agent call: "cached day.run"), the same day again (answered by the session
   already planned: "repeated day.run"), a day.done per session, then `--status` status calls; p50/p99 of each,
   closed loop from one client. intent.sync and day.done answer once the event is on the log; day.run once its
   plan is in the events archive.
2. cache hit rate: 100 learners (`--week-learners`) over 7 simulated days, each running one day a day at a
   random hour (20 % of them also a forced re-run a few hours later), through the real fold and the real
   signals effect (HTTP to the fake agents, clock and event times simulated), with the default freshness
   windows (clo 24 h, alex 12 h, ta 6 h, socratic 1 h); each agent's advice changes on its own period
   (clo weekly, alex daily, ta every 2 days, socratic every 6 h), so a stale signal is revalidated with a
   304 until its advice changes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from agents.learning.config import LearningSettings
from agents.learning.effects import SignalsEffect
from agents.learning.fold import FoldConfig, fold
from schemas import new_event
from schemas.learning import (
    DayPlanned,
    DayRequested,
    IntentSnapshot,
    IntentSynced,
    SignalsRequested,
)
from streams.auth import issue_token
from streams.embedded import EmbeddedBroker, EmbeddedPostgres
from streams.runtime import Runtime
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
AGENTS = ("clo", "alex", "ta", "socratic")
# How often each agent's advice changes (simulated seconds).
PERIODS = {"clo": 7 * 86400, "alex": 86400, "ta": 2 * 86400, "socratic": 6 * 3600}
INTENT = {"topic": "Machine Learning", "depth": "informed", "end_goal": "Build production ML models",
          "time_per_day_min": 60, "user_tz": "America/New_York"}


class VersionedAgents:
    """Every agent at /<name>: advice versioned by simulated time, ETag per version, 304 when unchanged."""

    def __init__(self) -> None:
        self.now = lambda: time.time()
        self.answers: Counter[str] = Counter()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                agent = self.path.strip("/")
                version = int(fake.now() // PERIODS[agent])
                etag = f'"{agent}-{version}"'
                if self.headers.get("If-None-Match") == etag:
                    fake.answers["304"] += 1
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                fake.answers["200"] += 1
                body = json.dumps({"ok": True, "data": {"focus": f"{agent} v{version}",
                                                        "steps": [f"{agent} step {version}"]}}).encode()
                self.send_response(200)
                self.send_header("ETag", etag)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def env(self) -> str:
        return ",".join(f"{a}=http://127.0.0.1:{self._server.server_address[1]}/{a}" for a in AGENTS)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered), p99


def timed(samples: list[float], call) -> httpx.Response:
    started = time.perf_counter()
    response = call()
    samples.append((time.perf_counter() - started) * 1000)
    assert response.status_code == 200, response.text
    return response


def latency(args: argparse.Namespace, agents: VersionedAgents, tmp: Path) -> dict[str, list[float]]:
    broker = EmbeddedBroker().start(tmp / "broker.log")
    postgres = EmbeddedPostgres(tmp / "pgdata").start()
    run = uuid.uuid4().hex[:8]
    os.environ.update({"BATON_LEARNING_AGENTS": agents.env, "BATON_LEARNING_RATE_PER_S": "100000",
                       "BATON_LEARNING_BURST": "100000", "BATON_LEARNING_DEFAULT_FRESHNESS_S": "86400",
                       "BATON_LEARNING_FRESHNESS_S": "", "BATON_QUERY_RATE_PER_S": "100000",
                       "BATON_QUERY_BURST": "100000", "BATON_INGEST_RATE_PER_S": "100000",
                       "BATON_INGEST_BURST": "100000"})
    settings = Settings(kafka_bootstrap_servers=broker.bootstrap_servers,
                        database_url=postgres.fresh_database("bench_learning"), broker_profile="embedded",
                        app_id=f"bench-{run}", topic_prefix=f"bench-{run}.", tenants_file=ROOT / "examples" / "tenants.toml",
                        data_dir=tmp / "runtime", api_port=0)
    samples: dict[str, list[float]] = {k: [] for k in ("intent.sync", "first day.run", "cached day.run",
                                                       "repeated day.run", "day.done", "status")}
    try:
        with Runtime(settings).start() as runtime:
            for i in range(args.learners):
                token = issue_token(settings, "acme", subject=f"bench-{i}")
                with httpx.Client(base_url=runtime.api_url, timeout=60,
                                  headers={"Authorization": f"Bearer {token}"}) as api:
                    timed(samples["intent.sync"], lambda: api.post("/v1/learning/intent.sync", json=INTENT))
                    sessions = []
                    for day in range(1, args.days + 1):
                        kind = "first day.run" if day == 1 else "cached day.run"
                        plan = timed(samples[kind], lambda d=day: api.post(
                            "/v1/learning/day.run", json={"week": 1, "day": d})).json()
                        assert day == 1 or plan["cache_hits"] == len(AGENTS), plan
                        sessions.append(plan["session_id"])
                        timed(samples["repeated day.run"], lambda d=day: api.post(
                            "/v1/learning/day.run", json={"week": 1, "day": d}))
                    for session_id in sessions:
                        timed(samples["day.done"], lambda s=session_id: api.post("/v1/learning/day.done", json={
                            "session_id": s, "completion_time_min": 40, "confidence": 7}))
            token = issue_token(settings, "acme", subject="bench-0")
            with httpx.Client(base_url=runtime.api_url, timeout=60,
                              headers={"Authorization": f"Bearer {token}"}) as api:
                for _ in range(args.status):
                    timed(samples["status"], lambda: api.get("/v1/learning/status"))
    finally:
        postgres.stop()
        broker.stop()
    return samples


async def simulated_week(learners: int, agents: VersionedAgents) -> tuple[Counter[str], Counter[tuple[str, str]]]:
    """Hit and miss counts (overall and per agent status) over 7 simulated days through the fold and effect."""
    start = datetime(2026, 11, 2, 5, 0, tzinfo=UTC)
    clock = {"now": start}
    agents.now = lambda: clock["now"].timestamp()
    effect = SignalsEffect(Settings(), LearningSettings(agents=agents.env), clock=lambda: clock["now"])
    config = FoldConfig()
    rng = random.Random(7)
    schedule: list[tuple[datetime, int, int, bool]] = []
    for learner in range(learners):
        rerun = rng.random() < 0.2
        for day in range(7):
            at = start + timedelta(days=day, hours=rng.uniform(0, 16))
            schedule.append((at, learner, day + 1, False))
            if rerun:
                schedule.append((at + timedelta(hours=rng.uniform(2, 6)), learner, day + 1, True))
    states: dict[int, Any] = {}
    totals: Counter[str] = Counter()
    statuses: Counter[tuple[str, str]] = Counter()

    def apply(learner: int, payload: Any, at: datetime) -> list:
        envelope = new_event("acme", payload, event_id=uuid.uuid4(), occurred_at=at, recorded_at=at, actor="bench")
        states[learner], out = fold(states.get(learner), envelope, config)
        return out

    for learner in range(learners):
        intent = IntentSnapshot(intent_id=uuid.uuid4(), **INTENT)
        apply(learner, IntentSynced(learner=f"l{learner}", intent=intent), start)
    for at, learner, day, force in sorted(schedule):
        clock["now"] = at
        (ask,) = apply(learner, DayRequested(learner=f"l{learner}", week=1, day=day, force_refresh=force), at)
        assert isinstance(ask.payload, SignalsRequested)
        for result in await effect.run(ask):
            states[learner], _ = fold(states[learner], result, config)
            if isinstance(result.payload, DayPlanned):
                totals["hits"] += result.payload.cache_hits
                totals["misses"] += result.payload.cache_misses
                for signal in result.payload.signals:
                    statuses[(signal.agent, signal.status)] += 1
    await effect.aclose()
    return totals, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", type=int, default=20, help="learners in the latency run")
    parser.add_argument("--days", type=int, default=5, help="day runs per learner in the latency run")
    parser.add_argument("--status", type=int, default=500, help="status calls in the latency run")
    parser.add_argument("--week-learners", type=int, default=100, help="learners in the simulated week")
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    agents = VersionedAgents()
    try:
        totals, statuses = asyncio.run(simulated_week(args.week_learners, agents))
        runs = (totals["hits"] + totals["misses"]) // len(AGENTS)
        rate = totals["hits"] / (totals["hits"] + totals["misses"])
        print(f"simulated week: {args.week_learners} learners, {runs} day runs, {totals['hits'] + totals['misses']}"
              f" agent signals: cache hit rate {rate:.1%}")
        for agent in AGENTS:
            count = {status: statuses[(agent, status)] for status in ("cached", "not_modified", "fetched", "failed")}
            hit = (count["cached"] + count["not_modified"]) / max(1, sum(count.values()))
            print(f"  {agent:<9} advice changes every {PERIODS[agent] / 3600:>5.0f} h: hit rate {hit:6.1%}"
                  f" (fresh in cache {count['cached']}, 304 {count['not_modified']}, fetched {count['fetched']},"
                  f" failed {count['failed']})")
        if args.skip_latency:
            return
        agents.now = time.time
        with tempfile.TemporaryDirectory(prefix="bench-learning-") as tmp:
            samples = latency(args, agents, Path(tmp))
        print(f"{'call':<18} {'n':>5} {'p50 ms':>8} {'p99 ms':>8}")
        for name, values in samples.items():
            p50, p99 = percentiles(values)
            print(f"{name:<18} {len(values):>5} {p50:>8.1f} {p99:>8.1f}")
    finally:
        agents.close()


if __name__ == "__main__":
    main()
