"""The outbound domain's worker side: its settings and fold config, the effect worker (relevance, rendering,
sending), the wake-up timer that turns the fold's wake-up requests into ticks, and the what-if re-fold."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
import structlog
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.batching import Folder
from agents.conversations.senders import Sender, SendError
from agents.outbound.fold import OutboundConfig, OutboundState, fold, parse_hhmm
from agents.tenants import Tenants
from schemas import Envelope, decode, emitted, new_event, source_event_id
from schemas.outbound import (
    DECISION_EVENTS,
    MessageData,
    MessageQueued,
    MessageRendered,
    MessageSent,
    QuietHours,
    RelevanceChecked,
    SendFailed,
    SendRequested,
    UserTicked,
)
from streams.settings import Settings

if TYPE_CHECKING:
    import faust

    from agents.llm import LlmClient

log = structlog.get_logger(__name__)

SEND_REQUESTED = "outbound.send.requested"
WAKEUP_SCHEDULED = "outbound.wakeup.scheduled"
# Emission indexes are fixed per kind, so a re-run derives the same event ids.
RELEVANCE, RENDERED, RESULT, RELEVANCE_COST, RENDER_COST = range(5)


class OutboundSettings(BaseSettings):
    """The outbound policy defaults and effect settings (BATON_OUTBOUND_*); docs/outbound.md lists them."""

    model_config = SettingsConfigDict(env_prefix="BATON_OUTBOUND_", extra="ignore")

    default_timezone: str = "UTC"
    quiet_hours_start: str = "22:00"
    quiet_hours_end: str = "08:00"
    daily_limit: int = Field(10, ge=0)
    active_window_minutes: float = Field(10.0, ge=0)
    max_deferral_hours: float = Field(72.0, gt=0)
    max_send_attempts: int = Field(4, ge=1)
    retry_backoff_s: float = Field(30.0, gt=0)
    tick_interval_s: float = Field(1.0, gt=0)
    tick_republish_s: float = Field(30.0, gt=0)
    relevance_model: str = "claude-haiku-4-5"
    render_model: str = "claude-haiku-4-5"
    render_max_tokens: int = Field(400, ge=16)

    def fold_config(self, **overrides: Any) -> OutboundConfig:
        """The fold's policy from these settings; overrides replace fields (what-if replay)."""
        parse_hhmm(self.quiet_hours_start), parse_hhmm(self.quiet_hours_end)
        config = OutboundConfig(
            default_timezone=self.default_timezone,
            default_quiet_hours=QuietHours(start=self.quiet_hours_start, end=self.quiet_hours_end),
            default_daily_limit=self.daily_limit,
            active_window=timedelta(minutes=self.active_window_minutes),
            max_deferral=timedelta(hours=self.max_deferral_hours),
            max_send_attempts=self.max_send_attempts,
            retry_backoff=timedelta(seconds=self.retry_backoff_s),
        )
        return msgspec.structs.replace(config, **overrides)


def outbound_folder(_settings: Settings) -> Folder:
    """The outbound fold with the policy of BATON_OUTBOUND_*."""
    return Folder(fold=fold, config=OutboundSettings().fold_config())


# -- effects ---------------------------------------------------------------------------------------------------


def render_template(data: MessageData) -> str:
    """Prose for a structured message without a model: a template per type, a generic one otherwise."""
    fields = data.fields
    if data.type == "text" and isinstance(fields.get("text"), str):
        return fields["text"]
    if data.type == "payment_required":
        return str(fields.get("message") or "Your payment method needs updating. Please review it to keep your service.")
    if data.type == "weekly_summary":
        stats = fields.get("stats") or {}
        items = ", ".join(f"{_words(k)}: {v}" for k, v in stats.items()) if isinstance(stats, dict) else str(stats)
        return f"Your weekly summary: {items}." if items else "Your weekly summary is ready."
    if data.type == "solution_update":
        findings = fields.get("findings") or {}
        matches = findings.get("matchedInnovators") if isinstance(findings, dict) else None
        if isinstance(matches, list) and matches:
            names = ", ".join(str(m.get("name", m)) if isinstance(m, dict) else str(m) for m in matches)
            return f"Update on your request: we found {len(matches)} match{'es' if len(matches) > 1 else ''}: {names}."
        return "Update on your request: there is news on what you asked us to look into."
    details = "; ".join(f"{_words(k)}: {v}" for k, v in fields.items())
    return f"{_words(data.type).capitalize()}: {details}." if details else f"{_words(data.type).capitalize()}."


