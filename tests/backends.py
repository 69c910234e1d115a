"""Which broker and PostgreSQL the tests run on, and in which broker profile (pure: the Docker probe is passed in).

Each service comes from the environment when it names one (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL); else the broker
is local Apache Kafka started by the tests (streams.local_kafka) when BATON_TEST_BROKER=kafka; else either service
comes from testcontainers when a Docker engine is reachable (and BATON_TESTCONTAINERS is not 0), else embedded. The
broker profile is `embedded` on the embedded broker and `kafka` on any other, unless BATON_BROKER_PROFILE says
otherwise (e.g. KAFKA_BOOTSTRAP_SERVERS pointing at a running `baton dev`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

Source = Literal["environment", "local-kafka", "testcontainers", "embedded"]
Profile = Literal["embedded", "kafka"]

KAFKA_IMAGE = "confluentinc/cp-kafka:7.7.1"
POSTGRES_IMAGE = "postgres:16"
PROFILES: tuple[Profile, ...] = ("embedded", "kafka")
TEST_BROKERS = ("embedded", "kafka")
OFF = {"0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class Backends:
    """Where the broker and PostgreSQL come from, the broker profile, and why Docker was or was not used."""

    broker: Source
    postgres: Source
    profile: Profile
    docker: str

    def describe(self) -> str:
        """One line for the test output."""
        from streams.local_kafka import KAFKA_VERSION

        broker = {
            "environment": "KAFKA_BOOTSTRAP_SERVERS",
            "local-kafka": f"Apache Kafka {KAFKA_VERSION} (KRaft, started by the tests)",
            "testcontainers": f"Apache Kafka {KAFKA_IMAGE} (KRaft) via testcontainers",
            "embedded": "embedded Tansu",
        }[self.broker]
        postgres = {
            "environment": "DATABASE_URL",
            "testcontainers": f"{POSTGRES_IMAGE} via testcontainers",
            "embedded": "embedded PostgreSQL",
        }[self.postgres]
        line = f"baton test backends: broker {broker}, PostgreSQL {postgres}, broker profile {self.profile}"
        return f"{line} ({self.docker})" if self.docker else line


def choose(env: Mapping[str, str], docker_unavailable: Callable[[], str | None]) -> Backends:
    """The backends for this environment; `docker_unavailable()` says why no engine can be used (None: it can)
    and is called only when a service is not named by the environment."""
    named_broker, named_postgres = bool(env.get("KAFKA_BOOTSTRAP_SERVERS")), bool(env.get("DATABASE_URL"))
    test_broker = env.get("BATON_TEST_BROKER", "").strip().lower() or "embedded"
    if test_broker not in TEST_BROKERS:
        raise ValueError(f"BATON_TEST_BROKER={test_broker!r}: expected one of {', '.join(TEST_BROKERS)}")
    local_kafka = test_broker == "kafka" and not named_broker
    docker, use_docker = "", False
    if not ((named_broker or local_kafka) and named_postgres):
        if env.get("BATON_TESTCONTAINERS", "").strip().lower() in OFF:
            docker = "testcontainers off: BATON_TESTCONTAINERS=0"
        elif (reason := docker_unavailable()) is not None:
            docker = f"testcontainers not used: {reason}"
        else:
            use_docker = True
    fallback: Source = "testcontainers" if use_docker else "embedded"
    broker: Source = "environment" if named_broker else "local-kafka" if local_kafka else fallback
    postgres: Source = "environment" if named_postgres else fallback
    profile = env.get("BATON_BROKER_PROFILE") or ("embedded" if broker == "embedded" else "kafka")
    if profile not in PROFILES:
        raise ValueError(f"BATON_BROKER_PROFILE={profile!r}: expected one of {', '.join(PROFILES)}")
    return Backends(broker, postgres, profile, docker)
