"""The web console at /console: static files, the list of pages, and each page's ES module.

Pages are the registered domains' (`Domain.console_page`) and the system ones (trace, lag and dead letters).
Nothing is fetched from the internet at run time and nothing is built: the browser loads the modules as they are.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from streams.registry import Domain

CONSOLE = Path(__file__).resolve().parent
SYSTEM_PAGES = (("trace", "Trace", CONSOLE / "pages" / "trace.js"), ("system", "System", CONSOLE / "pages" / "system.js"))


def mount_console(app: FastAPI, domains: tuple[Domain, ...]) -> None:
    """Serve the console and one page per domain that declares one, then the system pages."""
    pages = [(d.name, d.name.replace("_", " ").capitalize(), d.console_page) for d in domains if d.console_page]
    pages += list(SYSTEM_PAGES)
    scripts = {name: path for name, _, path in pages}
    router = APIRouter(include_in_schema=False)

    @router.get("/console")
    async def index() -> FileResponse:
        return FileResponse(CONSOLE / "static" / "index.html")

    @router.get("/favicon.ico")  # what a browser asks for on any page without an icon link (/docs)
    async def favicon() -> FileResponse:
        return FileResponse(CONSOLE / "static" / "favicon.svg", media_type="image/svg+xml")

    @router.get("/console/pages.json")
    async def page_list() -> list[dict[str, str]]:
        return [{"id": name, "title": title, "script": f"/console/pages/{name}.js"} for name, title, _ in pages]

    @router.get("/console/pages/{name}.js")
    async def page(name: str) -> FileResponse:
        if name not in scripts:
            raise HTTPException(404, f"no console page {name!r}")
        return FileResponse(scripts[name], media_type="text/javascript")

    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=CONSOLE / "static"), name="console-static")
