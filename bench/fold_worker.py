"""The real conversation worker (fold agent + effect runner) as a benchmark child, reporting its fold rate.

Run as a child process with the Baton settings in the environment (settings_env) plus:
  BENCH_EXPECT=N          records pre-loaded on the conversations topic
  BENCH_IDLE_S=3          report the whole run once no batch has been folded for this long
  BENCH_PROFILE=path      optional: cProfile from the first folded batch to the N-th record, dumped to path
  BENCH_GC=default        optional: leave the garbage collector as Python sets it (the worker tunes it)

Prints three JSON lines and exits:
  {"phase": "started", "pid": ...} after the first folded batch (a profiler can attach now)
  {"phase": "preloaded", ...}  records folded from the end of the first batch until N were folded
                               (the pre-loaded records sit first on every partition)
  {"phase": "all", ...}        everything the fold consumed: the pre-loaded records plus what the fold and
                               the effects logged (session.started, message.answered)
Each carries the batch count, mean batch size and the time spent inside fold_batch (pure fold + decode).
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import os
import time

from faust.worker import Worker

from agents import streaming
from streams.app import create_app
from streams.registry import load_domains
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.worker import tune_gc_after_start


class Meter:
    """Counts folded records per batch; the timings are taken around each on_fold call."""

    def __init__(self, expect: int, profile_path: str | None) -> None:
        self.expect = expect
        self.count = 0
        self.batches = 0
        self.first_batch = 0
        self.t0 = 0.0
        self.cpu0 = 0.0
        self.last = 0.0
        self.fold_s = 0.0
        self.preloaded: dict | None = None
        self.profile_path = profile_path
        self.profiler = cProfile.Profile() if profile_path else None

    def on_fold(self, n: int) -> None:
        now = time.perf_counter()
        if self.batches == 0:
            self.t0, self.first_batch, self.cpu0 = now, n, time.process_time()
            print(json.dumps({"phase": "started", "pid": os.getpid(), "first_batch": n}), flush=True)
            if self.profiler:
                self.profiler.enable()
        self.batches += 1
        self.count += n
        self.last = now
        if self.preloaded is None and self.count >= self.expect:
            if self.profiler:
                self.profiler.disable()
                self.profiler.dump_stats(self.profile_path)
            self.preloaded = self.report("preloaded")
            print(json.dumps(self.preloaded), flush=True)

    def report(self, phase: str) -> dict:
        elapsed = max(self.last - self.t0, 1e-9)
        events = self.count - self.first_batch  # the first batch ends at t0
        return {
            "phase": phase, "events": self.count, "timed_events": events, "seconds": round(elapsed, 3),
            "events_per_s": round(events / elapsed), "batches": self.batches,
            "mean_batch": round(self.count / self.batches, 1), "fold_batch_s": round(self.fold_s, 3),
            "cpu_s": round(time.process_time() - self.cpu0, 3),
        }


def main() -> None:
    settings = Settings()
    meter = Meter(int(os.environ["BENCH_EXPECT"]), os.environ.get("BENCH_PROFILE") or None)
    idle_s = float(os.environ.get("BENCH_IDLE_S", "3"))

    # streaming.py calls fold_batch through its module global: time it without touching the agent.
    fold_batch = streaming.fold_batch

    def timed_fold_batch(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fold_batch(*args, **kwargs)
        finally:
            meter.fold_s += time.perf_counter() - start

    streaming.fold_batch = timed_fold_batch

    asyncio.run(ensure_topics(settings))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.set_event_loop(asyncio.new_event_loop())
    app = create_app(settings)
    for domain in load_domains(settings):
        streaming.register_domain(app, settings, domain, on_fold=meter.on_fold)

    if os.environ.get("BENCH_GC", "tuned") == "tuned":
        tune_gc_after_start(app)

    @app.timer(0.25)
    async def finish() -> None:
        if meter.preloaded is not None and time.perf_counter() - meter.last >= idle_s:
            print(json.dumps(meter.report("all")), flush=True)
            await asyncio.sleep(0.5)  # the parent reads this process's CPU time before it goes
            os._exit(0)

    # As run_worker does: with the default "info" Faust keeps the root logger at INFO (see faust_baselines).
    Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
