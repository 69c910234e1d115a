"""Runs Baton's processes as one supervised group: embedded services when none are configured."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx

from streams.embedded import EmbeddedBroker, EmbeddedPostgres, child_env
from streams.settings import Settings, settings_env

ROLES = ("worker", "projector", "api")


class RuntimeFailure(RuntimeError):
    """A process of the group failed to start or died."""


@dataclass
class Runtime:
    """Broker, PostgreSQL, worker, projector and API; embedded broker/PostgreSQL when not configured."""

    settings: Settings
    broker: EmbeddedBroker | None = None
    postgres: EmbeddedPostgres | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        return self.settings.data_dir / "logs"

    @property
    def api_url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def start_services(self) -> Settings:
        """Start the embedded broker and PostgreSQL where the settings name none."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        updates: dict[str, object] = {}
        if not self.settings.kafka_bootstrap_servers:
            self.broker = EmbeddedBroker().start(self.log_dir / "broker.log")
            updates |= {"kafka_bootstrap_servers": self.broker.bootstrap_servers, "broker_profile": "embedded"}
        if not self.settings.database_url:
            self.postgres = EmbeddedPostgres(self.settings.data_dir / "pgdata").start()
            # Read models derive from the log; a new in-memory broker means an empty log.
            updates["database_url"] = self.postgres.fresh_database("baton")
        self.settings = self.settings.model_copy(update=updates)
        (self.settings.data_dir / "runtime.json").write_text(json.dumps({
            "KAFKA_BOOTSTRAP_SERVERS": self.settings.kafka_bootstrap_servers,
            "DATABASE_URL": self.settings.database_url,
            "BATON_BROKER_PROFILE": self.settings.broker_profile,
            "BATON_API_PORT": str(self.settings.api_port),
        }))
        return self.settings

    def spawn(self, role: str) -> subprocess.Popen:
        """Start one role as a child process with the group's settings."""
        log = open(self.log_dir / f"{role}.log", "ab")  # noqa: SIM115 - the child writes it while it runs
        process = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", role],
            env=child_env(**settings_env(self.settings)),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches only `baton dev`, which then stops children in order
        )
        self.processes[role] = process
        return process

    def start(self, roles: tuple[str, ...] = ROLES, wait_s: float = 60.0) -> Runtime:
        """Start services and roles; return once the API answers (when it is one of them)."""
        self.start_services()
        for role in roles:
            self.spawn(role)
        if "api" in roles:
            self.wait_for_api(wait_s)
        return self

    def wait_for_api(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeFailure(f"API did not answer at {self.api_url} within {wait_s:.0f} s; see {self.log_dir}")

    def check_alive(self) -> None:
        """Raise when a child has exited."""
        for role, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeFailure(f"{role} exited with code {process.returncode}; see {self.log_dir / role}.log")

    def kill(self, role: str, sig: int = signal.SIGKILL) -> None:
        """Signal one child and wait for it to exit."""
        process = self.processes.pop(role)
        process.send_signal(sig)
        process.wait(30)

    def stop(self) -> None:
        """Stop children gracefully (then forcibly), then the embedded services."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        (self.settings.data_dir / "runtime.json").unlink(missing_ok=True)
        if self.broker:
            self.broker.stop()
        if self.postgres:
            self.postgres.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


