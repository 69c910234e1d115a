"""The costs domain's worker configuration: its fold, which needs no settings; the domain has no effects."""

from __future__ import annotations

from agents.batching import Folder
from agents.costs.fold import fold
from streams.settings import Settings


def costs_folder(_settings: Settings) -> Folder:
    """The cost ledger fold (no configuration)."""
    return Folder(fold=fold, config=None)
