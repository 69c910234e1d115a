"""`baton worker`: the Faust worker running every registered domain's agents."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import faust
import uvloop
from faust.worker import Worker

from agents.streaming import register_domain, worker_log
from streams import metrics
from streams.app import create_app
from streams.liveness import beat_on_timer
from streams.policies import adopt_configured_once_reachable, configured_sections
from streams.process import tune_gc
from streams.registry import load_domains
from streams.settings import Settings
from streams.topics import ensure_topics


def build_worker_app(settings: Settings) -> faust.App:
    """The Faust app with every registered domain's agents."""
    app = create_app(settings)
    for domain in load_domains(settings):
        register_domain(app, settings, domain)
        if domain.agents is not None:
            domain.agents(app, settings)
    log = worker_log(app, settings)

    @app.task
    async def adopt_configured_policy() -> None:
        await adopt_configured_once_reachable(log.policies, configured_sections(settings), log.publish)

    return app


def committed_lag(consumer, changelogs: set[str]) -> dict[tuple[str, int], int]:
    """Lag of each assigned partition the consumer commits: fetch high watermark (exact, also on Tansu) - committed.

    Faust keeps the committed offset as Kafka does, the next record to process (None before the first commit: the
    log start). Changelog partitions are skipped: the consumer reads them to restore tables (their position lives in
    the table's store) and never commits them, so a committed-offset lag of theirs would never reach 0.
    """
    committed = getattr(consumer, "_committed_offset", {})
    log_start = getattr(consumer, "_log_start", {})
    lags = {}
    for tp in consumer.assignment():
        if tp.topic in changelogs or (highwater := consumer.highwater(tp)) is None:
            continue
        done = committed.get(tp)
        lags[(tp.topic, tp.partition)] = highwater - (done if done is not None else log_start.get(tp, 0))
    return lags


def report_lag(app: faust.App, interval_s: float = 5.0) -> None:
    """Export the lag of every assigned partition the worker commits (committed_lag); revoked ones are dropped."""

    @app.timer(interval_s)
    async def consumer_lag() -> None:
        metrics.set_lag("worker", committed_lag(app.consumer, app.tables.changelog_topics), complete=True)


def tune_gc_after_start(app: faust.App) -> None:
    """streams.process.tune_gc once the app has started (its agents and tables exist)."""

    @app.task
    async def freeze_after_start() -> None:
        tune_gc()


WORKER_STOP_GRACE_S = 3.0  # a clean stop takes about 1 s


class _Worker(Worker):
    """Faust's worker; once SIGTERM/SIGINT arrives the process ends within WORKER_STOP_GRACE_S.

    With the broker gone, aiokafka's Fetcher.close() re-raises the cancellation of a fetch that
    sits in its retry backoff; that CancelledError escapes mode's consumer thread, which then
    never reports its shutdown, and Worker.stop() waits for it forever.
    """

    def _schedule_shutdown(self, sig: signal.Signals) -> None:
        if not self._signal_stop_time:
            deadline = threading.Timer(WORKER_STOP_GRACE_S, os._exit, (128 + int(sig),))
            deadline.daemon = True
            deadline.start()
        super()._schedule_shutdown(sig)


def run_worker(settings: Settings) -> None:
    """Create topics, then run the worker until SIGINT/SIGTERM (a stop that hangs is cut short)."""
    asyncio.run(ensure_topics(settings))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    asyncio.set_event_loop(uvloop.new_event_loop())
    app = build_worker_app(settings)
    tune_gc_after_start(app)
    report_lag(app)
    metrics.serve(settings.metrics_port)
    beat_on_timer(app, "worker")
    _Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False).execute_from_commandline()
