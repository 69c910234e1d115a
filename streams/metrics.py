"""Prometheus metrics of every Baton process: the API serves them at /metrics, the worker and projector on
BATON_METRICS_PORT. Names and labels are listed in the README ("Operating Baton")."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

from schemas import Envelope

log = structlog.get_logger(__name__)

EDGE_REQUESTS = Counter("baton_edge_requests_total", "HTTP requests answered at the edge.",
                        ["route", "method", "status"])
EDGE_REJECTIONS = Counter("baton_edge_rejections_total", "HTTP requests refused (4xx/5xx), by reason.",
                          ["route", "reason"])
FOLDED = Counter("baton_events_folded_total", "Records folded by a domain's fold agent.", ["domain"])
REROUTED = Counter("baton_records_rerouted_total",
                   "Domain records found on another partition than their key's, forwarded to it, by producer (actor).",
                   ["domain", "actor"])
DEAD_LETTERS = Counter("baton_dead_letters_total", "Records sent to the dead-letter topic.", ["stage", "reason"])
EFFECTS = Counter("baton_effects_total", "Effect requests run, by outcome (ok; error: raised, dead-lettered; unknown: started before a crash).",
                  ["domain", "type", "outcome"])
EFFECT_SECONDS = Histogram("baton_effect_seconds", "Duration of one batch's effects of one type.",
                           ["domain", "type"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
PROJECTOR_BATCH_SECONDS = Histogram("baton_projector_batch_seconds", "Time to project one batch (one transaction).",
                                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
PROJECTED = Counter("baton_projector_records_total", "Records projected to PostgreSQL.")
LAG = Gauge("baton_consumer_lag", "Records on the log not yet consumed (fetch high watermark - position).",
            ["consumer", "topic", "partition"])
LLM_TOKENS = Counter("baton_llm_tokens_total", "LLM tokens by kind (input, output, cache_read, cache_write).",
                     ["domain", "model", "kind"])
LLM_COST = Counter("baton_llm_cost_usd_total", "LLM cost in USD from the price table.", ["domain", "model"])

_STATUS_REASONS = {400: "malformed", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method",
                   409: "conflict", 413: "too_large", 415: "media_type", 422: "invalid", 429: "rate_limited",
                   500: "internal", 503: "unavailable"}
_WORD = re.compile(r"[a-z_]+")


def edge_reason(status: int) -> str:
    """The rejection reason of a status code (its class when unnamed)."""
    return _STATUS_REASONS.get(status, f"{status // 100}xx")


def dead_letter_reason(reason: str) -> str:
    """A bounded label for a dead-letter reason: its first word ("decode", "fold", "effect", "key", ...)."""
    word = _WORD.match(reason.lower())
    return word.group() if word else "other"


def observe_dead_letters(stage: str, reasons: Iterable[str]) -> None:
    for reason in reasons:
        DEAD_LETTERS.labels(stage, dead_letter_reason(reason)).inc()


def observe_llm_calls(envelopes: Iterable[Envelope]) -> None:
    """Count the tokens and cost of every cost-ledger event a process publishes."""
    for envelope in envelopes:
        if envelope.type != "llm.call.recorded":
            continue
        call: Any = envelope.payload
        for kind, tokens in (("input", call.input_tokens), ("output", call.output_tokens),
                             ("cache_read", call.cache_read_tokens), ("cache_write", call.cache_write_tokens)):
            if tokens:
                LLM_TOKENS.labels(call.domain, call.model, kind).inc(tokens)
        LLM_COST.labels(call.domain, call.model).inc(call.cost_usd)


_lag_series: dict[str, set[tuple[str, str]]] = {}


def set_lag(consumer: str, lags: dict[tuple[str, int], int], *, complete: bool = False) -> None:
    """Set the lag of a consumer's partitions; complete: these are all of them, so drop the series of any other."""
    series = {(topic, str(partition)) for topic, partition in lags}
    known = _lag_series.setdefault(consumer, set())
    if complete:
        for topic, partition in known - series:
            LAG.remove(consumer, topic, partition)
        known.clear()
    known |= series
    for (topic, partition), lag in lags.items():
        LAG.labels(consumer, topic, str(partition)).set(max(0, lag))


def serve(port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from outside the container
    """Serve /metrics on a port of its own (worker, projector); 0 serves nothing. A taken port is logged, not fatal."""
    if port == 0:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("metrics.port_unavailable", port=port, error=str(exc))


def exposition() -> tuple[bytes, str]:
    """The current metrics in the Prometheus text format, and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST


class EdgeMetrics:
    """ASGI middleware counting every HTTP answer by route template, method and status."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            EDGE_REQUESTS.labels(route, scope["method"], str(status)).inc()
            if status >= 400:
                EDGE_REJECTIONS.labels(route, edge_reason(status)).inc()