def _words(name: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).replace("_", " ").lower()


def relevance_by_rules(request: SendRequested, now: datetime) -> tuple[bool, str]:
    """Whether a released message still makes sense: not expired, not superseded, the conversation not moved on."""
    if request.expires_at is not None and request.expires_at <= now:
        return False, "expired"
    if request.superseded_by is not None:
        return False, f"superseded by {request.superseded_by}"
    if request.last_inbound_at is not None and request.last_inbound_at > request.queued_at:
        return False, "the conversation moved on since it was queued"
    return True, "still current"


RELEVANCE_SYSTEM = (
    "You decide whether a proactive message queued earlier for a user should still be sent now. "
    "Answer with one word, RELEVANT or STALE, then a short reason."
)
CONCIERGE_SYSTEM = (
    "You are the concierge: the one voice a user hears from this product on WhatsApp. Turn the structured update "
    "you are given into one short, warm, plain-text WhatsApp message (no markdown, at most three sentences). "
    "Say only what the data says."
)


def _retryable(reason: str) -> bool:
    """A client error from the Graph API will fail again; network errors, 5xx and 429 may not."""
    match = re.match(r"whatsapp (\d{3})", reason)
    return match is None or match[1] == "429" or not match[1].startswith("4")


class OutboundEffects:
    """Runs one send attempt: relevance check when asked, rendering, sending; every outcome is an event."""

    effect_types: frozenset[str] = frozenset({SEND_REQUESTED})
    # A send reaches a person: never repeated, even when its outcome was lost.
    not_repeatable: frozenset[str] = frozenset({SEND_REQUESTED})

    def __init__(self, tenants: Tenants, sender: Sender, llm: LlmClient | None, settings: OutboundSettings, *,
                 actor: str = "effect:outbound", clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.tenants, self.sender, self.llm, self.settings = tenants, sender, llm, settings
        self.actor, self.clock = actor, clock

    async def run(self, envelope: Envelope) -> list[Envelope]:
        """Events resulting from one send request; other event types need no effect."""
        request = envelope.payload
        if not isinstance(request, SendRequested):
            return []
        events: list[Envelope] = []
        if request.check_relevance:
            checked = await self._relevance(envelope, request, events)
            events.insert(0, self._emit(envelope, RELEVANCE, checked))
            if not checked.relevant:
                return events
        text = request.text
        if text is None:
            rendered = await self._render(envelope, request, events)
            events.append(self._emit(envelope, RENDERED, rendered))
            text = rendered.text
        events.append(self._emit(envelope, RESULT, await self._send(envelope, request, text)))
        return events

    def unknown_outcome(self, envelope: Envelope) -> list[Envelope]:
        """A send that started but never finished: failed, not retried (it may have reached the user)."""
        request = envelope.payload
        if not isinstance(request, SendRequested):
            return []
        failed = SendFailed(user_id=request.user_id, message_id=request.message_id, attempt=request.attempt,
                            reason="outcome unknown: the worker stopped during the send; not retried",
                            retryable=False, sender=self.sender.name)
        return [self._emit(envelope, RESULT, failed)]

    def _emit(self, cause: Envelope, index: int, payload: Any) -> Envelope:
        return emitted(cause, index, payload, actor=self.actor, occurred_at=self.clock())

    async def _relevance(self, envelope: Envelope, request: SendRequested, costs: list[Envelope]) -> RelevanceChecked:
        now = self.clock()
        common = {"user_id": request.user_id, "message_id": request.message_id}
        fallback = None
        if self.llm is not None:
            prompt = msgspec.json.encode({
                "message": request.message_data, "queued_at": request.queued_at, "now": now,
                "expires_at": request.expires_at, "newer_message_of_same_type": request.superseded_by,
                "user_last_wrote_at": request.last_inbound_at,
            }).decode()
            answer, fallback = await self._complete(envelope, request, RELEVANCE_COST, "relevance",
                                                    self.settings.relevance_model, RELEVANCE_SYSTEM, prompt, 60, costs)
            verdict = answer.strip().split(maxsplit=1) if answer else []
            if verdict and verdict[0].upper().strip(".:,") in ("RELEVANT", "STALE"):
                return RelevanceChecked(**common, relevant=verdict[0].upper().startswith("RELEVANT"), method="llm",
                                        reason=(verdict[1] if len(verdict) > 1 else verdict[0])[:300])
            if answer is not None:
                fallback = f"unparsable answer {answer[:80]!r}"
        relevant, reason = relevance_by_rules(request, now)
        return RelevanceChecked(**common, relevant=relevant, method="rules", reason=reason, fallback_reason=fallback)

    async def _render(self, envelope: Envelope, request: SendRequested, costs: list[Envelope]) -> MessageRendered:
        common = {"user_id": request.user_id, "message_id": request.message_id}
        fallback = None
        if self.llm is not None:
            prompt = msgspec.json.encode(request.message_data).decode()
            text, fallback = await self._complete(envelope, request, RENDER_COST, "rendering",
                                                  self.settings.render_model, CONCIERGE_SYSTEM, prompt,
                                                  self.settings.render_max_tokens, costs)
            if text and text.strip():
                return MessageRendered(**common, text=text.strip(), method="llm")
            fallback = fallback or "empty answer"
        return MessageRendered(**common, text=render_template(request.message_data), method="template",
                               fallback_reason=fallback)

    async def _complete(self, envelope: Envelope, request: SendRequested, index: int, purpose: str, model: str,
                        system: str, prompt: str, max_tokens: int, costs: list[Envelope]) -> tuple[str | None, str | None]:
        """The model's text (or None) and why it failed; the call's cost event joins `costs` either way."""
        from agents.llm import LlmError, cost_event

        assert self.llm is not None
        try:
            completion = await self.llm.complete(model=model, system=system, max_tokens=max_tokens,
                                                 messages=[{"role": "user", "content": prompt}], cache_prefix=True)
        except LlmError as exc:
            reason = str(exc)[:300]
            log.warning("outbound.llm_failed", purpose=purpose, reason=reason)
            costs.append(cost_event(envelope, index, None, domain="outbound", purpose=purpose, model=model,
                                    agent_id=request.agent_id, user_id=request.user_id, error=reason,
                                    occurred_at=self.clock()))
            return None, reason
        costs.append(cost_event(envelope, index, completion, domain="outbound", purpose=purpose,
                                agent_id=request.agent_id, user_id=request.user_id, occurred_at=self.clock()))
        return completion.text, None

    async def _send(self, envelope: Envelope, request: SendRequested, text: str) -> MessageSent | SendFailed:
        common = {"user_id": request.user_id, "message_id": request.message_id, "attempt": request.attempt,
                  "sender": self.sender.name}
        tenant = self.tenants.get(envelope.tenant_id)
        if tenant is None:
            return SendFailed(**common, reason=f"unknown tenant {envelope.tenant_id!r}", retryable=False)
        if request.contact is None:
            return SendFailed(**common, reason="the user has no contact in their preferences", retryable=False)
        try:
            message_id = await self.sender.send(tenant, request.contact, text, envelope.event_id)
        except SendError as exc:
            # A send whose answer was lost may have reached the user: never sent again.
            retryable = not exc.outcome_unknown and _retryable(exc.reason)
            return SendFailed(**common, reason=exc.reason[:500], retryable=retryable)
        return MessageSent(**common, whatsapp_message_id=message_id)


def build_effects(settings: Settings) -> OutboundEffects:
    """The effect worker with the conversation sender (WhatsApp when configured) and the LLM client when configured."""
    from agents.conversations.senders import LogSender, whatsapp_sender
    from agents.llm import llm_client
    from agents.tenants import load_tenants

    sender: Sender = whatsapp_sender(settings) if settings.whatsapp_access_token else LogSender()
    return OutboundEffects(load_tenants(settings.tenants_file), sender, llm_client(settings), OutboundSettings())


# -- wake-ups --------------------------------------------------------------------------------------------------


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
    from streams.app import domain_topic, raw_table
    from streams.publisher import Publisher

    options = OutboundSettings()
    topic = domain_topic(app, settings, "outbound")
    wakeups = raw_table(app, settings, WAKEUPS_TABLE)
    published: dict[bytes, tuple[datetime, float]] = {}
    publisher: list[Publisher] = []

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
        if not publisher:
            publisher.append(await Publisher(settings).start())
        try:
            await publisher[0].publish(ticks)
        except Exception as exc:  # noqa: BLE001 - the next round publishes them again
            log.warning("outbound.ticks_not_published", count=len(ticks), reason=str(exc))
            for tick in ticks:
                published.pop(tick.stream_id.encode(), None)


# -- what-if re-fold -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """Where one message ended: sent (a send was decided), deferred, or dropped, with the reason."""

    message_id: str
    user_id: str
    agent_id: str
    priority: str
    outcome: str
    reason: str

    @property
    def label(self) -> tuple[str, str]:
        return self.outcome, self.reason


@dataclass(frozen=True)
class Simulation:
    """Each message's outcome on the log (before) and under the simulated policy (after)."""

    before: dict[str, Outcome]
    after: dict[str, Outcome]
    queued: dict[str, datetime]
    events: int

    def counts(self, since: datetime | None = None) -> tuple[Counter, Counter]:
        keep = {m for m, at in self.queued.items() if since is None or at >= since}
        return (Counter(o.label for m, o in self.before.items() if m in keep),
                Counter(o.label for m, o in self.after.items() if m in keep))

    def changed(self, since: datetime | None = None) -> list[tuple[Outcome | None, Outcome | None]]:
        keep = [m for m, at in sorted(self.queued.items(), key=lambda kv: kv[1]) if since is None or at >= since]
        pairs = [(self.before.get(m), self.after.get(m)) for m in keep]
        return [(b, a) for b, a in pairs if (b.label if b else None) != (a.label if a else None)]


_OUTCOME = {"approved": "sent", "released": "sent", "deferred": "deferred", "dropped": "dropped"}


def _record(outcomes: dict[str, Outcome], envelope: Envelope) -> None:
    payload = envelope.payload
    outcomes[payload.message_id] = Outcome(  # type: ignore[attr-defined]
        payload.message_id, payload.user_id, payload.agent_id, payload.priority,  # type: ignore[attr-defined]
        _OUTCOME[envelope.type.rsplit(".", 1)[1]], payload.reason)  # type: ignore[attr-defined]


def simulate(envelopes: Sequence[Envelope], config: OutboundConfig, horizon: datetime | None = None) -> Simulation:
    """Re-fold an outbound log under `config`, no network and no sends: each user's wake-ups become ticks at
    their due time (as the timer would publish them), up to `horizon` (default: the log's last event time)."""
    before: dict[str, Outcome] = {}
    after: dict[str, Outcome] = {}
    queued: dict[str, datetime] = {}
    states: dict[str, OutboundState | None] = {}
    horizon = horizon or max((e.occurred_at for e in envelopes), default=None)

    def apply(key: str, envelope: Envelope) -> None:
        state, out = fold(states.get(key), envelope, config)
        states[key] = state
        for event in out:
            if event.type in DECISION_EVENTS:
                _record(after, event)

    def wake_until(key: str, until: datetime) -> None:
        state = states.get(key)
        while state is not None and state.wakeup_at is not None and state.wakeup_at <= until:
            due = state.wakeup_at
            apply(key, tick_for(state.tenant_id, state.user_id, due, due))
            state = states[key]
            if state is not None and state.wakeup_at is not None and state.wakeup_at <= due:
                break  # no progress: leave the rest to later events

    for envelope in envelopes:
        key = envelope.stream_id
        if envelope.type in DECISION_EVENTS:
            _record(before, envelope)
            continue
        if isinstance(envelope.payload, MessageQueued):
            queued.setdefault(str(envelope.event_id), envelope.occurred_at)
        wake_until(key, envelope.occurred_at)
        apply(key, envelope)
    if horizon is not None:
        for key in list(states):
            wake_until(key, horizon)
    return Simulation(before=before, after=after, queued=queued, events=len(envelopes))
