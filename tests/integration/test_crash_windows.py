"""Crash windows hit on purpose: a SIGKILL while sends are held in flight, before the worker's first offset
commit, in the middle of projector batches and in the middle of ingest requests."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from projections.projector import CONSUMER, domain_topics, state_changelogs
from schemas import source_event_id
from streams.auth import issue_token
from streams.runtime import Runtime
from streams.settings import Settings
from streams.topics import log_end_offsets
from tests.fixtures.apis import HOLD_LIMIT_S, FakeApis
from tests.fixtures.effects import (
    Replies,
    assert_replies_effectively_once,
    assert_sent_ids_came_from_the_fake,
    graph_identity,
    log_envelopes,
    more_messages,
    publish_envelopes,
    reply_totals,
    runtime_with_fakes,
    started_sends,
)
from tests.fixtures.pipeline import acme_messages, acme_sessions, replay_verify
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 1, tzinfo=UTC)


def _all_answered(settings: Settings, contacts: int, per_contact: int):
    """Probe: every contact's read model shows per_contact replies requested, each sent or failed."""
    def probe():
        totals = reply_totals(settings)
        done = len(totals) == contacts and all(r == per_contact and s + f == per_contact for r, s, f in totals.values())
        return totals if done else None
    return probe


def _committed(settings: Settings) -> dict[TopicPartition, int | None]:
    """The worker group's committed offset per partition of the conversations topic (None: never committed)."""
    async def run() -> dict[TopicPartition, int | None]:
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap_servers, group_id=settings.app_id,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            topic = settings.topic("conversations")
            tps = [TopicPartition(topic, p) for p in range(settings.topic_partitions)]
            return {tp: await consumer.committed(tp) for tp in tps}
        finally:
            await consumer.stop()
    return asyncio.run(run())


def _projector_caught_up(settings: Settings) -> bool:
    """The projector's stored offsets reach the end of every partition it reads."""
    topics = [*domain_topics(settings), *state_changelogs(settings)]  # all created with topic_partitions
    tps = [TopicPartition(t, p) for t in topics for p in range(settings.topic_partitions)]
    ends = asyncio.run(log_end_offsets(settings, tps))
    with psycopg.connect(settings.database_url) as conn:
        stored = {(t, p): o for t, p, o in conn.execute(
            "SELECT topic, partition, next_offset FROM projector_offsets WHERE consumer = %s", (CONSUMER,))}
    return all(stored.get((tp.topic, tp.partition), 0) >= end for tp, end in ends.items())


def _assert_read_models_match_the_log(settings: Settings) -> None:
    """One events row per distinct event id on every domain's topic (none missing, none extra: the routing calls'
    cost events included) and replay --verify clean."""
    eventually(lambda: _projector_caught_up(settings), "projector caught up with the log", within_s=120)
    on_log = Counter(e.event_id for e in log_envelopes(settings, domain_topics(settings)))
    with psycopg.connect(settings.database_url) as conn:
        rows = [event_id for (event_id,) in conn.execute("SELECT event_id FROM events")]
    assert len(rows) == len(set(rows)) == len(on_log), (len(rows), len(set(rows)), len(on_log))
    assert set(rows) == set(on_log)
    report = replay_verify(settings)
    assert report.returncode == 0, report.stdout + report.stderr


