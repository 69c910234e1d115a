"""Reference Faust agents for the benchmark: naive `table[key] += 1` and a bare stream iteration.

Run as a child process: python -m bench.faust_baselines MODE BOOTSTRAP TOPIC N PARTITIONS
Prints one JSON line {"mode", "events", "seconds", "events_per_s"} measured from the first
to the N-th event, then exits. BENCH_LOGLEVEL (default "error") is the Faust worker's log level: at
"warn" or above Faust's spinner sets the root logger to DEBUG, so every aiokafka/faust debug() call
builds a LogRecord; "info" avoids that, as `baton worker` does with its default log level.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

import faust
from faust.worker import Worker


def main() -> None:
    mode, bootstrap, topic_name, total, partitions = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    app = faust.App(
        f"bench-{mode}-{uuid.uuid4().hex[:6]}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        processing_guarantee="at_least_once",
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        topic_disable_leader=True,
        web_enabled=False,
        datadir=f"/tmp/bench-faust-{os.getpid()}",
    )
    topic = app.topic(topic_name, key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw", partitions=partitions)
    counts = app.Table("counts", default=int, partitions=partitions)
    seen = {"n": 0, "t0": 0.0}

    def tick() -> None:
        if seen["n"] == 0:
            seen["t0"] = time.perf_counter()
        seen["n"] += 1
        if seen["n"] == total:
            elapsed = time.perf_counter() - seen["t0"]
            print(json.dumps({"mode": mode, "events": total, "seconds": round(elapsed, 3),
                              "events_per_s": round(total / elapsed)}), flush=True)
            os._exit(0)

    if mode == "naive":
        @app.agent(topic, concurrency=1)
        async def naive(stream: faust.StreamT) -> None:
            async for event in stream.events():
                counts[event.key.decode()] += 1
                tick()
    else:
        @app.agent(topic, concurrency=1)
        async def bare(stream: faust.StreamT) -> None:
            async for _event in stream.events():
                tick()

    loglevel = os.environ.get("BENCH_LOGLEVEL", "error")
    Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
