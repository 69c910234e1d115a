"""Container health checks: heartbeat files of the worker and projector, and the role of the running `baton`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streams.liveness import (
    Heartbeat,
    LivenessSettings,
    check,
    check_file,
    main,
    role_of,
    running_role,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_heartbeat_touches_its_file_at_most_once_per_interval(tmp_path: Path) -> None:
    clock = Clock()
    heartbeat = Heartbeat("projector", LivenessSettings(dir=tmp_path / "alive", interval_s=5), clock)
    heartbeat.beat()
    path = tmp_path / "alive" / "projector"
    os.utime(path, (0, 0))
    clock.now += 4.9
    heartbeat.beat()
    assert path.stat().st_mtime == 0
    clock.now += 0.1
    heartbeat.beat()
    assert path.stat().st_mtime > 0


def test_without_a_directory_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    heartbeat = Heartbeat("worker", LivenessSettings())
    heartbeat.beat()
    assert not heartbeat.enabled and list(tmp_path.iterdir()) == []
    assert check("worker", LivenessSettings()) == (False, "BATON_LIVENESS_DIR is not set, so the role writes no heartbeat")


def test_a_file_is_alive_while_fresh_and_each_failure_says_why(tmp_path: Path) -> None:
    path = tmp_path / "worker"
    assert check_file(path, 30, now=1000.0) == (False, f"no heartbeat yet at {path}")
    path.touch()
    os.utime(path, (1000.0, 1000.0))
    assert check_file(path, 30, now=1029.0) == (True, "heartbeat 29.0 s ago")
    assert check_file(path, 30, now=1045.0) == (False, f"last heartbeat 45 s ago (more than 30 s) at {path}")


def test_the_checker_exits_non_zero_for_a_stale_role_and_zero_for_a_fresh_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("BATON_LIVENESS_DIR", str(tmp_path))
    (tmp_path / "worker").touch()
    (tmp_path / "projector").touch()
    os.utime(tmp_path / "projector", (0, 0))
    assert main(["worker"]) == 0
    assert main(["projector"]) == 1
    out = capsys.readouterr()
    assert out.out.startswith("worker: alive: heartbeat ")
    assert out.err.startswith("projector: NOT alive: last heartbeat ")


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["/opt/baton/bin/python", "/opt/baton/bin/baton", "worker", ""], "worker"),
        (["baton", "api", "--port", "8080"], "api"),
        (["/usr/bin/tini", "--", "baton", "projector"], "projector"),
        (["python", "-m", "streams.liveness"], None),
        (["/opt/baton/bin/baton"], None),
    ],
)
def test_the_role_is_the_word_after_the_baton_executable(argv: list[str], role: str | None) -> None:
    assert role_of(argv) == role


def test_the_running_role_is_pid_1s_else_another_baton_process(tmp_path: Path) -> None:
    for pid, argv in {"1": ["/sbin/docker-init", "--", "sh"], "7": ["python", "/opt/baton/bin/baton", "projector"]}.items():
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "cmdline").write_bytes("\0".join(argv).encode() + b"\0")
    (tmp_path / "self").mkdir()
    assert running_role(tmp_path) == "projector"
    (tmp_path / "1" / "cmdline").write_bytes(b"/opt/baton/bin/python\0/opt/baton/bin/baton\0worker\0")
    assert running_role(tmp_path) == "worker"
