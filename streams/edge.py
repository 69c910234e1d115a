"""The API's edge guard: one request-size limit for every route, and the input no route can take answered 4xx
before a route sees it (a NUL in the path or query, a JSON body that is not UTF-8, nested too deeply or holding a
number too long to be one), plus the bounded error logging of the API process.

Every refusal is cheap and linear in the body (at most `max_request_bytes`): nothing is parsed into objects here.
A 422 has the OpenAPI document's `HTTPValidationError` shape (`detail`: a list of `{loc, msg, type}`); a 413 names
the limit. A route that must authenticate a body before reading it (the WhatsApp webhook, signed by Meta) is
marked with `raw_body` and checks the JSON itself, after the signature (`check_json`): the JSON checks run when a
route first reads the body (routing is done by then), so the guard needs no list of routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import reprlib
from collections.abc import Callable, Iterable
from itertools import accumulate
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import msgspec
import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_JSON_DEPTH = 64  # levels of arrays and objects in a request body (event payloads hold at most 32)
MAX_NUMBER_CHARS = 100  # characters of one JSON number (int64 has 20, a double's longest form 24)
DRAIN_BYTES, DRAIN_S = 2 * 1024 * 1024, 2.0  # what is still read of a body refused as too large

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_LONG_NUMBER = re.compile(rb"[-+0-9.eE]{%d,}" % (MAX_NUMBER_CHARS + 1))
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DELTA = [0] * 256
_DELTA[ord("[")] = _DELTA[ord("{")] = 1
_DELTA[ord("]")] = _DELTA[ord("}")] = -1
_JSON_TYPES = ("application/json",)

F = TypeVar("F", bound=Callable[..., Any])


def raw_body(endpoint: F) -> F:
    """Mark a route that reads and authenticates its raw body itself: the guard checks its size, not its JSON."""
    endpoint.__baton_raw_body__ = True  # type: ignore[attr-defined]
    return endpoint


class UnreadableBody(HTTPException):
    """A JSON body no route can take (422, `detail` a list of one {loc, msg, type}); raised when a route reads it."""

    def __init__(self, found: dict[str, Any]) -> None:
        super().__init__(422, [found])  # type: ignore[arg-type]


def problem(loc: Iterable[str | int], msg: str, kind: str = "value_error") -> dict[str, Any]:
    """One item of a 422's `detail`, as the OpenAPI document's ValidationError describes it."""
    return {"loc": list(loc), "msg": msg, "type": kind}


def check_json(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any] | None:
    """The problem that makes a JSON body unacceptable before it is parsed, or None (syntax is the parser's)."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return problem(["body"], f"the body is not valid UTF-8 (byte {exc.start} is {body[exc.start]:#04x})",
                       "json_invalid")
    skeleton = _STRING.sub(b'""', body)
    if (number := _LONG_NUMBER.search(skeleton)) is not None:
        return problem(["body"], f"a number of {number.end() - number.start()} characters: at most "
                                 f"{MAX_NUMBER_CHARS} are accepted", "json_invalid")
    brackets = skeleton.translate(None, _NOT_BRACKETS)
    if len(brackets) > max_depth and max(accumulate(map(_DELTA.__getitem__, brackets))) > max_depth:
        return problem(["body"], f"nested deeper than {max_depth} levels of arrays and objects", "json_invalid")
    return None


def nul_in_target(scope: Scope) -> dict[str, Any] | None:
    """The problem of a path or query parameter holding a NUL character (PostgreSQL cannot take one), or None."""
    if "\x00" in scope.get("path", ""):
        return problem(["path"], "the path contains a NUL character (%00)")
    query = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                return problem(["query", name.replace("\x00", "\\x00")[:64]],
                               "the query parameter contains a NUL character (%00)")
    return None


def _media_type(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower().decode("latin-1")
    return ""


def _is_json(media_type: str) -> bool:
    return media_type in _JSON_TYPES or (media_type.startswith("application/") and media_type.endswith("+json"))


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class RequestGuard:
    """ASGI middleware: 413 above `max_body_bytes` on every route, 422 for what no route can take (module doc)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_json_depth: int = MAX_JSON_DEPTH) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if (found := nul_in_target(scope)) is not None:
            await _answer(send, 422, {"detail": [found]})
            return
        limit = self.max_body_bytes
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _too_large(send, receive, limit, declared)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending the whole body
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(send, receive, limit, None)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        await self.app(scope, self._replay(scope, body, receive), send)

    def _replay(self, scope: Scope, body: bytes, receive: Receive) -> Receive:
        """The buffered body for the route's first read, once it passes the JSON checks (unless the route that
        reads it is marked raw_body); then the client's own receive (a disconnect)."""
        sent = False

        async def replayed() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            raw = getattr(scope.get("endpoint"), "__baton_raw_body__", False)
            if body and not raw and _is_json(_media_type(scope)):
                if (found := check_json(body, self.max_json_depth)) is not None:
                    raise UnreadableBody(found)
            return {"type": "http.request", "body": body, "more_body": False}

        return replayed


async def _too_large(send: Send, receive: Receive, limit: int, declared: int | None) -> None:
    # A connection closed with unread bytes is reset, and the client may lose the answer before reading it: the
    # rest of the body is read and dropped first (bounded in bytes and time); the connection closes only if some
    # is left.
    finished = False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_S):
            drained = 0
            while drained <= DRAIN_BYTES:
                message = await receive()
                drained += len(message.get("body", b""))
                if message["type"] != "http.request" or not message.get("more_body", False):
                    finished = True
                    break
    size = f" of {declared} bytes" if declared is not None else ""
    await _answer(send, 413, {"detail": f"body{size} exceeds the limit of {limit} bytes", "limit_bytes": limit},
                  close=not finished)


async def _answer(send: Send, status: int, content: dict[str, Any], close: bool = False) -> None:
    body = msgspec.json.encode(content)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": headers + [(b"connection", b"close")] if close else headers})
    await send({"type": "http.response.body", "body": body})


# Logging: a value or a local variable is rendered through a bounded repr, an exception without its locals.
_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother = 3, 200, 200
_repr.maxdict = _repr.maxlist = _repr.maxtuple = _repr.maxset = 20
MAX_LOG_VALUE = 1000


def bounded(value: object) -> object:
    """A log value as it will be rendered: scalars as they are, anything else a repr of bounded size and depth."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return value if len(value) <= MAX_LOG_VALUE else value[:MAX_LOG_VALUE] + f"… ({len(value)} characters)"
    try:
        return _repr.repr(value)[:MAX_LOG_VALUE]
    except Exception as exc:  # a broken __repr__ must not break the log line
        return f"<{type(value).__name__}: unrepresentable ({type(exc).__name__})>"


def _bound_values(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key, value in event_dict.items():
        if key != "exc_info":
            event_dict[key] = bounded(value)
    return event_dict


def configure_bounded_logging() -> None:
    """structlog without rich's locals (a deep structure took minutes to render) and with bounded values."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.StackInfoRenderer(),
            structlog.dev.set_exc_info,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            _bound_values,
            structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
        cache_logger_on_first_use=False,
    )
