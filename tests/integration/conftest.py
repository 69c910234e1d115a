"""Integration fixtures: Baton's real processes (worker, projector, API) on the test broker and database."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from streams.auth import issue_token
from streams.runtime import Runtime
from streams.settings import Settings
from streams.tenants import Tenant, load_tenants
from tests.conftest import fresh_database, settings_for

T = TypeVar("T")


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    """Worker, projector and API as child processes, as `baton dev` runs them but never restarted.

    The API gets any free port (moved if it is taken meanwhile); a failed start stops what it started.
    """
    with Runtime(settings.model_copy(update={"api_port": 0})).start() as runtime:
        yield runtime


@contextmanager
def module_runtime(bootstrap_servers: str, postgres_server_url: str, data_dir: Path,
                   **overrides: object) -> Iterator[Runtime]:
    """A runtime with a database of its own, shared by the tests of one module (any free API port)."""
    with fresh_database(postgres_server_url) as url, Runtime(
            settings_for(bootstrap_servers, url, data_dir, api_port=0, **overrides)).start() as running:
        yield running


@pytest.fixture
def acme(settings: Settings) -> Tenant:
    return load_tenants(settings.tenants_file).by_id["acme"]


@pytest.fixture
def api(runtime: Runtime) -> Iterator[httpx.Client]:
    """An HTTP client for the running API, authenticated as tenant acme."""
    token = issue_token(runtime.settings, "acme")
    with httpx.Client(base_url=runtime.api_url, timeout=10, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


async def produce_records(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    """Write raw (key, value) records to a topic, bypassing every check of Baton's publishers."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def eventually(probe: Callable[[], T | None], what: str, within_s: float = 60.0) -> T:
    """Poll probe until it returns something truthy; fail naming what never happened."""
    deadline = time.monotonic() + within_s
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {within_s:.0f} s (last probe: {last!r})")
