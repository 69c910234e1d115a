"""The container health check of each role (`python -m streams.liveness ROLE`) against Baton's real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streams.embedded import child_env
from streams.runtime import Runtime
from streams.settings import Settings, settings_env
from tests.fixtures.waiting import eventually

pytestmark = pytest.mark.integration


def health(role: str, settings: Settings) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.liveness", role], env=child_env(**settings_env(settings)),
                          capture_output=True, text=True, timeout=60, check=False)


def test_every_role_reports_alive_while_it_runs(settings: Settings, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    alive = tmp_path / "alive"
    monkeypatch.setenv("BATON_LIVENESS_DIR", str(alive))
    monkeypatch.setenv("BATON_LIVENESS_INTERVAL_S", "0.5")
    assert health("worker", settings).returncode == 1  # nothing has beaten yet
    with Runtime(settings.model_copy(update={"api_port": 0})).start() as runtime:
        for role in ("worker", "projector", "api"):
            result = eventually(lambda: (r := health(role, runtime.settings)).returncode == 0 and r,
                                f"{role} reported alive")
            assert result.stdout.startswith(f"{role}: alive: ")
        assert {p.name for p in alive.iterdir()} == {"worker", "projector"}
