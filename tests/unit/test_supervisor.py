"""Runtime supervision: backoff, give-up and reset rules, driven by an injected clock and fake processes."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from streams.embedded import EmbeddedBroker
from streams.runtime import EXIT_ADDRESS_IN_USE, Restart, Runtime, RuntimeFailure
from streams.settings import Settings
from tests.fixtures.supervisor import Clock, FakeProcess, FakeRuntime


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def runtime(tmp_path: Path, clock: Clock) -> FakeRuntime:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1", database_url="postgresql://unused", data_dir=tmp_path / "baton")
    runtime = FakeRuntime(settings, clock=clock)
    for role in runtime.roles:
        runtime.spawn(role)
    return runtime


def _die_and_restart(runtime: FakeRuntime, clock: Clock, role: str, ran_s: float) -> float:
    """Let role run ran_s, die, and come back; return the backoff it waited."""
    clock.advance(ran_s)
    runtime.processes[role].die()
    (exited,) = runtime.supervise()
    assert (exited.role, exited.exit_code, exited.pid) == (role, -signal.SIGKILL, None)
    assert exited.log == runtime.log_path(role)
    clock.advance(exited.delay_s - 0.001)
    assert runtime.supervise() == []  # not before its backoff has passed
    old = runtime.processes[role]
    clock.advance(0.001)
    (restarted,) = runtime.supervise()
    assert restarted.pid == runtime.processes[role].pid != old.pid
    assert runtime.processes[role].poll() is None
    return exited.delay_s


def test_backoff_doubles_from_one_second_up_to_thirty(runtime: FakeRuntime, clock: Clock) -> None:
    # 20 s runs: short of a healthy run, and never 5 deaths within a minute.
    delays = [_die_and_restart(runtime, clock, "worker", ran_s=20) for _ in range(8)]
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]


def test_five_deaths_within_a_minute_give_up(runtime: FakeRuntime, clock: Clock) -> None:
    delays = [_die_and_restart(runtime, clock, "projector", ran_s=0.5) for _ in range(4)]
    assert delays == [1, 2, 4, 8]  # the fifth death comes 17 s after the first
    clock.advance(0.5)
    runtime.processes["projector"].die(3)
    with pytest.raises(RuntimeFailure, match=r"projector died 5 times within 60 s \(last exit code 3\)"):
        runtime.supervise()


def test_deaths_spread_over_more_than_a_minute_do_not_give_up(runtime: FakeRuntime, clock: Clock) -> None:
    for _ in range(10):
        _die_and_restart(runtime, clock, "api", ran_s=14)  # deaths 15+ s apart plus backoff: at most 4 per minute
    assert runtime.processes["api"].poll() is None


def test_a_death_after_a_long_healthy_run_starts_the_backoff_over(runtime: FakeRuntime, clock: Clock) -> None:
    assert [_die_and_restart(runtime, clock, "worker", ran_s=20) for _ in range(4)] == [1, 2, 4, 8]
    assert _die_and_restart(runtime, clock, "worker", ran_s=60) == 1
    assert _die_and_restart(runtime, clock, "worker", ran_s=20) == 2


def test_roles_have_their_own_backoff(runtime: FakeRuntime, clock: Clock) -> None:
    assert [_die_and_restart(runtime, clock, "worker", ran_s=20) for _ in range(3)] == [1, 2, 4]
    assert _die_and_restart(runtime, clock, "projector", ran_s=20) == 1


def test_several_roles_dying_at_once_are_each_restarted(runtime: FakeRuntime, clock: Clock) -> None:
    for role in ("worker", "api"):
        runtime.processes[role].die(1)
    assert {(e.role, e.pid) for e in runtime.supervise()} == {("worker", None), ("api", None)}
    clock.advance(1)
    assert {e.role for e in runtime.supervise() if e.pid} == {"worker", "api"}


def test_nothing_restarts_without_supervise_and_a_killed_role_stays_down(runtime: FakeRuntime, clock: Clock) -> None:
    runtime.kill("worker")
    assert "worker" not in runtime.processes
    clock.advance(100)
    assert runtime.supervise() == []
    assert "worker" not in runtime.processes


def test_restart_messages_name_role_exit_code_and_log(runtime: FakeRuntime) -> None:
    scheduled = Restart("worker", -9, Path("/x/logs/worker.log"), 2.0)
    assert str(scheduled) == "worker exited with code -9; restarting in 2 s (log /x/logs/worker.log)"
    assert "worker restarted as pid 7 after exit code -9 (log /x/logs/worker.log)" == str(Restart("worker", -9, Path("/x/logs/worker.log"), 2.0, 7))


def test_a_dead_embedded_broker_stops_supervision(runtime: FakeRuntime) -> None:
    broker = FakeProcess()
    runtime.broker = EmbeddedBroker(port=1, process=broker)  # type: ignore[arg-type]
    assert runtime.supervise() == []
    broker.die(-9)
    with pytest.raises(RuntimeFailure, match="embedded broker exited with code -9 and its in-memory log is gone"):
        runtime.supervise()


def test_an_api_on_a_taken_free_port_moves(tmp_path: Path, clock: Clock) -> None:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1", database_url="postgresql://unused",
                        data_dir=tmp_path / "baton", api_port=0)
    runtime = FakeRuntime(settings, clock=clock)
    first = runtime.settings.api_port
    assert first != 0
    runtime.spawn("api")
    runtime.processes["api"].die(EXIT_ADDRESS_IN_USE)
    runtime.supervise()
    clock.advance(1)
    runtime.supervise()
    assert runtime.settings.api_port != first
    assert f'"BATON_API_PORT": "{runtime.settings.api_port}"' in (settings.data_dir / "runtime.json").read_text()


def test_worker_roles_run_baton_worker_each_with_its_own_log_and_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    launched: list[tuple[list[str], dict[str, str], str]] = []

    def popen(args: list[str], env: dict[str, str], stdout, **kwargs: object) -> FakeProcess:
        launched.append((args, env, stdout.name))
        return FakeProcess()

    monkeypatch.setattr("streams.runtime.subprocess.Popen", popen)
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1", database_url="postgresql://unused", data_dir=tmp_path / "baton")
    settings.data_dir.joinpath("logs").mkdir(parents=True)
    runtime = Runtime(settings, workers=3)
    assert runtime.roles == ("worker-1", "worker-2", "worker-3", "projector", "api")
    assert Runtime(settings).roles == ("worker", "projector", "api")
    for role in runtime.roles:
        runtime.spawn(role)
    commands = [args[-1] for args, _, _ in launched]
    assert commands == ["worker", "worker", "worker", "projector", "api"]
    assert [Path(log).name for _, _, log in launched] == [f"{role}.log" for role in runtime.roles]
    worker_dirs = {env["BATON_WORKER_DATA_DIR"] for _, env, _ in launched[:3]}
    assert len(worker_dirs) == 3
    assert all(env["BATON_DATA_DIR"] == str(settings.data_dir) for _, env, _ in launched)
    pids = runtime.pids()
    assert set(pids) == {"supervisor", *runtime.roles}
