"""Read-only views per domain; every query is scoped to one tenant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from projections import ProjectionError

Source = AsyncConnection | AsyncConnectionPool


class InvalidCursor(ProjectionError):
    """A paging cursor that this package did not produce."""


@asynccontextmanager
async def connection(source: Source) -> AsyncIterator[AsyncConnection]:
    """A connection from a pool, or the connection itself."""
    if isinstance(source, AsyncConnectionPool):
        async with source.connection() as conn:
            yield conn
    else:
        yield source
