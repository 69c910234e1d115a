"""A local fake of the Graph API messages endpoint: a real HTTP server the real WhatsApp sender talks to.

A rule decides each request's fate from what the server sees (the business number, the message as the contact
would see it, how many times that message arrived, how many requests of that number are in flight): deliver it,
throttle it (an error answer, with or without `Retry-After`), reset the connection once the request is read, or
hold it unanswered. The fake records every arrival and the most requests it ever
had in flight per number; it can start with its port bound but not listening, so connections are refused, and
answer after a latency, so that requests overlap.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Arrival:
    """One request as the fake sees it when it decides what to do."""

    number: str  # phone_number_id from the path
    identity: tuple[str, str]  # (to, text): the message as the contact sees it
    attempt: int  # how many times this identity has arrived, this one included
    in_flight: int  # requests of this number being handled now, this one included


@dataclass(frozen=True)
class Answer:
    """What the fake does with a request: deliver, throttle, reset or hold."""

    kind: str = "deliver"
    status: int = 200
    code: int | None = None
    retry_after: str | None = None


DELIVER = Answer()
RESET = Answer("reset")  # the request read whole, nothing sent, the connection reset: the client cannot know
HOLD = Answer("hold")  # delivered, answered only when released: a client timeout loses the answer


def throttle(status: int, code: int, retry_after: str | None = None) -> Answer:
    return Answer("throttle", status, code, retry_after)


Rule = Callable[[Arrival], Answer]


@dataclass
class Record:
    """One arrival and what the fake did with it; `wamid` is set when it delivered the message."""

    arrival: Arrival
    answer: Answer
    wamid: str | None = None


class FakeGraph:
    """Serves POST /{phone_number_id}/messages on 127.0.0.1; see the module docstring."""

    def __init__(self, rule: Rule = lambda _arrival: DELIVER, *, listening: bool = True, backlog: int = 1024,
                 latency_s: float = 0.0, token: str = "graph-token") -> None:
        self.rule, self.latency_s, self.token = rule, latency_s, token
        self.records: list[Record] = []
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.released = threading.Event()
        fake = self

        class Server(ThreadingHTTPServer):
            request_queue_size = backlog
            daemon_threads = True

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                number = self.path.strip("/").split("/")[-2]
                with fake.lock:
                    fake.in_flight[number] += 1
                    fake.max_in_flight[number] = max(fake.max_in_flight[number], fake.in_flight[number])
                self.counted = number
                try:
                    self._handle(number)
                finally:
                    self._done()

            def _handle(self, number: str) -> None:
                assert self.headers["Authorization"] == f"Bearer {fake.token}", self.headers["Authorization"]
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                identity = (body["to"], body["text"]["body"])
                with fake.lock:
                    attempt = 1 + sum(r.arrival.identity == identity for r in fake.records)
                    arrival = Arrival(number, identity, attempt, fake.in_flight[number])
                    answer = fake.rule(arrival)
                    record = Record(arrival, answer)
                    fake.records.append(record)
                    if answer.kind in ("deliver", "hold"):
                        record.wamid = f"wamid.fake.{len(fake.records)}"
                if answer.kind == "reset":
                    return self._reset()
                if answer.kind == "hold":
                    fake.released.wait(30)
                elif fake.latency_s:
                    time.sleep(fake.latency_s)  # the provider's answer time, so that requests overlap
                if answer.kind == "throttle":
                    error = {"message": f"(#{answer.code}) Rate limit hit", "type": "OAuthException",
                             "code": answer.code, "fbtrace_id": "AfakeTrace"}
                    return self._reply(answer.status, {"error": error}, answer.retry_after)
                self._reply(200, {"messaging_product": "whatsapp",
                                  "contacts": [{"input": identity[0], "wa_id": identity[0]}],
                                  "messages": [{"id": record.wamid}]})

            def _reply(self, status: int, document: dict[str, Any], retry_after: str | None = None) -> None:
                self._done()  # before the answer leaves: the client frees its slot only after reading it
                raw = json.dumps(document).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    if retry_after is not None:
                        self.send_header("Retry-After", retry_after)
                    self.end_headers()
                    self.wfile.write(raw)
                except OSError:
                    pass  # the client gave up (a held answer after its timeout)

            def _reset(self) -> None:
                self._done()
                self.close_connection = True
                # SO_LINGER 0: closing sends RST instead of FIN.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()

            def _done(self) -> None:
                """This request no longer counts as in flight (once per request)."""
                number, self.counted = getattr(self, "counted", None), None
                if number is not None:
                    with fake.lock:
                        fake.in_flight[number] -= 1

            def handle(self) -> None:
                try:
                    super().handle()
                except OSError:
                    pass  # a connection this fake reset

            def log_message(self, *_args: object) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.server.allow_reuse_address = True
        self.server.server_bind()  # bound, not listening: connections are refused until listen()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v21.0"
        self.listening = False
        if listening:
            self.listen()

    def listen(self) -> None:
        """Start accepting connections."""
        if not self.listening:
            self.listening = True
            self.server.server_activate()
            threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> Counter[tuple[str, str]]:
        """How many times each message was delivered to its contact."""
        with self.lock:
            return Counter(r.arrival.identity for r in self.records if r.wamid is not None)

    def arrivals(self) -> Counter[tuple[str, str]]:
        """How many times each message reached the fake (throttled and reset ones included)."""
        with self.lock:
            return Counter(r.arrival.identity for r in self.records)

    def close(self) -> None:
        self.released.set()
        if self.listening:
            self.server.shutdown()
        self.server.server_close()
