"""Integration fixtures: Baton's real processes (worker, projector, API) on the test broker and database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from agents.tenants import Tenant, load_tenants
from projections.migrations import apply_migrations
from projections.readmodel import ReadModel, write_rows
from streams.auth import issue_token
from streams.runtime import Runtime
from streams.settings import Settings

# Re-exported for modules written before tests/fixtures: import them from there.


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    """Worker, projector and API as child processes, as `baton dev` runs them but never restarted.

    The API gets any free port (moved if it is taken meanwhile); a failed start stops what it started.
    """
    with Runtime(settings.model_copy(update={"api_port": 0})).start() as runtime:
        yield runtime


@pytest.fixture
def acme(settings: Settings) -> Tenant:
    return load_tenants(settings.tenants_file).by_id["acme"]


@pytest.fixture
def api(runtime: Runtime) -> Iterator[httpx.Client]:
    """An HTTP client for the running API, authenticated as tenant acme."""
    token = issue_token(runtime.settings, "acme")
    with httpx.Client(base_url=runtime.api_url, timeout=10, headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


@pytest.fixture
async def migrated_conn(database_url: str) -> AsyncIterator[AsyncConnection]:
    """An autocommit connection to a fresh database with every registered migration applied."""
    await apply_migrations(database_url)
    async with await AsyncConnection.connect(database_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def project_rows(migrated_conn: AsyncConnection) -> Callable[[ReadModel, Iterable[Any]], Awaitable[list[dict]]]:
    """`await project_rows(model, states)`: write the rows the states give the model (one statement, as the projector
    does), then read the whole table back by column name, ordered by its key."""

    async def project(model: ReadModel, states: Iterable[Any]) -> list[dict]:
        async with migrated_conn.transaction(), migrated_conn.cursor() as cur:
            await write_rows(cur, model, [row for state in states for row in model.rows_of(state)])
        query = sql.SQL("SELECT * FROM {} ORDER BY {}").format(sql.Identifier(model.table), sql.Identifier(model.key))
        async with migrated_conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query)
            return await cur.fetchall()

    return project
