"""The outbound fold, one writer per (tenant, user): preferences, activity, the day's budget and the message queue.

Every decision (approved, deferred, released, dropped) is an emitted event with its reason and inputs. Time is the
event's: a fold's clock is the latest event time it has folded, so a late event is decided as of the clock. Days are
the user's civil dates in their IANA zone (from the `tzdata` package, whose version each decision records); a local
boundary in a DST gap moves to the first valid instant after it, one in a repeated hour takes its first occurrence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

import msgspec
from msgspec.structs import replace

from agents.batching import FoldState, StateCodec
from agents.errors import FoldError
from agents.zones import TZ_VERSION, zone
from schemas import Envelope, Payload, emitted
from schemas.conversations import ContactLinked, ContactUnlinked
from schemas.outbound import (
    PRIORITIES,
    DecisionInputs,
    DeferredUntil,
    MessageApproved,
    MessageData,
    MessageDeferred,
    MessageDropped,
    MessageQueued,
    MessageReleased,
    MessageRendered,
    MessageSent,
    PreferencesUpdated,
    QuietHours,
    RelevanceChecked,
    SendFailed,
    SendOrder,
    SendRequested,
    UserActive,
    UserTicked,
    WakeupScheduled,
)

ACTOR = "fold:outbound"

Status = Literal["deferred", "sending", "retrying", "sent", "dropped", "failed"]
TERMINAL: frozenset[str] = frozenset({"sent", "dropped", "failed"})
_RANK = {priority: rank for rank, priority in enumerate(PRIORITIES)}
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_hhmm(value: str) -> time:
    """A local wall-clock time written HH:MM (00:00-23:59)."""
    match = _HHMM.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a time HH:MM")
    return time(int(match[1]), int(match[2]))


def local_instant(day: date, wall: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of a local date and time: in a DST gap the first valid instant after it, in a repeated
    hour its first occurrence."""
    naive = datetime.combine(day, wall)
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == naive:
        return first
    # In a gap: the transition lies between the wall time read with the later offset and with the earlier one.
    low = int(naive.replace(tzinfo=tz, fold=1).astimezone(UTC).timestamp())
    high = int(first.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).replace(tzinfo=None) > naive:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def quiet_window(at: datetime, tz: ZoneInfo, hours: QuietHours) -> tuple[datetime, datetime] | None:
    """The quiet-hours interval [start, end) containing `at`, or None outside quiet hours."""
    if hours.start == hours.end:
        return None
    start, end = parse_hhmm(hours.start), parse_hhmm(hours.end)
    today = at.astimezone(tz).date()
    for day in (today - timedelta(days=1), today):
        begins = local_instant(day, start, tz)
        ends = local_instant(day + timedelta(days=1) if end <= start else day, end, tz)
        if begins <= at < ends:
            return begins, ends
    return None


def next_midnight(at: datetime, tz: ZoneInfo) -> datetime:
    """Start of the next local date (a 23- or 25-hour day is still one day)."""
    return local_instant(at.astimezone(tz).date() + timedelta(days=1), time(0, 0), tz)


class OutboundConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The policy and limits of the fold; the *_override fields replace every user's preference (what-if replay)."""

    default_timezone: str = "UTC"
    default_quiet_hours: QuietHours = QuietHours()
    default_daily_limit: int = 10
    active_window: timedelta = timedelta(minutes=10)
    max_deferral: timedelta = timedelta(hours=72)
    max_send_attempts: int = 4
    retry_backoff: timedelta = timedelta(seconds=30)
    daily_limit_override: int | None = None
    quiet_hours_override: QuietHours | None = None
    max_terminal_messages: int = 100
    max_idempotency_keys: int = 1024


DEFAULT_CONFIG = OutboundConfig()


class Decision(msgspec.Struct, kw_only=True):
    """One decision taken on a message, as its event recorded it."""

    decision: Literal["approved", "deferred", "released", "dropped"]
    reason: str
    event_id: str
    at: datetime
    due_at: datetime | None = None
    deferred_until: DeferredUntil | None = None  # a deferral's due instant, UTC and local, kept for good
    inputs: DecisionInputs


