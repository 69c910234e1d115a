"""Unit tests see Baton's defaults only: no setting leaks in from the environment that runs them."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from streams.settings import get_settings

# The standard names Settings reads besides its BATON_ prefix.
_STANDARD = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")


def _read_by_settings(name: str) -> bool:
    return name.startswith(("BATON_", "ANTHROPIC_")) or name in _STANDARD


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Remove every variable Settings would read and forget any cached Settings, before and after each test."""
    for name in [name for name in os.environ if _read_by_settings(name)]:
        monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
