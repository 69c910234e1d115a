"""The real `baton dev` and `baton worker` as processes: restarts, children dying with their parent, bounded stops."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.embedded import EmbeddedBroker, child_env
from streams.settings import Settings, settings_env
from tests.fixtures.runtime import Dev, alive, running_dev
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration

STOP_BOUND_S = 10  # SIGTERM or Ctrl-C stops everything within this


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
            mark = len(log.read_text())  # before the stop: the worker may notice within the broker's stop grace
            broker.stop()
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
