"""The Faust app: broker profile, topics and tables; agents register themselves on it."""

from __future__ import annotations

import faust
from faust.transport.drivers import aiokafka as faust_kafka

from streams.settings import Settings
from streams.topics import changelog_topic


class _ConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: faust_kafka.Transport):
        consumer = super()._create_worker_consumer(transport)
        # Faust hard-codes a 1500 ms fetch wait; Tansu answers a parked fetch only when it expires.
        consumer._fetch_max_wait_ms = self.app.fetch_wait_ms
        return consumer


class _Consumer(faust_kafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_kafka.Transport):
    Consumer = _Consumer


class BatonApp(faust.App):
    """A Faust app whose consumer honours the configured fetch wait."""

    fetch_wait_ms: int = 500

    def _new_transport(self) -> _Transport:
        return _Transport(self.conf.broker_consumer, self)


def create_app(settings: Settings) -> faust.App:
    """A Faust app configured for the broker profile (DESIGN.md: embedded broker facts)."""
    embedded = {
        # One record per batch: Tansu's high watermark undercounts multi-record batches,
        # and table recovery reads changelogs only up to it.
        "producer_max_batch_size": 1,
        "producer_linger": 0.0,
        "producer_acks": 1,
        "broker_session_timeout": 6.0,
        "broker_heartbeat_interval": 1.0,
        "broker_rebalance_timeout": 10.0,
    }
    app = BatonApp(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store="memory://",
        processing_guarantee="at_least_once",
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        table_standby_replicas=0,
        datadir=str(settings.data_dir / "worker"),
        **(embedded if settings.embedded else {"producer_linger": 0.005, "producer_acks": -1}),
    )
    app.fetch_wait_ms = settings.fetch_wait_ms
    return app


def domain_topic(app: faust.App, settings: Settings, domain: str) -> faust.TopicT:
    """A domain topic with raw bytes keys and values (the codec decodes them)."""
    return app.topic(
        settings.topic(domain),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
    )


def raw_table(app: faust.App, settings: Settings, name: str) -> faust.Table:
    """A table of encoded bytes keyed by the stream id's bytes, co-partitioned with the domain topics."""
    # Raw bytes keys: the changelog key must equal the source record's key for partitioning.
    table = app.Table(
        name,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.topic_partitions,
        use_partitioner=True,
    )
    assert table.changelog_topic.get_topic_name() == changelog_topic(settings, name)
    return table
