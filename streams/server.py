"""`baton api`: one HTTP server for ingest (write side) and queries (read side), OpenAPI at /docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from psycopg_pool import AsyncConnectionPool

from projections.api.console import mount_console
from projections.api.ops import ops_router
from projections.api.trace import trace_router
from projections.migrations import apply_migrations
from streams.domains import load_domains, migration_sources
from streams.ingest import ingest_router
from streams.metrics import EdgeMetrics, exposition
from streams.publisher import Publisher
from streams.settings import Settings, require_secure
from streams.tenants import load_tenants
from streams.topics import ensure_topics


def create_api(settings: Settings) -> FastAPI:
    """The API app; broker and database connections open in its lifespan. Refuses insecure production secrets."""
    require_secure(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ensure_topics(settings)
        await apply_migrations(settings.database_url, sources=migration_sources(settings))
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
    app.include_router(trace_router())
    app.include_router(ops_router())
    domains = load_domains(settings)
    for domain in domains:
        for router in domain.routers():
            app.include_router(router)
    mount_console(app, domains)

    app.add_middleware(EdgeMetrics)

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def prometheus_metrics() -> Response:
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def run_api(settings: Settings, port: int | None = None) -> None:
    """Serve the API with uvicorn until SIGINT/SIGTERM; exit EXIT_ADDRESS_IN_USE when the port is taken."""
    import errno
    import socket
    import sys

    import uvicorn

    from streams.runtime import EXIT_ADDRESS_IN_USE

    host, port = settings.api_host, port if port is not None else settings.api_port
    # Bind before building the app, so a taken port is told apart from any other failure.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        print(f"baton api: {host}:{port} is already in use", file=sys.stderr)
        raise SystemExit(EXIT_ADDRESS_IN_USE) from None
    config = uvicorn.Config(create_api(settings), host=host, port=port, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
