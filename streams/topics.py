"""Topic names and explicit creation (the embedded broker must never auto-create)."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from schemas import DOMAINS
from streams.settings import Settings

# Faust tables of the worker; their changelogs are co-partitioned with the domain topics.
TABLES: tuple[str, ...] = ("sessions", "effects")


def changelog_topic(settings: Settings, table: str) -> str:
    """The changelog topic Faust writes for one of the worker's tables."""
    return f"{settings.app_id}-{table}-changelog"


def all_topics(settings: Settings) -> list[str]:
    """Every topic Baton uses, domain topics first."""
    return (
        [settings.topic(domain) for domain in DOMAINS]
        + [settings.deadletter_topic]
        + [changelog_topic(settings, table) for table in TABLES]
    )


async def ensure_topics(settings: Settings) -> list[str]:
    """Create every topic with the configured partitions; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        names = all_topics(settings)
        partitions = {settings.deadletter_topic: 1}
        response = await admin.create_topics(
            [
                NewTopic(name, partitions.get(name, settings.topic_partitions), settings.topic_replication)
                for name in names
            ]
        )
        for name, code, message in _topic_errors(response):
            if code not in (0, TopicAlreadyExistsError.errno):
                raise RuntimeError(f"cannot create topic {name}: error {code} {message}")
        return names
    finally:
        await admin.close()


def _topic_errors(response: object) -> list[tuple[str, int, str | None]]:
    return [(err[0], err[1], err[2] if len(err) > 2 else None) for err in response.topic_errors]  # type: ignore[attr-defined]
