"""Policies as events: what every fold decides with, adopted on the log.

A policy is a document of sections, one per domain that decides (outbound: quiet hours and budgets; workflow: the
template and gate flags; steps: default limits and flags; conversations: the session timeout; learning: bounds),
named by its content hash. `policy.adopted` makes one the policy in force for a tenant, or for every tenant
without one of its own (scope "*"). Every event entering Baton carries the hash of the policy in force for its
tenant (Envelope.policy), and folds decide with that policy, so a replay decides as the live fold did.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from schemas.catalog import EventCatalog
from schemas.codec import register_catalog
from schemas.envelope import Payload

DEFAULT_SCOPE = "*"  # the policy of every tenant without its own

Sections = dict[str, dict[str, Any]]


class PolicyAdopted(Payload, frozen=True, kw_only=True):
    """A scope's policy from now on: every section in full, its content hash, the one it replaced and why."""

    scope: str  # a tenant id, or "*"
    policy: str  # content_hash(sections)
    sections: Sections
    previous: str | None = None
    reason: str  # "configured": the environment at start differed from the policy on the log; "command"


def content_hash(sections: Sections) -> str:
    """The hash naming a policy: SHA-256 of its canonical JSON (keys sorted)."""
    return hashlib.sha256(msgspec.json.encode(sections, order="sorted")).hexdigest()


def policy_stream_id(scope: str) -> str:
    return f"policy:{scope}"


CATALOG = register_catalog(EventCatalog(
    domain="policies",
    events={"policy.adopted": PolicyAdopted},
    ingestible=frozenset(),
    stream_id=lambda _tenant_id, payload: policy_stream_id(payload.scope),  # type: ignore[attr-defined]
))
