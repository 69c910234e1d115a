"""`baton api`: one HTTP server for ingest (write side) and queries (read side), OpenAPI at /docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

from projections.api import query_router
from projections.migrations import apply_migrations
from streams.ingest import ingest_router
from streams.publisher import Publisher
from streams.settings import Settings
from streams.tenants import load_tenants
from streams.topics import ensure_topics


def create_api(settings: Settings) -> FastAPI:
    """The API app; broker and database connections open in its lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ensure_topics(settings)
        await apply_migrations(settings.database_url)
        async with Publisher(settings) as publisher, AsyncConnectionPool(
            settings.database_url, min_size=1, max_size=8, open=False
        ) as pool:
            app.state.publisher = publisher
            app.state.pool = pool
            yield

    app = FastAPI(
        title="Baton",
        version="0.1.0",
        description="Event ingest, WhatsApp webhook and read-model queries for Baton.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.tenants = load_tenants(settings.tenants_file)
    app.include_router(ingest_router())
    app.include_router(query_router())

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def run_api(settings: Settings, port: int | None = None) -> None:
    """Serve the API with uvicorn until SIGINT/SIGTERM."""
    import uvicorn

    uvicorn.run(
        create_api(settings),
        host=settings.api_host,
        port=port if port is not None else settings.api_port,
        log_level="warning",
        access_log=False,
    )
