"""Versioned SQL migrations (NNN_name.sql, unqualified names) applied in order into any schema."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import NamedTuple

from psycopg import AsyncConnection, sql

from projections import ProjectionError

DIRECTORY = Path(__file__).parent
_FILE_NAME = re.compile(r"^(\d+)_(\w+)\.sql$")


class MigrationError(ProjectionError):
    """A migration file is misnamed or two share a version."""


class Migration(NamedTuple):
    """One migration file."""

    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """Every migration in version order."""
    found: dict[int, Migration] = {}
    for path in DIRECTORY.glob("*.sql"):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration file {path.name} is not named NNN_name.sql")
        version = int(match[1])
        if version in found:
            raise MigrationError(f"migrations {found[version].name} and {match[2]} share version {version}")
        found[version] = Migration(version, match[2], path.read_text(encoding="utf-8"))
    return tuple(found[v] for v in sorted(found))


async def apply_migrations(target: str | AsyncConnection, schema: str = "public") -> list[int]:
    """Create `schema` if needed and apply its pending migrations; returns the versions applied."""
    if isinstance(target, str):
        async with await AsyncConnection.connect(target, autocommit=True) as conn:
            return await _apply(conn, schema)
    return await _apply(target, schema)


async def _apply(conn: AsyncConnection, schema: str) -> list[int]:
    async with conn.transaction():
        # Processes starting together (projector, API) serialize here; later ones find nothing pending.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('baton.migrations'), hashtext(%s))", (schema,))
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        previous = await (await conn.execute("SELECT current_setting('search_path')")).fetchone()
        await conn.execute("SELECT set_config('search_path', %s, true)", (sql.Identifier(schema).as_string(conn),))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        applied = {row[0] for row in await (await conn.execute("SELECT version FROM schema_migrations")).fetchall()}
        pending = [m for m in migrations() if m.version not in applied]
        for migration in pending:
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (migration.version, migration.name)
            )
        await conn.execute("SELECT set_config('search_path', %s, true)", (previous[0],))
    return [m.version for m in pending]
