"""The policies fold: each scope's adoptions in log order, the last one in force (schemas.policies)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from agents.batching import Folder, FoldState, StateCodec
from schemas import Envelope
from schemas.policies import PolicyAdopted


class Adoption(msgspec.Struct, kw_only=True):
    """One adoption as its event recorded it."""

    event_id: str
    policy: str
    previous: str | None
    sections: dict[str, Any]
    reason: str
    actor: str
    adopted_at: datetime


class PolicyScope(FoldState, kw_only=True):
    """A scope ("*" or a tenant) and every policy adopted there; the last is in force."""

    scope: str
    adoptions: list[Adoption] = []


CODEC = StateCodec.json(PolicyScope)


def fold(state: PolicyScope | None, envelope: Envelope, _config: object) -> tuple[PolicyScope, list[Envelope]]:
    """Add one adoption."""
    adopted: PolicyAdopted = envelope.payload  # type: ignore[assignment]
    state = state or PolicyScope(scope=adopted.scope)
    adoption = Adoption(event_id=str(envelope.event_id), policy=adopted.policy, previous=adopted.previous,
                        sections=adopted.sections, reason=adopted.reason, actor=envelope.actor,
                        adopted_at=envelope.occurred_at)
    return msgspec.structs.replace(state, adoptions=[*state.adoptions, adoption]), []


def policies_folder(_settings: object) -> Folder:
    """The policies fold (it decides nothing, so it has no policy of its own)."""
    return Folder(fold=fold, config=None)
