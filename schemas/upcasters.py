"""Upcasters: pure functions lifting an old payload document one schema version up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# (event type, from_version) -> function returning the document at from_version + 1.
# A breaking change registers its upcaster here and bumps the type's version in the codec.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}
