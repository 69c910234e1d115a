"""Shared fixtures: the embedded broker and PostgreSQL (or the real ones named by the environment)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from streams.embedded import EmbeddedBroker, EmbeddedPostgres
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def bootstrap_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Kafka-protocol broker: KAFKA_BOOTSTRAP_SERVERS when set, else an embedded Tansu."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    broker = EmbeddedBroker().start(tmp_path_factory.mktemp("tansu") / "tansu.log")
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server: DATABASE_URL when set, else an embedded one in a temp directory."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data").start()
    try:
        yield server.url()
    finally:
        server.stop()


@pytest.fixture
def database_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"baton_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(postgres_server_url)
    params["dbname"] = name
    yield make_conninfo(**params)
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(bootstrap_servers: str, database_url: str, tmp_path: Path) -> Settings:
    """Settings for one test: its own topics, consumer groups and database."""
    run = uuid.uuid4().hex[:8]
    profile = "kafka" if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else "embedded"
    return Settings(
        kafka_bootstrap_servers=bootstrap_servers,
        database_url=database_url,
        broker_profile=profile,
        app_id=f"baton-test-{run}",
        topic_prefix=f"test-{run}.",
        topic_partitions=2,
        tenants_file=ROOT / "examples" / "tenants.toml",
        data_dir=tmp_path / "baton",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/integration carries the integration marker (`-m "not integration"` is the fast lane)."""
    integration = ROOT / "tests" / "integration"
    for item in items:
        if item.path.resolve().is_relative_to(integration):
            item.add_marker(pytest.mark.integration)
