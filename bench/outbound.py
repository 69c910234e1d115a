"""Outbound figures: decisions/s from queued to decided on the embedded broker, and the simulate re-fold's events/s.

    .venv/bin/python -m bench.outbound [--messages 10000] [--users 1000] [--sim-users 10000] [--days 30]

1. Pre-loads `--messages` `outbound.message.queued` events for `--users` users on an embedded Tansu broker,
   starts one real `baton worker` and reads the outbound topic until every message has its decision event:
   decisions/s from the first decision to the last, and from the worker's start (its start-up included).
   Messages are queued in daytime UTC for users without preferences, so each is approved and also sent
   (log sender), as in production: the effect runner shares the machine.
2. Generates a month (`--days`) for `--sim-users` users in memory (preferences in four zones, about one message a
   user a day from four agents at random hours and priorities, some inbound activity) and times
   `agents.outbound.simulate` under another policy; its ticks are the simulated wake-ups.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from aiokafka import AIOKafkaConsumer

from agents.outbound.fold import OutboundConfig
from agents.outbound.simulate import simulate
from schemas import Envelope, new_event
from schemas.outbound import (
    DECISION_EVENTS,
    MessageData,
    MessageQueued,
    PreferencesUpdated,
    QuietHours,
    UserActive,
)
from streams.embedded import EmbeddedBroker, child_env
from streams.publisher import Publisher
from streams.settings import Settings, settings_env
from streams.topics import ensure_topics

ZONES = ("Europe/Madrid", "America/New_York", "Asia/Tokyo", "UTC")
AGENTS = ("solution_saga", "account_manager", "concierge", "billing")
PRIORITIES = ("high", "medium", "medium", "low", "low", "urgent")


class _Type(msgspec.Struct):
    type: str


def queued(tenant: str, user: str, agent: str, at: datetime, priority: str = "medium") -> Envelope:
    payload = MessageQueued(user_id=user, agent_id=agent, message_data=MessageData(type="text", fields={"text": "hi"}),
                            priority=priority)  # type: ignore[arg-type]
    return new_event(tenant, payload, event_id=uuid.uuid4(), occurred_at=at, recorded_at=at, actor="bench")


async def decisions_per_second(messages: int, users: int, work: Path) -> dict[str, float]:
    broker = EmbeddedBroker().start(work / "tansu.log")
    run = uuid.uuid4().hex[:8]
    settings = Settings(kafka_bootstrap_servers=broker.bootstrap_servers, broker_profile="embedded",
                        app_id=f"bench-ob-{run}", topic_prefix=f"bench-{run}.", data_dir=work / "baton",
                        log_level="warn")
    worker = None
    try:
        await ensure_topics(settings)
        at = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
        envelopes = [queued("acme", f"user-{i % users}", AGENTS[i % len(AGENTS)], at + timedelta(milliseconds=i))
                     for i in range(messages)]
        async with Publisher(settings) as publisher:
            for start in range(0, len(envelopes), 2000):
                await publisher.publish(envelopes[start:start + 2000])
        consumer = AIOKafkaConsumer(settings.topic("outbound"), bootstrap_servers=settings.kafka_bootstrap_servers,
                                    group_id=None, auto_offset_reset="earliest", fetch_max_wait_ms=100)
        await consumer.start()
        decoder = msgspec.json.Decoder(_Type)
        log = (work / "worker.log").open("w")
        started = time.perf_counter()
        worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], stdout=log, stderr=log,
                                  env=child_env(**settings_env(settings)))
        decided, first = 0, None
        try:
            while decided < messages:
                if time.perf_counter() - started > 600:
                    raise RuntimeError(f"only {decided} of {messages} decisions within 600 s (see {log.name})")
                batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
                for records in batch.values():
                    for record in records:
                        if b"outbound.message." in record.value[:200] and decoder.decode(record.value).type in DECISION_EVENTS:
                            decided += 1
                            first = first or time.perf_counter()
        finally:
            await consumer.stop()
        done = time.perf_counter()
        return {"messages": messages, "users": users, "from_first_decision_s": done - (first or done),
                "per_s": messages / max(done - (first or done), 1e-9), "from_worker_start_s": done - started,
                "per_s_with_start": messages / (done - started)}
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(10)
        broker.stop()


def generated_month(users: int, days: int, seed: int = 7) -> list[Envelope]:
    """A month of outbound inputs for `users` users, in event-time order per user."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    log: list[Envelope] = []
    for u in range(users):
        user = f"user-{u}"
        prefs = PreferencesUpdated(user_id=user, timezone=ZONES[u % len(ZONES)], daily_limit=rng.choice((1, 2, 3, 10)),
                                   quiet_hours=QuietHours(start="22:00", end="08:00"))
        events = [new_event("acme", prefs, event_id=uuid.UUID(int=rng.getrandbits(128)), occurred_at=start,
                            recorded_at=start, actor="bench")]
        for day in range(days):
            for _ in range(rng.choice((0, 1, 1, 2))):
                at = start + timedelta(days=day, seconds=rng.randrange(86_400))
                events.append(queued("acme", user, rng.choice(AGENTS), at, rng.choice(PRIORITIES)))
            if rng.random() < 0.3:
                at = start + timedelta(days=day, seconds=rng.randrange(86_400))
                active = UserActive(user_id=user, contact=f"346{u:08d}", message_event_id=f"wamid.{u}.{day}")
                events.append(new_event("acme", active, event_id=uuid.UUID(int=rng.getrandbits(128)), occurred_at=at,
                                        recorded_at=at, actor="bench"))
        events[1:] = sorted(events[1:], key=lambda e: e.occurred_at)
        log.extend(events)
    return log


def simulate_rate(users: int, days: int) -> dict[str, float]:
    t0 = time.perf_counter()
    log = generated_month(users, days)
    generated = time.perf_counter() - t0
    policy = OutboundConfig(daily_limit_override=3, quiet_hours_override=QuietHours(start="23:00", end="07:00"))
    t1 = time.perf_counter()
    result = simulate(log, policy)
    elapsed = time.perf_counter() - t1
    return {"users": users, "days": days, "events": len(log), "messages": len(result.queued),
            "generate_s": generated, "simulate_s": elapsed, "events_per_s": len(log) / elapsed,
            "decisions": len(result.after), "sent": sum(1 for o in result.after.values() if o.outcome == "sent")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--sim-users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--skip-broker", action="store_true", help="Only the simulate figure.")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores")
    if not args.skip_broker:
        with tempfile.TemporaryDirectory(prefix="bench-outbound-") as work:
            figures = asyncio.run(decisions_per_second(args.messages, args.users, Path(work)))
        print(f"queued → decided, embedded broker, 1 worker: {figures['messages']} messages for {figures['users']} users:"
              f" {figures['per_s']:.0f} decisions/s over {figures['from_first_decision_s']:.1f} s from the first"
              f" decision ({figures['per_s_with_start']:.0f}/s including the worker's start, "
              f"{figures['from_worker_start_s']:.1f} s)")
    sim = simulate_rate(args.sim_users, args.days)
    print(f"simulate: {sim['users']} users × {sim['days']} days = {sim['events']} events ({sim['messages']} messages),"
          f" generated in {sim['generate_s']:.1f} s; re-folded in {sim['simulate_s']:.1f} s ="
          f" {sim['events_per_s']:.0f} events/s; {sim['decisions']} messages decided, {sim['sent']} sent")


if __name__ == "__main__":
    main()
