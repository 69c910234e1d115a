"""Policy read-model rows: one policy_adoptions row per adoption, the last of its scope in force."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from agents.policies.fold import PolicyScope
from projections.readmodel import ReadModel


def adoption_rows(state: PolicyScope) -> Iterator[tuple]:
    last = len(state.adoptions) - 1
    for seq, a in enumerate(state.adoptions):
        yield (a.event_id, state.scope, seq, a.policy, a.previous, msgspec.json.encode(a.sections).decode(),
               a.reason, a.actor, a.adopted_at, seq == last)


ADOPTIONS = ReadModel(
    table="policy_adoptions",
    columns=(
        ("event_id", "text"), ("scope", "text"), ("seq", "integer"), ("policy", "text"), ("previous", "text"),
        ("sections", "jsonb"), ("reason", "text"), ("actor", "text"), ("adopted_at", "timestamptz"),
        ("in_force", "boolean"),
    ),
    rows=adoption_rows,
)
