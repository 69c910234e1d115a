"""The learning domain's read side: read models, views, query routes, migrations, console page."""

from __future__ import annotations

from pathlib import Path

MIGRATIONS = Path(__file__).parent / "migrations"
CONSOLE_PAGE = Path(__file__).parent / "console.js"
