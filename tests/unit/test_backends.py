"""Which broker, PostgreSQL and broker profile the test suite picks for an environment (tests.backends)."""

from __future__ import annotations

import pytest

from tests.backends import Backends, choose

KAFKA = {"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"}
POSTGRES = {"DATABASE_URL": "postgresql://db/baton"}
NO_ENGINE = "no Docker engine reachable: Error while fetching server API version"


def reachable() -> None:
    return None


def unreachable() -> str:
    return NO_ENGINE


def never_probed() -> None:
    raise AssertionError("Docker was probed although the environment names both services")


def test_without_docker_everything_is_embedded_and_the_output_says_why() -> None:
    chosen = choose({}, unreachable)
    assert chosen == Backends("embedded", "embedded", "embedded", f"testcontainers not used: {NO_ENGINE}")
    assert chosen.describe() == (
        "baton test backends: broker embedded Tansu, PostgreSQL embedded PostgreSQL, broker profile embedded"
        f" (testcontainers not used: {NO_ENGINE})"
    )


def test_with_docker_kafka_and_postgres_come_from_testcontainers_in_the_kafka_profile() -> None:
    chosen = choose({}, reachable)
    assert (chosen.broker, chosen.postgres, chosen.profile) == ("testcontainers", "testcontainers", "kafka")
    assert "(KRaft) via testcontainers" in chosen.describe()
    assert "broker profile kafka" in chosen.describe()


def test_services_named_by_the_environment_win_and_docker_is_not_probed() -> None:
    chosen = choose({**KAFKA, **POSTGRES}, never_probed)
    assert chosen == Backends("environment", "environment", "kafka", "")
    assert chosen.describe().endswith("broker KAFKA_BOOTSTRAP_SERVERS, PostgreSQL DATABASE_URL, broker profile kafka")


@pytest.mark.parametrize(
    ("env", "probe", "broker", "postgres", "profile"),
    [
        (KAFKA, reachable, "environment", "testcontainers", "kafka"),
        (KAFKA, unreachable, "environment", "embedded", "kafka"),
        (POSTGRES, reachable, "testcontainers", "environment", "kafka"),
        (POSTGRES, unreachable, "embedded", "environment", "embedded"),
    ],
)
def test_each_service_is_chosen_on_its_own(env, probe, broker, postgres, profile) -> None:
    chosen = choose(env, probe)
    assert (chosen.broker, chosen.postgres, chosen.profile) == (broker, postgres, profile)


@pytest.mark.parametrize("off", ["0", "false", "OFF", " no "])
def test_testcontainers_can_be_switched_off_where_docker_runs(off: str) -> None:
    chosen = choose({"BATON_TESTCONTAINERS": off}, never_probed)
    assert (chosen.broker, chosen.postgres, chosen.profile) == ("embedded", "embedded", "embedded")
    assert chosen.describe().endswith("(testcontainers off: BATON_TESTCONTAINERS=0)")


def test_an_explicit_profile_wins_e_g_for_a_running_baton_dev_broker() -> None:
    chosen = choose({**KAFKA, "BATON_BROKER_PROFILE": "embedded"}, unreachable)
    assert (chosen.broker, chosen.profile) == ("environment", "embedded")
    assert choose({"BATON_BROKER_PROFILE": "kafka"}, reachable).profile == "kafka"


def test_an_unknown_profile_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="BATON_BROKER_PROFILE='tansu': expected one of embedded, kafka"):
        choose({"BATON_BROKER_PROFILE": "tansu"}, unreachable)


def test_topics_on_apache_kafka_keep_the_log_and_compact_changelogs():
    from streams.settings import Settings
    from streams.topics import all_topics, topic_configs

    kafka, embedded = Settings(broker_profile="kafka"), Settings()
    configs = {name: topic_configs(kafka, name) for name in all_topics(kafka)}
    assert configs["baton.conversations"] == {"retention.ms": "-1", "retention.bytes": "-1"}
    assert configs["baton.deadletter"] == {"retention.ms": "-1", "retention.bytes": "-1"}
    assert configs["baton-sessions-changelog"] == {"cleanup.policy": "compact"}
    assert all(topic_configs(embedded, name) == {} for name in all_topics(embedded))


def test_the_kafka_lane_starts_local_apache_kafka_and_names_its_version() -> None:
    from streams.local_kafka import KAFKA_VERSION

    chosen = choose({"BATON_TEST_BROKER": "kafka"}, unreachable)
    assert (chosen.broker, chosen.postgres, chosen.profile) == ("local-kafka", "embedded", "kafka")
    assert f"broker Apache Kafka {KAFKA_VERSION} (KRaft, started by the tests)" in chosen.describe()
    assert choose({"BATON_TEST_BROKER": "kafka", **KAFKA}, unreachable).broker == "environment"


def test_an_unknown_test_broker_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="BATON_TEST_BROKER='redpanda': expected one of embedded, kafka"):
        choose({"BATON_TEST_BROKER": "redpanda"}, unreachable)
