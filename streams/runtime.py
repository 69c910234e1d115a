"""Runs Baton's processes as one supervised group: embedded services when none are configured."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import httpx

from streams.embedded import (
    EmbeddedBroker,
    EmbeddedPostgres,
    child_env,
    die_with_parent,
    free_port,
)
from streams.errors import StreamsError
from streams.local_kafka import LocalKafka
from streams.settings import Settings, settings_env

ROLES = ("worker", "projector", "api")
BROKERS = ("embedded", "kafka")  # what `baton dev --broker` starts where KAFKA_BOOTSTRAP_SERVERS names none
EXIT_ADDRESS_IN_USE = 75  # `baton api` exits with this code when its port is taken (EX_TEMPFAIL)


class RuntimeFailure(StreamsError, RuntimeError):
    """A process of the group failed to start or died."""


@dataclass(frozen=True)
class Restart:
    """A role that exited and is restarted after delay_s; pid is set once it runs again."""

    role: str
    exit_code: int
    log: Path
    delay_s: float
    pid: int | None = None

    def __str__(self) -> str:
        if self.pid is None:
            return f"{self.role} exited with code {self.exit_code}; restarting in {self.delay_s:g} s (log {self.log})"
        return f"{self.role} restarted as pid {self.pid} after exit code {self.exit_code} (log {self.log})"


@dataclass
class Runtime:
    """Broker, PostgreSQL, workers, projector and API; embedded broker/PostgreSQL when not configured.

    Children die with the process that spawned them (Linux). Nothing restarts a child by itself:
    `supervise()`, called periodically (as `baton dev` does), restarts roles that exited.
    An `api_port` of 0 means any free port; the API is moved to another one if it is taken.
    """

    settings: Settings
    workers: int = 1
    local_broker: str = "embedded"  # one of BROKERS, started when the settings name no broker
    broker: EmbeddedBroker | LocalKafka | None = None
    postgres: EmbeddedPostgres | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    clock: Callable[[], float] = field(default_factory=lambda: time.monotonic)
    wall_clock: Callable[[], datetime] = field(default_factory=lambda: lambda: datetime.now(UTC))  # for roles.json
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    give_up_deaths: int = 5  # deaths of one role within give_up_window_s that stop the group
    give_up_window_s: float = 60.0
    healthy_run_s: float = 60.0  # a role that ran this long before dying restarts with the initial backoff
    stop_grace_s: float = 4.0  # SIGTERM → SIGKILL for roles; the services get 3 s more at most
    api_port_attempts: int = 5

    _api_port_auto: bool = field(default=False, init=False, repr=False)
    _spawned_at: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _deaths: dict[str, deque[float]] = field(default_factory=dict, init=False, repr=False)
    _next_delay: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _pending: dict[str, tuple[float, Restart]] = field(default_factory=dict, init=False, repr=False)
    # Per role: restarts, last exit code and time, and whether it is waiting to be restarted (roles.json).
    _history: dict[str, dict[str, Any]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.local_broker not in BROKERS:
            raise ValueError(f"broker {self.local_broker!r}: expected one of {', '.join(BROKERS)}")
        if self.settings.api_port == 0:
            self._api_port_auto = True
            self.settings = self.settings.model_copy(update={"api_port": free_port()})

    @property
    def roles(self) -> tuple[str, ...]:
        """Role names: "worker" alone, or "worker-1".."worker-N", then projector and api."""
        workers = ("worker",) if self.workers == 1 else tuple(f"worker-{i}" for i in range(1, self.workers + 1))
        return (*workers, "projector", "api")

    @property
    def log_dir(self) -> Path:
        return self.settings.data_dir / "logs"

    def log_path(self, role: str) -> Path:
        return self.log_dir / f"{role}.log"

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def start_services(self) -> Settings:
        """Start a broker (embedded, or local Apache Kafka) and embedded PostgreSQL where the settings name none."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        updates: dict[str, object] = {}
        if not self.settings.kafka_bootstrap_servers and self.local_broker == "kafka":
            # The log lives on disk under the data directory and outlives this run, so do the read models.
            self.broker = LocalKafka(self.settings.data_dir / "kafka").start()
            updates |= {"kafka_bootstrap_servers": self.broker.bootstrap_servers, "broker_profile": "kafka",
                        "env": self.settings.env or "development"}
        elif not self.settings.kafka_bootstrap_servers:
            self.broker = EmbeddedBroker().start(self.log_path("broker"))
            updates |= {"kafka_bootstrap_servers": self.broker.bootstrap_servers, "broker_profile": "embedded"}
        if not self.settings.database_url:
            self.postgres = EmbeddedPostgres(self.settings.data_dir / "pgdata").start()
            # Read models derive from the log: a new in-memory broker means an empty log and an empty database.
            updates["database_url"] = (self.postgres.database("baton") if isinstance(self.broker, LocalKafka)
                                       else self.postgres.fresh_database("baton"))
        self.settings = self.settings.model_copy(update=updates)
        self._write_state()
        return self.settings

    def spawn(self, role: str) -> subprocess.Popen:
        """Start one role ("worker", "worker-N", "projector", "api") as a child process with the group's settings."""
        process = self._popen(role)
        self.processes[role] = process
        self._spawned_at[role] = self.clock()
        self._write_state()
        return process

    def _popen(self, role: str) -> subprocess.Popen:
        command = "worker" if role.startswith("worker") else role
        env = settings_env(self.settings)
        if role.startswith("worker-"):
            # Each worker of a group keeps its own Faust data directory (needs the worker_data_dir setting).
            env["BATON_WORKER_DATA_DIR"] = str(self.settings.data_dir / role)
        if role != "api":  # each worker and the projector serve /metrics on a port of their own
            self.metrics_ports.setdefault(role, free_port())
            env["BATON_METRICS_PORT"] = str(self.metrics_ports[role])
        with open(self.log_path(role), "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "streams.cli", command],
                env=child_env(**env),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches only the supervisor, which then stops children in order
                preexec_fn=die_with_parent(),  # noqa: PLW1509 - only calls prctl, resolved beforehand
            )

    def start(self, roles: tuple[str, ...] | None = None, wait_s: float = 60.0) -> Runtime:
        """Start services and roles (default: all); return once the API answers. On failure, stop all of it."""
        try:
            self.start_services()
            for role in roles if roles is not None else self.roles:
                self.spawn(role)
            if "api" in self.processes:
                self.wait_for_api(wait_s)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_for_api(self, wait_s: float) -> None:
        """Wait until the API answers /healthz; move it to another port when a free port it was given got taken."""
        deadline = time.monotonic() + wait_s
        attempts = 1
        while time.monotonic() < deadline:
            api = self.processes["api"]
            if api.poll() == EXIT_ADDRESS_IN_USE and self._api_port_auto and attempts < self.api_port_attempts:
                attempts += 1
                self._move_api()
                self.spawn("api")
                continue
            self.check_alive()
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeFailure(f"API did not answer at {self.api_url} within {wait_s:.0f} s; see {self.log_dir}")

    def _move_api(self) -> None:
        self.settings = self.settings.model_copy(update={"api_port": free_port()})

    def check_alive(self) -> None:
        """Raise when a child or an embedded service has exited."""
        self._check_services()
        for role, process in self.processes.items():
            if process.poll() is not None:
                hint = " (port in use)" if role == "api" and process.returncode == EXIT_ADDRESS_IN_USE else ""
                raise RuntimeFailure(f"{role} exited with code {process.returncode}{hint}; see {self.log_path(role)}")

    def _check_services(self) -> None:
        if isinstance(self.broker, LocalKafka) and not self.broker.alive():
            raise RuntimeFailure(f"local Apache Kafka exited; its log is kept in {self.broker.root};"
                                 f" see {self.broker.nodes[0].log}")
        if self.broker and not self.broker.alive():
            raise RuntimeFailure(f"the embedded broker exited with code {self.broker.process.returncode} and its"  # type: ignore[union-attr]
                                 f" in-memory log is gone; see {self.log_path('broker')}")
        if self.postgres and not self.postgres.alive():
            raise RuntimeFailure(f"the embedded PostgreSQL exited with code {self.postgres.process.returncode};"  # type: ignore[union-attr]
                                 f" see {self.settings.data_dir / 'pgdata' / 'log'}")

    def supervise(self) -> list[Restart]:
        """Restart roles that exited, with backoff; raise RuntimeFailure when one keeps dying or a service died.

        A role's restarts wait backoff_initial_s, doubling up to backoff_max_s; a role that ran for
        healthy_run_s before dying starts over at backoff_initial_s; give_up_deaths deaths within
        give_up_window_s give up. Returns what happened in this call: exits seen (pid None) and respawns.
        """
        now = self.clock()
        self._check_services()
        events: list[Restart] = []
        for role, process in list(self.processes.items()):
            if role in self._pending or process.poll() is None:
                continue
            deaths = self._deaths.setdefault(role, deque())
            deaths.append(now)
            while now - deaths[0] > self.give_up_window_s:
                deaths.popleft()
            if len(deaths) >= self.give_up_deaths:
                raise RuntimeFailure(f"{role} died {len(deaths)} times within {self.give_up_window_s:g} s"
                                     f" (last exit code {process.returncode}); giving up; see {self.log_path(role)}")
            if now - self._spawned_at.get(role, now) >= self.healthy_run_s:
                delay = self.backoff_initial_s
            else:
                delay = self._next_delay.get(role, self.backoff_initial_s)
            self._next_delay[role] = min(delay * 2, self.backoff_max_s)
            event = Restart(role, process.returncode, self.log_path(role), delay)
            self._pending[role] = (now + delay, event)
            self._exited(role, process.returncode, "restarting", backoff_s=delay)
            events.append(event)
        if events:
            self._write_state()
        for role, (due, event) in list(self._pending.items()):
            if now >= due:
                del self._pending[role]
                if role == "api" and event.exit_code == EXIT_ADDRESS_IN_USE and self._api_port_auto:
                    self._move_api()
                history = self._history[role]
                history.update(state="running", restarts=history.get("restarts", 0) + 1)
                history.pop("restart_at", None)
                events.append(replace(event, pid=self.spawn(role).pid))
        return events

    def _exited(self, role: str, exit_code: int, state: str, backoff_s: float | None = None) -> None:
        at = self.wall_clock()
        history = self._history.setdefault(role, {"restarts": 0})
        history.update(state=state, last_exit_code=exit_code, last_exit_at=at.isoformat())
        if backoff_s is not None:
            history.update(backoff_s=backoff_s, restart_at=(at + timedelta(seconds=backoff_s)).isoformat())

    def kill(self, role: str, sig: int = signal.SIGKILL) -> None:
        """Signal one child and wait for it to exit; it is not restarted."""
        process = self.processes.pop(role)
        self._pending.pop(role, None)
        process.send_signal(sig)
        process.wait(30)
        self._exited(role, process.returncode, "stopped")
        self._write_state()

    def pids(self) -> dict[str, int]:
        """Process ids of the supervisor, the embedded services and every running role."""
        pids = {"supervisor": os.getpid()}
        if isinstance(self.broker, LocalKafka):
            pids |= {f"kafka-{node}": pid for node, pid in self.broker.pids.items()}
        elif self.broker and self.broker.pid:
            pids["broker"] = self.broker.pid
        if self.postgres and self.postgres.pid:
            pids["postgres"] = self.postgres.pid
        pids |= {role: p.pid for role, p in self.processes.items() if p.poll() is None}
        return pids

    def roles_state(self) -> dict[str, dict[str, Any]]:
        """Per role: state (running, restarting, stopped), pid, restarts, last exit code and time (roles.json)."""
        state: dict[str, dict[str, Any]] = {}
        for role in dict.fromkeys([*self.processes, *self._history]):
            process = self.processes.get(role)
            running = process is not None and process.poll() is None
            state[role] = {"state": "running", "restarts": 0, "last_exit_code": None, "last_exit_at": None,
                           **self._history.get(role, {}), "pid": process.pid if running else None}
        return state

    def _write_state(self) -> None:
        """runtime.json (how other commands connect), pids.json (who runs) and roles.json (how each role has run),
        replaced atomically."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        _write_json(self.settings.data_dir / "runtime.json", {
            "KAFKA_BOOTSTRAP_SERVERS": self.settings.kafka_bootstrap_servers,
            "DATABASE_URL": self.settings.database_url,
            "BATON_BROKER_PROFILE": self.settings.broker_profile,
            "BATON_API_PORT": str(self.settings.api_port),
        })
        _write_json(self.settings.data_dir / "pids.json", self.pids())
        _write_json(self.settings.data_dir / "roles.json", self.roles_state())
        _write_json(self.settings.data_dir / "metrics.json", {
            role: f"http://127.0.0.1:{port}/metrics" for role, port in self.metrics_ports.items()
        } | {"api": f"{self.api_url}/metrics"})

    def stop(self) -> None:
        """Stop roles (SIGTERM, SIGKILL after stop_grace_s), then the embedded services; within 10 s."""
        self._pending.clear()
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        for role, process in list(self.processes.items()):
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            del self.processes[role]
        for name in ("runtime.json", "pids.json", "roles.json"):
            (self.settings.data_dir / name).unlink(missing_ok=True)
        # Both services are signalled before either is waited for.
        if isinstance(self.broker, EmbeddedBroker) and self.broker.alive():
            self.broker.process.terminate()  # type: ignore[union-attr]
        if self.postgres and self.postgres.alive() and self.postgres.process:
            with contextlib.suppress(ProcessLookupError):
                self.postgres.process.send_signal(signal.SIGINT)
        if self.broker:
            self.broker.stop(grace_s=3.0)
        if self.postgres:
            self.postgres.stop(grace_s=2.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _write_json(path: Path, document: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(document))
    os.replace(tmp, path)
