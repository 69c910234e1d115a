"""Versioned SQL migrations (NNN_name.sql, unqualified names): the core set, then each domain's, into any schema."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import NamedTuple

from psycopg import AsyncConnection, sql

from projections import ProjectionError
from streams.registry import migration_sources

CORE = Path(__file__).parent / "core"
_FILE_NAME = re.compile(r"^(\d+)_(\w+)\.sql$")


class MigrationError(ProjectionError):
    """A migration file is misnamed, two share a version, or a directory is missing."""


class Migration(NamedTuple):
    """One migration file of one source (core or a domain)."""

    source: str
    version: int
    name: str
    sql: str


@cache
def migrations(source: str, directory: Path) -> tuple[Migration, ...]:
    """Every migration of one directory in version order."""
    if not directory.is_dir():
        raise MigrationError(f"migrations of {source!r}: {directory} is not a directory")
    found: dict[int, Migration] = {}
    for path in directory.glob("*.sql"):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration file {path} is not named NNN_name.sql")
        version = int(match[1])
        if version in found:
            raise MigrationError(f"migrations {found[version].name} and {match[2]} of {source!r} share version {version}")
        found[version] = Migration(source, version, match[2], path.read_text(encoding="utf-8"))
    return tuple(found[v] for v in sorted(found))


def all_migrations(sources: Sequence[tuple[str, Path]]) -> list[Migration]:
    """The core migrations, then each source's, each in version order."""
    return [m for source, directory in [("core", CORE), *sources] for m in migrations(source, directory)]


async def apply_migrations(
    target: str | AsyncConnection, schema: str = "public", sources: Sequence[tuple[str, Path]] | None = None,
) -> list[tuple[str, int]]:
    """Create `schema` if needed and apply pending migrations of core and `sources` (default: the registered
    domains'); returns the (source, version) pairs applied."""
    if sources is None:
        sources = migration_sources()
    if isinstance(target, str):
        async with await AsyncConnection.connect(target, autocommit=True) as conn:
            return await _apply(conn, schema, sources)
    return await _apply(target, schema, sources)


async def _apply(conn: AsyncConnection, schema: str, sources: Sequence[tuple[str, Path]]) -> list[tuple[str, int]]:
    async with conn.transaction():
        # Processes starting together (projector, API) serialize here; later ones find nothing pending.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('baton.migrations'), hashtext(%s))", (schema,))
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        previous = await (await conn.execute("SELECT current_setting('search_path')")).fetchone()
        await conn.execute("SELECT set_config('search_path', %s, true)", (sql.Identifier(schema).as_string(conn),))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (source text NOT NULL, version integer NOT NULL,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (source, version))"
        )
        cur = await conn.execute("SELECT source, version FROM schema_migrations")
        applied = set(await cur.fetchall())
        pending = [m for m in all_migrations(sources) if (m.source, m.version) not in applied]
        for migration in pending:
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (source, version, name) VALUES (%s, %s, %s)",
                (migration.source, migration.version, migration.name),
            )
        await conn.execute("SELECT set_config('search_path', %s, true)", (previous[0],))
    return [(m.source, m.version) for m in pending]
