"""The real `baton dev` and `baton worker` as processes: restarts, children dying with their parent, bounded stops."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from streams.embedded import EmbeddedBroker, child_env
from streams.settings import Settings, settings_env
from tests.integration.conftest import eventually

pytestmark = pytest.mark.integration

STOP_BOUND_S = 10  # SIGTERM or Ctrl-C stops everything within this
SERVICES = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "BATON_KAFKA_BOOTSTRAP_SERVERS", "BATON_DATABASE_URL")


def alive(pid: int) -> bool:
    """True while the process runs (a zombie waiting to be reaped has stopped running)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class Dev:
    """A running `baton dev` and where it reports."""

    process: subprocess.Popen
    data_dir: Path
    console: Path
    env: dict[str, str]

    def output(self) -> str:
        return self.console.read_text(errors="replace")

    def pids(self) -> dict[str, int]:
        path = self.data_dir / "pids.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def children(self) -> dict[str, int]:
        return {name: pid for name, pid in self.pids().items() if name != "supervisor"}

    def api_url(self) -> str:
        port = json.loads((self.data_dir / "runtime.json").read_text())["BATON_API_PORT"]
        return f"http://127.0.0.1:{port}"

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url()}/healthz", timeout=2).status_code == 200
        except (httpx.HTTPError, OSError):
            return False


@contextmanager
def running_dev(tmp_path: Path, broker: str = "embedded", **env_overrides: str) -> Iterator[Dev]:
    """`baton dev --broker B` with its own broker and embedded PostgreSQL, as a user runs it (plus env_overrides);
    a second call on the same tmp_path runs it again on the same data directory."""
    data_dir = tmp_path / "baton"
    run = uuid.uuid4().hex[:8]
    settings = Settings(app_id=f"baton-dev-{run}", topic_prefix=f"dev-{run}.", topic_partitions=2, data_dir=data_dir)
    env = child_env(**{**settings_env(settings), "COLUMNS": "200", **env_overrides})  # BATON_DATA_DIR: data_dir
    for name in SERVICES:  # no configured services: `baton dev` starts its own
        env.pop(name, None)
    console = tmp_path / "dev.out"
    with console.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "streams.cli", "dev", "--port", "0", "--broker", broker],
                                   env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    running = Dev(process, data_dir, console, env)
    try:
        eventually(lambda: process.poll() is not None or "Press Ctrl-C to stop." in running.output(),
                   "baton dev started", within_s=120)
        assert process.poll() is None, running.output()
        broker_process = "kafka-1" if broker == "kafka" else "broker"
        assert {broker_process, "postgres", "worker", "projector", "api"} <= set(running.children()), running.pids()
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid in running.children().values():  # only if the test failed before checking they died
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    with running_dev(tmp_path) as running:
        yield running


def test_dev_restarts_a_killed_worker_and_its_children_die_with_it(dev: Dev) -> None:
    before = dev.children()
    assert dev.healthy()
    # With no settings, `baton dev` runs on the public development secrets and says so, once.
    assert dev.output().count("Running with development secrets") == 1

    os.kill(before["worker"], signal.SIGKILL)
    restarted = eventually(lambda: (pid := dev.children().get("worker")) not in (None, before["worker"]) and pid,
                           "a new worker pid in pids.json", within_s=30)
    assert alive(restarted)
    log = dev.data_dir / "logs" / "worker.log"
    eventually(lambda: f"worker restarted as pid {restarted} after exit code -9 (log {log})" in dev.output(),
               "the restart shown in the console")
    assert f"worker exited with code -9; restarting in 1 s (log {log})" in dev.output()
    # `baton status` shows that the worker crashed and came back: one restart, its last exit code and time.
    shown = subprocess.run([sys.executable, "-m", "streams.cli", "status"], env=dev.env, capture_output=True,
                           text=True, timeout=60, check=False)
    assert re.search(r"│ worker +│ up +│ 1 +│ -9 at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d +│", shown.stdout), shown.stdout
    assert re.search(r"│ projector +│ up +│ 0 +│ - +│", shown.stdout), shown.stdout
    after = dev.children()
    assert {k: v for k, v in after.items() if k != "worker"} == {k: v for k, v in before.items() if k != "worker"}
    assert alive(after["broker"]) and alive(after["postgres"])
    assert dev.healthy()
    assert dev.process.poll() is None

    dev.process.kill()
    dev.process.wait()
    eventually(lambda: not any(alive(pid) for pid in after.values()),
               f"every child of the killed `baton dev` gone ({after})", within_s=15)


def test_sigterm_stops_dev_and_every_child(dev: Dev) -> None:
    children = dev.children()
    dev.process.send_signal(signal.SIGTERM)
    assert dev.process.wait(timeout=STOP_BOUND_S) == 0, dev.output()
    assert [name for name, pid in children.items() if alive(pid)] == []
    assert not (dev.data_dir / "pids.json").exists()
    assert "Stopped." in dev.output()


def test_dev_stops_within_bound_when_its_broker_is_gone(dev: Dev) -> None:
    children = dev.children()
    os.kill(children["broker"], signal.SIGKILL)
    eventually(lambda: not alive(children["broker"]), "broker gone")
    try:
        dev.process.send_signal(signal.SIGTERM)  # `baton dev` may already be stopping on its own
    except ProcessLookupError:
        pass
    dev.process.wait(timeout=STOP_BOUND_S)
    assert [name for name, pid in children.items() if alive(pid)] == []
    assert "Stopped." in dev.output()


def test_worker_whose_broker_is_gone_obeys_sigterm(settings: Settings, tmp_path: Path) -> None:
    broker = EmbeddedBroker().start(tmp_path / "broker.log")
    log = tmp_path / "worker.log"
    try:
        worker_settings = settings.model_copy(update={"kafka_bootstrap_servers": broker.bootstrap_servers,
                                                      "broker_profile": "embedded"})
        with log.open("wb") as out:
            worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"],
                                      env=child_env(**settings_env(worker_settings)),
                                      stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            eventually(lambda: worker.poll() is not None or "Setting newly assigned partitions" in log.read_text(),
                       "worker joined its group", within_s=90)
            assert worker.poll() is None, log.read_text()
            broker.stop()
            mark = len(log.read_text())
            eventually(lambda: "Unable connect to node" in log.read_text()[mark:], "worker noticing its broker is gone")
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=STOP_BOUND_S)
            assert "Signal received" in log.read_text()
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    finally:
        broker.stop()
