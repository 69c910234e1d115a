"""The real projector as a benchmark child, timing every batch; stands in for `baton projector`.

Run with the Baton settings in the environment (settings_env) plus BENCH_PROJECTOR_OUT=path.
On SIGTERM/SIGINT it stops cleanly and writes one JSON list to that path, one entry per batch:
[wall_end, records, events_inserted, sessions_upserted, total_s, events_sql_s, sessions_sql_s, offsets_sql_s]
total_s covers _project: decoding rows, the three statements and the commit; the *_sql_s are awaited
statement times (round trip to PostgreSQL including its work).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

from projections import projector
from streams.settings import Settings

BATCHES: list[list[float]] = []
_current: dict[str, float] = {}


def _timed(name: str, function):
    async def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return await function(*args, **kwargs)
        finally:
            _current[name] = _current.get(name, 0.0) + time.perf_counter() - start
    return wrapper


def main() -> None:
    settings = Settings()
    out = os.environ["BENCH_PROJECTOR_OUT"]
    # run_projector reaches these through module globals: wrap them without touching the projector.
    project = projector._project
    projector.write_events = _timed("events", projector.write_events)
    projector.write_rows = _timed("sessions", projector.write_rows)
    projector.write_offsets = _timed("offsets", projector.write_offsets)

    async def timed_project(*args, **kwargs):
        _current.clear()
        start = time.perf_counter()
        report = await project(*args, **kwargs)
        BATCHES.append([
            time.time(), report.records, report.events, report.rows, time.perf_counter() - start,
            _current.get("events", 0.0), _current.get("sessions", 0.0), _current.get("offsets", 0.0),
        ])
        return report

    projector._project = timed_project
    projector.tune_process(settings)

    async def until_signalled() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await projector.run_projector(settings, stop)

    try:
        asyncio.run(until_signalled())
    finally:
        with open(out, "w") as fh:
            json.dump(BATCHES, fh)


if __name__ == "__main__":
    main()
