"""The outbound what-if re-fold: the log folded again under another policy, no network and no sends, with each
message's outcome before and after."""

from __future__ import annotations

import json
import math
import tomllib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from agents.errors import AgentError
from agents.outbound.fold import OutboundConfig, OutboundState, fold, parse_hhmm
from agents.outbound.wakeups import tick_for
from agents.zones import UnknownZone, zone
from schemas import Envelope
from schemas.outbound import DECISION_EVENTS, MessageQueued, QuietHours

# The policy a simulation can try (`baton outbound simulate --policy FILE`): each key and what it means.
POLICY_KEYS = {
    "daily_limit": "every user's daily limit (replaces their preference)",
    "quiet_hours": 'every user\'s quiet hours, "HH:MM-HH:MM" or {start, end} (replaces their preference)',
    "active_window_minutes": "inbound within this many minutes makes a user active",
    "max_deferral_hours": "longest a message waits before it is dropped",
    "default_timezone": "zone of users without preferences (IANA)",
}


class PolicyError(AgentError, ValueError):
    """A simulation policy that cannot be used; the message names the file and the key."""


def read_policy(path: Path) -> dict[str, Any]:
    """The policy document of a file: JSON when it ends in .json, TOML otherwise; keys are checked by
    `policy_overrides`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        document = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {exc}") from None
    if not isinstance(document, dict):
        raise PolicyError(f"{path}: expected a table of policy keys ({', '.join(POLICY_KEYS)})")
    return document


def policy_overrides(policy: Mapping[str, Any], source: str = "policy") -> dict[str, Any]:
    """The OutboundSettings.fold_config overrides of a policy (keys of POLICY_KEYS); PolicyError names the key."""
    if unknown := [key for key in policy if key not in POLICY_KEYS]:
        raise PolicyError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(POLICY_KEYS)})")
    overrides: dict[str, Any] = {}
    for key, value in policy.items():
        try:
            if key == "daily_limit":
                overrides["daily_limit_override"] = _number(value, integer=True)
            elif key == "quiet_hours":
                overrides["quiet_hours_override"] = _quiet_hours(value)
            elif key == "active_window_minutes":
                overrides["active_window"] = timedelta(minutes=_number(value))
            elif key == "max_deferral_hours":
                if (hours := _number(value)) == 0:
                    raise ValueError("must be more than 0")
                overrides["max_deferral"] = timedelta(hours=hours)
            elif key == "default_timezone":
                if not isinstance(value, str):
                    raise TypeError("expected an IANA zone name")
                zone(value)
                overrides["default_timezone"] = value
        except (TypeError, ValueError, UnknownZone) as exc:
            raise PolicyError(f"{source}: key {key}: {exc}") from None
    return overrides


def _number(value: Any, integer: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise TypeError(f"expected {'an integer' if integer else 'a number'}, not {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be a finite number, 0 or more, not {value!r}")
    return value


def _quiet_hours(value: Any) -> QuietHours:
    if isinstance(value, str):
        start, sep, end = value.partition("-")
        if not sep:
            raise ValueError(f"expected HH:MM-HH:MM, not {value!r}")
    elif isinstance(value, Mapping) and set(value) == {"start", "end"}:
        start, end = value["start"], value["end"]
        if not isinstance(start, str) or not isinstance(end, str):
            raise TypeError("start and end are times HH:MM")
    else:
        raise ValueError('expected "HH:MM-HH:MM" or a table with exactly start and end')
    parse_hhmm(start), parse_hhmm(end)
    return QuietHours(start=start, end=end)


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