@pytest.mark.parametrize("routing", ["model", "rules"])
def test_sends_held_in_flight_at_the_kill_are_reported_unknown_and_never_sent_again(settings: Settings,
                                                                                   routing: str) -> None:
    # With a model the send is a run of its own (reply.requested); with the rules, routing.requested sends in one
    # run (message.answered): either request is recorded on the ledger before it runs.
    no_model = {"anthropic_api_key": None} if routing == "rules" else {}
    contacts = 6
    before = acme_messages(contacts, 1, START)
    # Support messages: each reply names its own ticket, so a send's (to, text) tells which request it answers.
    held_phase = more_messages(contacts, 1, START + timedelta(hours=1), "held", "no funciona mi cafetera")
    after_restart = more_messages(contacts, 1, START + timedelta(hours=2), "after-restart", "no funciona mi cafetera")
    fake = FakeApis()
    try:
        # The worker's Graph API timeout outlasts the hold, so a held send ends only with the kill.
        with runtime_with_fakes(settings, fake, whatsapp_timeout_s=HOLD_LIMIT_S, **no_model).start() as runtime:
            publish_envelopes(runtime.settings, before)
            eventually(_all_answered(runtime.settings, contacts, 1), "first replies sent")
            fake.hold()
            publish_envelopes(runtime.settings, held_phase)

            def frozen():
                # The sends held at the fake are exactly those the worker started (ledger) and has no outcome
                # for: its effect batch waits on them, so nothing else can start or finish until the kill.
                held = fake.in_flight()
                if not held:
                    return None
                replies = Replies.on_log(runtime.settings)
                in_flight = replies.in_flight(started_sends(runtime.settings))
                # Compared by recipient: a one-run request's text is known only from its outcome.
                started = Counter(replies.requested[r].payload.contact for r in in_flight if r in replies.requested)
                held_to: Counter[str] = Counter()
                for (to, _text), n in held.items():
                    held_to[to] += n
                return (held, in_flight) if started == held_to and len(in_flight) == held.total() else None

            held, in_flight = eventually(frozen, "sends held at the fake and nothing else in flight")
            runtime.kill("worker", signal.SIGKILL)
            assert fake.in_flight() == held
            fake.release()  # their answers go nowhere: the worker that waited for them is gone
            runtime.spawn("worker")
            publish_envelopes(runtime.settings, after_restart)
            eventually(_all_answered(runtime.settings, contacts, 3), "every reply sent or failed", within_s=120)
            replies = Replies.on_log(runtime.settings)
            _assert_read_models_match_the_log(runtime.settings)
    finally:
        fake.close()
    assert replies.unknown == in_flight, "exactly the held sends are reported with an unknown outcome"
    assert Counter(graph_identity(replies, r) for r in replies.unknown) == held
    assert {replies.reason(r) for r in replies.unknown} == {
        "outcome unknown: the worker stopped during the send; not retried"}
    assert_replies_effectively_once(
        replies, fake.sent(), graph_identity, messages=[e.event_id for e in before + held_phase + after_restart],
        in_flight_at_kill=in_flight, after_restart=[e.event_id for e in after_restart])
    assert_sent_ids_came_from_the_fake(replies, fake)
    assert all(fake.sent()[key] == 1 for key in held), "a held send was sent again"


def test_worker_killed_before_its_first_commit_answers_every_message_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Faust reads its commit interval from the environment (BROKER_COMMIT_INTERVAL): this worker never commits.
    monkeypatch.setenv("BROKER_COMMIT_INTERVAL", "3600")
    contacts, per_contact, later = 10, 6, 1
    envelopes = acme_messages(contacts, per_contact, START)
    after_restart = more_messages(contacts, later, START + timedelta(hours=1), "after-restart")
    fake = FakeApis()
    try:
        with runtime_with_fakes(settings, fake).start() as runtime:
            publish_envelopes(runtime.settings, envelopes)
            eventually(lambda: sum(v[0] for v in acme_sessions(runtime.settings).values()) >= 10, "some messages folded")
            eventually(lambda: len(fake.sends) >= 10, "some replies sent")
            runtime.kill("worker", signal.SIGKILL)
            committed = _committed(runtime.settings)
            assert set(committed.values()) == {None}, f"the worker committed before the kill: {committed}"
            in_flight = Replies.on_log(runtime.settings).in_flight(started_sends(runtime.settings))
            monkeypatch.delenv("BROKER_COMMIT_INTERVAL")
            # Every partition restarts never committed: the worker must start them at the log start.
            runtime.spawn("worker")
            publish_envelopes(runtime.settings, after_restart)
            eventually(_all_answered(runtime.settings, contacts, per_contact + later), "every reply sent or failed",
                       within_s=120)
            replies = Replies.on_log(runtime.settings)
            sessions = acme_sessions(runtime.settings)
            _assert_read_models_match_the_log(runtime.settings)
    finally:
        fake.close()
    total = per_contact + later
    assert {c: (v[0], v[4]) for c, v in sessions.items()} == {c: (total, 2 * total) for c in sessions}
    assert_replies_effectively_once(
        replies, fake.sent(), graph_identity, messages=[e.event_id for e in envelopes + after_restart],
        in_flight_at_kill=in_flight, after_restart=[e.event_id for e in after_restart])
    assert_sent_ids_came_from_the_fake(replies, fake)


def _projector_writing(conn: psycopg.Connection) -> bool:
    """A session of this database is inside a transaction that has written (only the projector writes here)."""
    return bool(conn.execute(
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        " AND backend_xid IS NOT NULL").fetchone())


def _rollbacks(settings: Settings) -> int:
    """Transactions of this database that ended in a rollback; a client killed inside one rolls it back."""
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        return conn.execute("SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()"
                            ).fetchone()[0]


