"""The tally domain's worker configuration: its fold, which needs no settings, and its effect worker."""

from __future__ import annotations

from agents.batching import Folder
from streams.settings import Settings
from tests.tally.effects import Announcer
from tests.tally.fold import fold


def tally_folder(_settings: Settings) -> Folder:
    """The tally fold (no configuration)."""
    return Folder(fold=fold, config=None)


def build_effects(_settings: Settings) -> Announcer:
    """The milestone announcer (no configuration)."""
    return Announcer()
