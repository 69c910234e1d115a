"""Shared fixtures: the broker and PostgreSQL the environment names, else local Apache Kafka (BATON_TEST_BROKER=kafka),
else Docker's (testcontainers), else embedded."""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from secrets import token_urlsafe

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr

from streams.embedded import EmbeddedBroker, EmbeddedPostgres
from streams.local_kafka import LocalKafka, LocalKafkaError, classpath, find_java
from streams.settings import Settings
from tests.backends import KAFKA_IMAGE, POSTGRES_IMAGE, Backends, choose

ROOT = Path(__file__).resolve().parent.parent


def _docker_unavailable() -> str | None:
    """Why testcontainers cannot reach a Docker engine, or None when it can."""
    try:
        from docker.errors import DockerException
        from testcontainers.core.docker_client import DockerClient
    except ImportError as exc:
        return f"{exc.name} is not installed"
    try:
        DockerClient(timeout=5).client.ping()
    except DockerException as exc:
        return f"no Docker engine reachable: {exc}"
    return None


@functools.cache
def backends() -> Backends:
    """The backends of this test session, chosen once (tests.backends)."""
    return choose(os.environ, _docker_unavailable)


def pytest_sessionstart(session: pytest.Session) -> None:
    """The Apache Kafka lane needs java and the broker's jars: without them it is skipped with one line saying why,
    or fails when BATON_REQUIRE_KAFKA is set (as in CI)."""
    if backends().broker != "local-kafka":
        return
    try:
        find_java()
        classpath()
    except LocalKafkaError as exc:
        if os.environ.get("BATON_REQUIRE_KAFKA", "").strip().lower() not in ("", "0", "false", "no", "off"):
            pytest.exit(f"the Apache Kafka lane is required (BATON_REQUIRE_KAFKA) but cannot run: {exc}", returncode=1)
        pytest.exit(f"Apache Kafka lane skipped: {exc}", returncode=0)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Say which backends and broker profile the selected integration tests run on (shown with -q too)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and any(item.get_closest_marker("integration") for item in session.items):
        reporter.write_line(backends().describe())


@pytest.fixture(scope="session")
def bootstrap_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Kafka-protocol broker: KAFKA_BOOTSTRAP_SERVERS, else local Apache Kafka, else Apache Kafka in Docker,
    else an embedded Tansu."""
    source = backends().broker
    if source == "environment":
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    if source == "local-kafka":
        with LocalKafka(tmp_path_factory.mktemp("kafka")).start() as kafka:
            yield kafka.bootstrap_servers
        return
    if source == "testcontainers":
        from testcontainers.community.kafka import KafkaContainer

        kafka = (
            KafkaContainer(KAFKA_IMAGE).with_kraft()
            .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        )
        kafka.start(timeout=120)
        try:
            yield kafka.get_bootstrap_server()
        finally:
            kafka.stop()
        return
    broker = EmbeddedBroker().start(tmp_path_factory.mktemp("tansu") / "tansu.log")
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server: DATABASE_URL, else PostgreSQL in Docker, else an embedded one in a temp directory."""
    source = backends().postgres
    if source == "environment":
        yield os.environ["DATABASE_URL"]
        return
    if source == "testcontainers":
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer(POSTGRES_IMAGE, driver=None) as container:
            yield container.get_connection_url()
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data").start()
    try:
        yield server.url()
    finally:
        server.stop()


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database on the server, dropped afterwards."""
    name = f"baton_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    params = conninfo_to_dict(server_url)
    params["dbname"] = name
    try:
        yield make_conninfo(**params)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    with fresh_database(postgres_server_url) as url:
        yield url


def settings_for(bootstrap_servers: str, database_url: str, data_dir: Path, **overrides: object) -> Settings:
    """Settings of their own topics, consumer groups and database, in the session's broker profile (outside the
    embedded profile with strong secrets of its own, as every production process requires)."""
    run = uuid.uuid4().hex[:8]
    profile = backends().profile
    secrets = {} if profile == "embedded" else {
        name: SecretStr(token_urlsafe(48)) for name in ("jwt_secret", "whatsapp_app_secret", "whatsapp_verify_token")
    }
    return Settings(
        kafka_bootstrap_servers=bootstrap_servers,
        database_url=database_url,
        broker_profile=profile,
        app_id=f"baton-test-{run}",
        topic_prefix=f"test-{run}.",
        topic_partitions=2,
        tenants_file=ROOT / "examples" / "tenants.toml",
        data_dir=data_dir,
        **secrets,
    ).model_copy(update=overrides)


@pytest.fixture
def settings(bootstrap_servers: str, database_url: str, tmp_path: Path) -> Settings:
    """Settings for one test: its own topics, consumer groups and database."""
    return settings_for(bootstrap_servers, database_url, tmp_path / "baton")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/integration carries the integration marker (`-m "not integration"` is the fast lane)."""
    integration = ROOT / "tests" / "integration"
    for item in items:
        if item.path.resolve().is_relative_to(integration):
            item.add_marker(pytest.mark.integration)