class Message(msgspec.Struct, kw_only=True):
    """One queued message and where it stands."""

    message_id: str
    seq: int
    agent_id: str
    message_data: MessageData
    priority: str
    can_delay: bool
    requires_fresh_context: bool
    idempotency_key: str | None = None
    expires_at: datetime | None = None
    queued_at: datetime
    status: Status = "deferred"
    reason: str | None = None
    due_at: datetime | None = None
    deferred_at: datetime | None = None
    decided_at: datetime | None = None
    counted_date: str | None = None
    attempts: int = 0
    retry_at: datetime | None = None
    text: str | None = None
    whatsapp_message_id: str | None = None
    sent_at: datetime | None = None
    decisions: list[Decision] = []


class OutboundState(FoldState, kw_only=True):
    """One user's preferences, activity, budget of the current local date, and queue."""

    tenant_id: str
    user_id: str
    timezone: str | None = None
    quiet_hours: QuietHours | None = None
    daily_limit: int | None = None
    contact: str | None = None
    clock: datetime | None = None
    last_inbound_at: datetime | None = None
    last_message_at: datetime | None = None
    budget_date: str | None = None
    sent_on_date: int = 0
    budget_limit: int | None = None  # the daily limit in force on budget_date
    messages: list[Message] = []
    next_seq: int = 1
    idempotency_keys: dict[str, str] = {}
    wakeup_at: datetime | None = None


CODEC = StateCodec.json(OutboundState)


# Events the fold itself emits: their effect on the state was applied when they were emitted.
_OWN = (MessageApproved, MessageDeferred, MessageReleased, MessageDropped, SendRequested, WakeupScheduled)


def fold(state: OutboundState | None, envelope: Envelope,
         config: OutboundConfig = DEFAULT_CONFIG) -> tuple[OutboundState | None, list[Envelope]]:
    """Apply one outbound event; returns the new state and the decisions and requests it emits."""
    payload = envelope.payload
    user_id = getattr(payload, "user_id", None)
    if user_id is None or isinstance(payload, _OWN):
        return state, []
    if state is not None and (state.tenant_id, state.user_id) != (envelope.tenant_id, user_id):
        raise FoldError(f"event {envelope.event_id} for {envelope.tenant_id}/{user_id} "
                        f"reached the state of {state.tenant_id}/{state.user_id}")
    state = _copy(state) if state is not None else OutboundState(tenant_id=envelope.tenant_id, user_id=user_id)
    now = max(state.clock, envelope.occurred_at) if state.clock else envelope.occurred_at
    run = _Run(state, config, envelope, now)
    run.apply(payload)
    run.release_due()
    run.schedule_wakeup()
    state.clock = now
    _prune(state, config)
    return state, run.events


def _copy(state: OutboundState) -> OutboundState:
    # States are shared with the agent's table cache: the fold changes copies only.
    return replace(state, messages=[replace(m) for m in state.messages], idempotency_keys=dict(state.idempotency_keys))


