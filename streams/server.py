"""`baton api`: one HTTP server for ingest (write side) and queries (read side), OpenAPI at /docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from psycopg_pool import AsyncConnectionPool

from agents.tenants import load_tenants
from projections.console.routes import mount_console
from projections.migrations import apply_migrations
from projections.trace.routes import trace_router
from streams.asyncapi import asyncapi_router
from streams.edge import RequestGuard, configure_bounded_logging
from streams.ingest import ingest_router
from streams.metrics import EdgeMetrics, exposition
from streams.operations import ops_router
from streams.policies import adopt_configured, configured_sections
from streams.process import tune_gc
from streams.publisher import EventTooLarge, Publisher
from streams.registry import load_domains, migration_sources
from streams.settings import Settings, require_secure
from streams.topics import ensure_topics


def create_api(settings: Settings) -> FastAPI:
    """The API app; broker and database connections open in its lifespan. Refuses insecure production secrets."""
    require_secure(settings)
    configure_bounded_logging()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ensure_topics(settings)
        await apply_migrations(settings.database_url, sources=migration_sources(settings))
        async with Publisher(settings) as publisher, AsyncConnectionPool(
            settings.database_url, min_size=1, max_size=8, open=False
        ) as pool:
            app.state.publisher = publisher
            app.state.pool = pool
            await adopt_configured(publisher.policies, configured_sections(settings), publisher.publish)
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
    app.include_router(asyncapi_router())  # no token, like /openapi.json: schemas and topic names only
    app.include_router(trace_router())
    app.include_router(ops_router())
    domains = load_domains(settings)
    for domain in domains:
        for router in domain.routers():
            app.include_router(router)
    mount_console(app, domains)

    # Innermost first: the guard answers before any route; the metrics count its refusals too.
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_request_bytes)
    app.add_middleware(EdgeMetrics)

    @app.exception_handler(EventTooLarge)
    async def event_too_large(_request: Request, exc: EventTooLarge) -> JSONResponse:
        return JSONResponse({"detail": f"the event log does not take an event this large, so a retry cannot "
                                       f"succeed: {str(exc)[:300]}"}, status_code=413)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_edge_answers(FastAPI.openapi(app), settings.max_request_bytes)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/metrics", tags=["ops"], include_in_schema=False)
    async def prometheus_metrics() -> Response:
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def document_edge_answers(document: dict[str, Any], max_request_bytes: int) -> dict[str, Any]:
    """The OpenAPI document saying what is sent: every operation may answer 413 (the one body limit) and 422 (the
    edge guard's NUL, UTF-8, depth and number checks), and a 422's `detail` is FastAPI's list of {loc, msg, type}
    or, from Baton's own checks of a body, one string `field.path: problem`."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("ValidationError", {
        "type": "object", "title": "ValidationError", "required": ["loc", "msg", "type"],
        "properties": {"loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                       "msg": {"type": "string"}, "type": {"type": "string"}}})
    schemas["HTTPValidationError"] = {
        "type": "object", "title": "HTTPValidationError", "required": ["detail"],
        "properties": {"detail": {
            "title": "Detail",
            "description": "What is wrong and where: a list of {loc, msg, type} (request validation and the edge "
                           "guard), or one string `field.path: problem` (a route's own checks of the body).",
            "anyOf": [{"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}},
                      {"type": "string"}]}}}
    schemas["RequestTooLarge"] = {
        "type": "object", "title": "RequestTooLarge", "required": ["detail"],
        "properties": {"detail": {"type": "string"}, "limit_bytes": {"type": "integer"}}}
    too_large = {"description": f"The request body exceeds BATON_MAX_REQUEST_BYTES ({max_request_bytes} bytes "
                                "here; `limit_bytes` says it), or the event it makes exceeds what the broker takes",
                 "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RequestTooLarge"}}}}
    invalid = {"description": "Validation Error",
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}}
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"].setdefault("413", too_large)
                operation["responses"].setdefault("422", invalid)
    return document


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
    tune_gc()  # the app, its routes and every domain are built
    uvicorn.Server(config).run(sockets=[sock])
