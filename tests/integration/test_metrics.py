"""Every process exposes Prometheus metrics that follow what happened: edge answers, folds, effects, lag."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.runtime import Runtime
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Samples of one /metrics page by (name, sorted labels)."""
    text = httpx.get(url, timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def inbound(n: int) -> dict:
    return {"type": "conversation.message.received", "occurred_at": "2026-12-01T10:00:00Z", "source_id": f"m{n}",
            "payload": {"contact": f"3466600000{n}", "whatsapp_message_id": f"wamid.metrics.{n}",
                        "message_type": "text", "text": "¿Abrís el domingo?"}}


def test_api_worker_and_projector_metrics_follow_the_pipeline(runtime: Runtime, api: httpx.Client) -> None:
    endpoints = json.loads((runtime.settings.data_dir / "metrics.json").read_text())
    assert {"worker", "projector", "api"} <= endpoints.keys()
    assert api.post("/v1/events", json={"events": [inbound(n) for n in range(3)]}).status_code == 202
    assert api.post("/v1/events", json={"type": "no.such.type"}).status_code == 422
    assert httpx.get(f"{runtime.api_url}/v1/conversations").status_code == 401

    edge = scrape(endpoints["api"])
    assert total(edge, "baton_edge_requests_total", route="/v1/events", status="202") == 1
    assert total(edge, "baton_edge_rejections_total", route="/v1/events", reason="invalid") == 1
    assert total(edge, "baton_edge_rejections_total", route="/v1/conversations", reason="unauthenticated") == 1

    def worker_done():
        samples = scrape(endpoints["worker"])
        # 3 messages, their sessions and one-run outcomes (routed, answered, sent) folded; the routing requests
        # run unlogged.
        return (total(samples, "baton_effects_total", type="conversation.routing.requested", outcome="ok") == 3
                and total(samples, "baton_events_folded_total", domain="conversations") == 3 * 3 and samples)

    worker = eventually(worker_done, "three replies sent and their outcomes folded, as the worker's metrics tell")
    assert total(worker, "baton_effect_seconds_count", type="conversation.routing.requested") >= 1
    assert total(worker, "baton_dead_letters_total") == 0
    lag = eventually(lambda: (s := scrape(endpoints["worker"])) and any(
        n == "baton_consumer_lag" for n, _ in s) and s, "the worker's lag exported")
    assert all(v >= 0 for (n, _), v in lag.items() if n == "baton_consumer_lag")

    def worker_lag():
        samples = {dict(ls)["topic"]: v for (n, ls), v in scrape(endpoints["worker"]).items()
                   if n == "baton_consumer_lag"}
        return samples if samples and all(v == 0 for v in samples.values()) else None

    # Caught up and idle: 0 on every partition the worker commits; changelogs (never committed) are not lag.
    caught_up = eventually(worker_lag, "the idle worker's lag at 0")
    assert runtime.settings.topic("conversations") in caught_up
    assert not [topic for topic in caught_up if topic.endswith("-changelog")], caught_up

    projector = eventually(lambda: (s := scrape(endpoints["projector"]))
                           and total(s, "baton_projector_records_total") >= 3 and s, "the projector's metrics")
    assert total(projector, "baton_projector_batch_seconds_count") >= 1
    assert any(n == "baton_consumer_lag" and dict(ls)["consumer"] == "projector" for n, ls in projector)
