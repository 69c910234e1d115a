"""A local fake of Anthropic's Messages API for bench/steps.py: a real HTTP server the real `anthropic` client
talks to, answering every message with one fixed reply.

A trimmed copy of tests/fixtures/anthropic.py (bench does not import tests): the same token count (words and
punctuation marks) and the same prompt-cache usage (a system prompt marked with `cache_control` is written to
the cache on its first use and read from it afterwards), without the tests' request log and custom responders.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_TOKEN = re.compile(r"\w+|[^\w\s]")


def count_tokens(value: Any) -> int:
    """The fake's token count of any text found in a request part."""
    if isinstance(value, str):
        return len(_TOKEN.findall(value))
    if isinstance(value, list):
        return sum(count_tokens(item) for item in value)
    if isinstance(value, dict):
        return sum(count_tokens(v) for k, v in value.items() if k in ("text", "content"))
    return 0


class FakeAnthropic:
    """Serves /v1/messages and /v1/messages/count_tokens on 127.0.0.1 while in its `with` block."""

    def __init__(self, reply: str = "ok") -> None:
        self.reply = reply
        self.requests = 0  # every request, as the message ids count them
        self._cached_prefixes: set[str] = set()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                status, answer = fake.answer(self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests += 1
            number = self.requests
        if path.startswith("/v1/messages/count_tokens"):
            return 200, {"input_tokens": count_tokens(body.get("system")) + count_tokens(body.get("messages"))}
        if not path.startswith("/v1/messages"):
            return 404, {"type": "error", "error": {"type": "not_found_error", "message": path}}
        system = body.get("system")
        prefix_tokens, cache_read, cache_write = 0, 0, 0
        if isinstance(system, list) and any("cache_control" in block for block in system):
            prefix = json.dumps(system, sort_keys=True)
            prefix_tokens = count_tokens(system)
            with self._lock:
                if prefix in self._cached_prefixes:
                    cache_read = prefix_tokens
                else:
                    self._cached_prefixes.add(prefix)
                    cache_write = prefix_tokens
        total = count_tokens(system) + count_tokens(body.get("messages"))
        return 200, {
            "id": f"msg_fake_{number:06d}", "type": "message", "role": "assistant",
            "model": body.get("model", "claude-haiku-4-5"),
            "content": [{"type": "text", "text": self.reply}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": total - prefix_tokens, "output_tokens": count_tokens(self.reply),
                      "cache_creation_input_tokens": cache_write, "cache_read_input_tokens": cache_read},
        }
