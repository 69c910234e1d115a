"""Liveness of the long-running roles, for container health checks.

The worker (a Faust timer) and the projector (its consume loop) touch `{BATON_LIVENESS_DIR}/{role}` while they
run; `python -m streams.liveness [ROLE]` exits 0 when that file is fresh, and for the API when `/healthz` answers.
Without BATON_LIVENESS_DIR nothing is written (as in `baton dev`).
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    import faust

ROLES_WITH_FILES = ("worker", "projector")


class LivenessSettings(BaseSettings):
    """Where the heartbeat files live, how often they are touched and how old one may get."""

    model_config = SettingsConfigDict(env_prefix="BATON_LIVENESS_", extra="ignore")

    dir: Path | None = None
    interval_s: float = Field(5.0, gt=0)
    max_age_s: float = Field(30.0, gt=0)


class Heartbeat:
    """Touches one role's liveness file at most every interval_s; does nothing when no directory is set."""

    def __init__(self, role: str, settings: LivenessSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings or LivenessSettings()
        self.path = self.settings.dir / role if self.settings.dir else None
        self._clock = clock
        self._last: float | None = None

    @property
    def enabled(self) -> bool:
        """True when a liveness directory is configured."""
        return self.path is not None

    def beat(self) -> None:
        """Touch the file unless it was touched less than interval_s ago."""
        if self.path is None:
            return
        now = self._clock()
        if self._last is not None and now - self._last < self.settings.interval_s:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self._last = now


def beat_on_timer(app: faust.App, role: str = "worker") -> None:
    """Register a Faust timer that touches the role's file while the app's event loop runs and it has not crashed."""
    heartbeat = Heartbeat(role)
    if not heartbeat.enabled:
        return

    @app.timer(heartbeat.settings.interval_s, name=f"{role}.liveness")
    async def liveness_beat() -> None:
        if not app.crashed:
            heartbeat.beat()


def check_file(path: Path, max_age_s: float, now: float) -> tuple[bool, str]:
    """Whether a heartbeat file was touched within max_age_s of `now` (wall-clock seconds), and why."""
    try:
        age = now - path.stat().st_mtime
    except FileNotFoundError:
        return False, f"no heartbeat yet at {path}"
    if age > max_age_s:
        return False, f"last heartbeat {age:.0f} s ago (more than {max_age_s:.0f} s) at {path}"
    return True, f"heartbeat {age:.1f} s ago"


def role_of(argv: Sequence[str]) -> str | None:
    """The role in a `baton ROLE ...` command line (the word after the `baton` executable), if it is one."""
    for index, word in enumerate(argv[:-1]):
        if Path(word).name == "baton":
            return argv[index + 1]
    return None


def running_role(proc: Path = Path("/proc")) -> str | None:
    """The role of the `baton` process in this container: PID 1's, else the first other process found."""
    candidates = [proc / "1"] + sorted(p for p in proc.glob("[0-9]*") if p.name != "1")
    for pid in candidates:
        try:
            argv = (pid / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if role := role_of(argv):
            return role
    return None


def check_api(timeout_s: float = 4.0) -> tuple[bool, str]:
    """Whether the API of these settings answers GET /healthz."""
    from streams.settings import Settings

    settings = Settings()
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    url = f"http://{host}:{settings.api_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200, f"{url} answered {response.status}"
    except OSError as exc:
        return False, f"{url}: {exc}"


def check(role: str, settings: LivenessSettings | None = None) -> tuple[bool, str]:
    """Whether one role is alive, and why."""
    if role == "api":
        return check_api()
    if role not in ROLES_WITH_FILES:
        return True, f"role {role!r} has no liveness check"
    settings = settings or LivenessSettings()
    if settings.dir is None:
        return False, "BATON_LIVENESS_DIR is not set, so the role writes no heartbeat"
    return check_file(settings.dir / role, settings.max_age_s, time.time())


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m streams.liveness [ROLE]`: exit 0 when the role (default: this container's) is alive."""
    parser = argparse.ArgumentParser(prog="python -m streams.liveness", description=main.__doc__)
    parser.add_argument("role", nargs="?", help="worker, projector or api (default: the running `baton ROLE`)")
    role = parser.parse_args(argv).role or running_role()
    if role is None:
        print("no `baton ROLE` process found", file=sys.stderr)
        return 1
    alive, why = check(role)
    print(f"{role}: {'alive' if alive else 'NOT alive'}: {why}", file=sys.stdout if alive else sys.stderr)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
