"""The policies domain's read side: every adoption, the one in force per scope, and its routes."""

from __future__ import annotations

from pathlib import Path

MIGRATIONS = Path(__file__).parent / "migrations"