@dataclass
class _Run:
    """The application of one event at the fold's clock `now`."""

    state: OutboundState
    config: OutboundConfig
    cause: Envelope
    now: datetime
    events: list[Envelope] = field(default_factory=list)

    # Policy in force: an override (what-if replay), else the user's preference, else the default.
    @property
    def tz(self) -> ZoneInfo:
        return zone(self.state.timezone or self.config.default_timezone)

    @property
    def quiet_hours(self) -> QuietHours:
        return self.config.quiet_hours_override or self.state.quiet_hours or self.config.default_quiet_hours

    @property
    def daily_limit(self) -> int:
        if self.config.daily_limit_override is not None:
            return self.config.daily_limit_override
        return self.state.daily_limit if self.state.daily_limit is not None else self.config.default_daily_limit

    def emit(self, payload: Payload) -> Envelope:
        envelope = emitted(self.cause, len(self.events), payload, actor=ACTOR, occurred_at=self.now)
        self.events.append(envelope)
        return envelope

    def local_date(self, at: datetime) -> str:
        return at.astimezone(self.tz).date().isoformat()

    def used(self, at: datetime) -> int:
        return self.state.sent_on_date if self.state.budget_date == self.local_date(at) else 0

    def active(self) -> bool:
        last = self.state.last_inbound_at
        return last is not None and self.now - last <= self.config.active_window

    def next_allowed(self, at: datetime) -> datetime | None:
        """The first instant from `at` outside quiet hours with budget left; None when the limit is 0."""
        if self.daily_limit <= 0:
            return None
        for _ in range(4):
            if self.used(at) >= self.daily_limit:
                at = next_midnight(at, self.tz)
            elif window := quiet_window(at, self.tz, self.quiet_hours):
                at = window[1]
            else:
                return at
        return at

    # -- inputs ---------------------------------------------------------------------------------------------

    def apply(self, payload: Payload) -> None:
        state = self.state
        if isinstance(payload, MessageQueued):
            self.queued(payload)
        elif isinstance(payload, PreferencesUpdated):
            self.preferences(payload)
        elif isinstance(payload, UserActive):
            state.last_inbound_at = max(filter(None, (state.last_inbound_at, self.cause.occurred_at)))
        elif isinstance(payload, UserTicked):
            pass  # time passed: release_due does the rest
        elif isinstance(payload, RelevanceChecked):
            message = self.find(payload.message_id, "sending")
            if message is not None and not payload.relevant:
                before = self.used(self.now)
                self.refund(message)
                self.decide(message, "dropped", "stale", f"relevance:{payload.method}", budget_before=before)
        elif isinstance(payload, MessageRendered):
            self.rendered(payload.message_id, payload.text)
        elif isinstance(payload, MessageSent):
            if payload.rendered is not None:
                self.rendered(payload.message_id, payload.rendered.text)
            message = self.find(payload.message_id, "sending")
            if message is not None:
                message.status, message.reason = "sent", None
                message.sent_at, message.whatsapp_message_id = self.now, payload.whatsapp_message_id
                state.last_message_at = self.now
        elif isinstance(payload, SendFailed):
            if payload.rendered is not None:
                self.rendered(payload.message_id, payload.rendered.text)
            self.failed(payload)
        else:
            raise FoldError(f"outbound fold cannot apply {self.cause.type!r} (event {self.cause.event_id})")

    def queued(self, payload: MessageQueued) -> None:
        state = self.state
        message_id = str(self.cause.event_id)
        key = payload.idempotency_key
        if (key is not None and key in state.idempotency_keys) or self.find(message_id) is not None:
            return
        if key is not None:
            keys = {**state.idempotency_keys, key: message_id}
            state.idempotency_keys = dict(list(keys.items())[-self.config.max_idempotency_keys:])
        message = Message(
            message_id=message_id, seq=state.next_seq, agent_id=payload.agent_id, message_data=payload.message_data,
            priority=payload.priority, can_delay=payload.can_delay,
            requires_fresh_context=payload.requires_fresh_context, idempotency_key=key,
            expires_at=payload.expires_at, queued_at=self.cause.occurred_at,
        )
        state.next_seq += 1
        self.release_due()  # messages already waiting come first
        state.messages = [*state.messages, message]
        self.decide_new(message)

    def preferences(self, payload: PreferencesUpdated) -> None:
        try:
            zone(payload.timezone)
            parse_hhmm(payload.quiet_hours.start), parse_hhmm(payload.quiet_hours.end)
        except ValueError as exc:
            raise FoldError(f"preferences of {payload.user_id}: {exc}") from None
        state = self.state
        if payload.contact != state.contact:
            if state.contact is not None:
                self.emit(ContactUnlinked(contact=state.contact, user_id=state.user_id))
            if payload.contact is not None:
                self.emit(ContactLinked(contact=payload.contact, user_id=state.user_id))
        state.timezone, state.quiet_hours = payload.timezone, payload.quiet_hours
        state.daily_limit, state.contact = payload.daily_limit, payload.contact

    def rendered(self, message_id: str, text: str) -> None:
        if (message := self.find(message_id)) is not None:
            message.text = text

    def failed(self, payload: SendFailed) -> None:
        message = self.find(payload.message_id, "sending")
        if message is None or payload.attempt != message.attempts:
            return
        if payload.retryable and payload.attempt < self.config.max_send_attempts:
            message.status, message.reason = "retrying", payload.reason
            message.retry_at = self.now + self.config.retry_backoff * 2 ** (payload.attempt - 1)
        else:
            message.status, message.reason = "failed", payload.reason
            self.refund(message)

    # -- decisions ------------------------------------------------------------------------------------------

    def decide_new(self, message: Message) -> None:
        """The first decision on a queued message (DESIGN.md / docs/outbound.md list the rules in this order)."""
        if self.expired(message):
            return self.decide(message, "dropped", "expired", "expired")
        quiet = quiet_window(self.now, self.tz, self.quiet_hours)
        spent = self.used(self.now) >= self.daily_limit
        if message.priority == "urgent":
            bypass = "+".join(name for name, hit in (("quiet_hours", quiet), ("budget", spent)) if hit)
            return self.send(message, "approved", "urgent", f"urgent_bypass:{bypass}" if bypass else "urgent")
        if self.active() and not spent:
            return self.send(message, "approved", "active_user", "active_user")
        if quiet or spent:
            reason = "quiet_hours" if quiet else "budget_exhausted"
            if not message.can_delay:
                return self.decide(message, "dropped", reason, f"{reason}:cannot_delay")
            return self.defer(message, reason)
        self.send(message, "approved", "slot_available", "slot_available")

    def release_due(self) -> None:
        """Waiting messages in priority order, then first in first out, across every agent of the user."""
        for message in sorted((m for m in self.state.messages if m.status in ("deferred", "retrying")),
                              key=lambda m: (_RANK[m.priority], m.seq)):
            if message.status == "retrying":
                if message.retry_at is not None and message.retry_at <= self.now:
                    self.emit(SendRequested.of(self.send_order(message, message.attempts + 1),
                                               user_id=self.state.user_id, message_id=message.message_id,
                                               agent_id=message.agent_id))
                continue
            if self.expired(message):
                self.decide(message, "dropped", "expired", "expired")
            elif message.deferred_at is not None and self.now - message.deferred_at >= self.config.max_deferral:
                self.decide(message, "dropped", "max_deferral", "max_deferral")
            elif self.used(self.now) < self.daily_limit and self.active():
                self.send(message, "released", "active_user", "active_user")
            elif self.used(self.now) < self.daily_limit and not quiet_window(self.now, self.tz, self.quiet_hours):
                self.send(message, "released", "slot_available", "slot_available")
            else:
                message.due_at = self.due(message)

    def expired(self, message: Message) -> bool:
        return message.expires_at is not None and message.expires_at <= self.now

    def due(self, message: Message) -> datetime:
        deadline = (message.deferred_at or self.now) + self.config.max_deferral
        allowed = self.next_allowed(self.now)
        return deadline if allowed is None else min(allowed, deadline)

    def defer(self, message: Message, reason: str) -> None:
        message.deferred_at = message.deferred_at or self.now
        message.due_at = self.due(message)
        self.decide(message, "deferred", reason, reason)

    def send(self, message: Message, decision: Literal["approved", "released"], reason: str, rule: str) -> None:
        used = self.used(self.now)
        self.state.budget_date, self.state.sent_on_date = self.local_date(self.now), used + 1
        self.state.budget_limit = self.daily_limit
        message.counted_date = self.state.budget_date
        self.decide(message, decision, reason, rule, budget_before=used, send=self.send_order(message, 1))

    def refund(self, message: Message) -> None:
        """A counted message that was never sent gives its budget back (when its date is still the current one)."""
        if message.counted_date is not None and message.counted_date == self.state.budget_date:
            self.state.sent_on_date = max(0, self.state.sent_on_date - 1)
        message.counted_date = None

    def send_order(self, message: Message, attempt: int) -> SendOrder:
        """The message is being sent: what its attempt needs (the first one rides on its approval or release)."""
        message.status, message.attempts, message.retry_at = "sending", attempt, None
        newer = next((m.message_id for m in self.state.messages if m.seq > message.seq
                      and m.message_data.type == message.message_data.type
                      and m.status not in ("dropped", "failed")), None)
        return SendOrder(
            contact=self.state.contact, message_data=message.message_data, attempt=attempt,
            # Fresh context matters once time has passed: a message sent as it is queued is current.
            check_relevance=attempt == 1 and message.requires_fresh_context and message.deferred_at is not None,
            queued_at=message.queued_at, expires_at=message.expires_at, superseded_by=newer,
            last_inbound_at=self.state.last_inbound_at, text=message.text if attempt > 1 else None,
        )

    def decide(self, message: Message, decision: Literal["approved", "deferred", "released", "dropped"],
               reason: str, rule: str, *, budget_before: int | None = None, send: SendOrder | None = None) -> None:
        used = self.used(self.now)
        before = used if budget_before is None else budget_before
        local = self.now.astimezone(self.tz)
        inputs = DecisionInputs(
            at=self.now, local_time=local.isoformat(), local_date=local.date().isoformat(),
            timezone=self.tz.key, tz_version=TZ_VERSION, active=self.active(),
            last_inbound_at=self.state.last_inbound_at,
            in_quiet_hours=quiet_window(self.now, self.tz, self.quiet_hours) is not None,
            quiet_hours=self.quiet_hours, daily_limit=self.daily_limit, budget_before=before, budget_after=used,
            rule=rule,
        )
        common = {"user_id": self.state.user_id, "message_id": message.message_id, "agent_id": message.agent_id,
                  "priority": message.priority, "reason": reason, "inputs": inputs}
        until = self.deferred_until(message.due_at) if decision == "deferred" and message.due_at else None
        if decision == "deferred":
            envelope = self.emit(MessageDeferred(**common, due_at=message.due_at, deferred_until=until))
        elif decision == "dropped":
            envelope = self.emit(MessageDropped(**common))
        else:
            envelope = self.emit({"approved": MessageApproved, "released": MessageReleased}[decision](**common,
                                                                                                  send=send))
        if decision == "dropped":
            message.status, message.reason = "dropped", reason
        elif decision == "deferred":
            message.status, message.reason = "deferred", reason
        else:
            message.reason = reason
        message.decided_at = self.now
        message.decisions = [*message.decisions, Decision(
            decision=decision, reason=reason, event_id=str(envelope.event_id), at=self.now,
            due_at=message.due_at if decision == "deferred" else None, deferred_until=until, inputs=inputs)]

    def deferred_until(self, due: datetime) -> DeferredUntil:
        """A due instant as the user reads it: their wall clock and zone abbreviation then, and the tz version."""
        local = due.astimezone(self.tz)
        return DeferredUntil(at=due.astimezone(UTC), local_time=local.isoformat(), timezone=self.tz.key,
                             abbreviation=local.tzname() or "", tz_version=TZ_VERSION)

    def find(self, message_id: str, status: str | None = None) -> Message | None:
        for message in self.state.messages:
            if message.message_id == message_id:
                return message if status is None or message.status == status else None
        return None

    def schedule_wakeup(self) -> None:
        """Ask for a tick at the earliest time a waiting message can change (due, expiry, deadline, retry)."""
        times: list[datetime] = []
        for m in self.state.messages:
            if m.status == "deferred":
                times.extend(t for t in (m.due_at, m.expires_at) if t is not None)
            elif m.status == "retrying" and m.retry_at is not None:
                times.append(m.retry_at)
        wakeup = min(times, default=None)
        if wakeup != self.state.wakeup_at:
            self.state.wakeup_at = wakeup
            self.emit(WakeupScheduled(user_id=self.state.user_id, due_at=wakeup))


def _prune(state: OutboundState, config: OutboundConfig) -> None:
    # Read-model rows are never deleted: a terminal message leaves the state only long after its last row was written.
    terminal = [m for m in state.messages if m.status in TERMINAL]
    if len(terminal) > config.max_terminal_messages:
        dropped = {m.message_id for m in terminal[:len(terminal) - config.max_terminal_messages]}
        state.messages = [m for m in state.messages if m.message_id not in dropped]