def test_projector_killed_mid_batch_ends_equal_to_the_log(runtime: Runtime) -> None:
    contacts, per_contact, kills = 30, 12, 3
    rollbacks = _rollbacks(runtime.settings)
    envelopes = acme_messages(contacts, per_contact, START)  # message n of every contact, then n + 1, ...
    size = len(envelopes) // kills
    caught_writing = 0
    for k in range(kills):
        publish_envelopes(runtime.settings, envelopes[k * size:(k + 1) * size])
        # While the worker answers these, catch the projector inside a batch's transaction: poll without pausing.
        deadline = time.monotonic() + 60
        with psycopg.connect(runtime.settings.database_url, autocommit=True) as probe:
            while not (writing := _projector_writing(probe)) and time.monotonic() < deadline:
                pass
        runtime.kill("projector", signal.SIGKILL)
        caught_writing += writing
        runtime.spawn("projector")
    eventually(lambda: _rollbacks(runtime.settings) > rollbacks, "a kill rolling back a batch's open transaction")
    eventually(lambda: (s := acme_sessions(runtime.settings)) and len(s) == contacts
               and all(v[2] + v[3] == per_contact for v in s.values()), "every message answered", within_s=120)
    _assert_read_models_match_the_log(runtime.settings)
    sessions = acme_sessions(runtime.settings)
    assert {c: (v[0], v[1], v[4]) for c, v in sessions.items()} == dict.fromkeys(
        sessions, (per_contact, per_contact, 2 * per_contact))
    assert caught_writing == kills, f"only {caught_writing} of {kills} kills were sent while the projector wrote"


def _ingest_body(contact: str, n: int) -> dict:
    return {
        "type": "conversation.message.received",
        "occurred_at": (START + timedelta(seconds=n)).isoformat(),
        "source_id": f"crash-api-{contact}-{n}",
        "payload": {"contact": contact, "whatsapp_message_id": f"wamid.crash-api.{contact}.{n}",
                    "message_type": "text", "text": "hola, ¿horario?"},
    }


def test_api_killed_mid_publish_loses_nothing_once_clients_retry(runtime: Runtime) -> None:
    contacts, per_contact = 20, 12
    bodies = [_ingest_body(f"3463{c:07d}", n) for n in range(per_contact) for c in range(contacts)]
    headers = {"Authorization": f"Bearer {issue_token(runtime.settings, 'acme')}"}
    statuses: dict[int, int | str] = {}

    async def post_all(indexes: list[int]) -> None:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=runtime.api_url, headers=headers, timeout=30, limits=limits) as client:
            async def post(i: int) -> None:
                try:
                    statuses[i] = (await client.post("/v1/events", json=bodies[i])).status_code
                except httpx.HTTPError as exc:
                    statuses[i] = type(exc).__name__
            await asyncio.gather(*(post(i) for i in indexes))

    first = threading.Thread(target=asyncio.run, args=(post_all(list(range(len(bodies)))),))
    first.start()
    eventually(lambda: list(statuses.values()).count(202) >= 30, "some events accepted")
    runtime.kill("api", signal.SIGKILL)
    first.join(60)
    assert not first.is_alive()
    refused = sorted(i for i in range(len(bodies)) if statuses.get(i) != 202)
    cut = [i for i in refused if statuses.get(i) not in ("ConnectError", None)]
    assert cut, f"no request was in flight at the kill: {Counter(map(str, statuses.values()))}"
    runtime.spawn("api")

    def healthy() -> bool:
        try:
            return httpx.get(f"{runtime.api_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    eventually(healthy, "the API answering again")
    retry = refused
    for _ in range(5):  # a client retries what it has no 202 for, with the same source ids
        statuses.clear()
        asyncio.run(post_all(retry))
        retry = [i for i in retry if statuses.get(i) != 202]
        if not retry:
            break
    assert not retry, {i: statuses[i] for i in retry}

    expected = {source_event_id("acme", "ingest", b["source_id"]): b["payload"]["contact"] for b in bodies}
    eventually(lambda: (s := acme_sessions(runtime.settings)) and len(s) == contacts
               and all(v[0] == per_contact and v[2] + v[3] == per_contact for v in s.values()),
               "every message folded and answered", within_s=120)
    copies = Counter(e.event_id for e in log_envelopes(runtime.settings) if e.type == "conversation.message.received")
    assert set(copies) == set(expected), "the log holds every accepted event id, and no other inbound message"
    assert {c: v[0] for c, v in acme_sessions(runtime.settings).items()} == dict.fromkeys(
        set(expected.values()), per_contact), "the fold counts each message once"
    _assert_read_models_match_the_log(runtime.settings)
