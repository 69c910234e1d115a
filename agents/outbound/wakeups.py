"""The outbound wake-up timer: a worker-side agent keeping each local user's next wake-up (from the fold's
`outbound.wakeup.scheduled` events) and publishing a tick for every one that is due."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec
import structlog

from agents.outbound.config import OutboundSettings
from schemas import Envelope, decode, new_event, source_event_id
from schemas.outbound import UserTicked
from streams.settings import Settings, loaded

if TYPE_CHECKING:
    import faust

log = structlog.get_logger(__name__)

WAKEUP_SCHEDULED = "outbound.wakeup.scheduled"

WAKEUPS_TABLE = "outbound-wakeups"


def tick_for(tenant_id: str, user_id: str, due_at: datetime, now: datetime) -> Envelope:
    """The tick answering one wake-up; its id derives from (user, due time), so publishing it again is a no-op."""
    event_id = source_event_id(tenant_id, "outbound-wakeup", f"{user_id}:{due_at.isoformat()}")
    return new_event(tenant_id, UserTicked(user_id=user_id, due_at=due_at), event_id=event_id,
                     occurred_at=max(now, due_at), recorded_at=now, actor="timer:outbound")


class _Wakeup(msgspec.Struct, frozen=True):
    tenant_id: str
    user_id: str
    due_at: datetime


_wakeup_encoder = msgspec.json.Encoder()
_wakeup_decoder = msgspec.json.Decoder(_Wakeup)


def due_ticks(wakeups: Iterable[tuple[bytes, bytes]], now: datetime, published: dict[bytes, tuple[datetime, float]],
              republish_s: float, monotonic: float) -> list[Envelope]:
    """Ticks for the wake-ups due by `now`, skipping those published less than republish_s ago (kept in `published`)."""
    ticks = []
    for key, raw in wakeups:
        wakeup = _wakeup_decoder.decode(raw)
        if wakeup.due_at > now:
            continue
        last = published.get(key)
        if last is not None and last[0] == wakeup.due_at and monotonic - last[1] < republish_s:
            continue
        published[key] = (wakeup.due_at, monotonic)
        ticks.append(tick_for(wakeup.tenant_id, wakeup.user_id, wakeup.due_at, now))
    return ticks


def register_wakeups(app: faust.App, settings: Settings) -> None:
    """Worker-side wake-up timer: keeps each local user's next wake-up in a table co-partitioned with the topic
    (from the fold's `outbound.wakeup.scheduled` events) and publishes a tick for every one that is due."""
    from agents.streaming import worker_log
    from streams.app import domain_topic, raw_table

    options = loaded(OutboundSettings)
    topic = domain_topic(app, settings, "outbound")
    wakeups = raw_table(app, settings, WAKEUPS_TABLE)
    published: dict[bytes, tuple[datetime, float]] = {}
    log = worker_log(app, settings)

    @app.agent(topic, concurrency=1, name="outbound.wakeups")
    async def track_wakeups(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.worker_batch_max, settings.worker_batch_within_s):
            latest: dict[bytes, _Wakeup | None] = {}
            for event in events:
                value = event.message.value
                if not value or b'"outbound.wakeup.scheduled"' not in value[:200]:
                    continue
                try:
                    envelope = decode(value)
                except Exception:  # noqa: BLE001 - the fold agent dead-letters undecodable records
                    continue
                if envelope.type != WAKEUP_SCHEDULED:
                    continue
                due = envelope.payload.due_at  # type: ignore[attr-defined]
                latest[event.message.key] = None if due is None else _Wakeup(
                    envelope.tenant_id, envelope.payload.user_id, due)  # type: ignore[attr-defined]
            for key, wakeup in latest.items():
                if wakeup is None:
                    if key in wakeups:
                        del wakeups[key]
                else:
                    wakeups[key] = _wakeup_encoder.encode(wakeup)

    @app.timer(options.tick_interval_s)
    async def publish_ticks() -> None:
        ticks = due_ticks(list(wakeups.items()), datetime.now(UTC), published, options.tick_republish_s,
                          time.monotonic())
        if not ticks:
            return
        try:
            await log.publish(ticks)
        except Exception as exc:  # noqa: BLE001 - the next round publishes them again
            log.warning("outbound.ticks_not_published", count=len(ticks), reason=str(exc))
            for tick in ticks:
                published.pop(tick.stream_id.encode(), None)
