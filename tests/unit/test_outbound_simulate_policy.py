"""`baton outbound simulate --policy FILE`: the policy file's keys, its errors, and the options winning over it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agents.outbound.config import OutboundSettings
from agents.outbound.simulate import PolicyError, policy_overrides
from schemas.outbound import QuietHours
from streams.cli import cli
from streams.domains.outbound.cli import simulation_overrides


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_toml_policy_gives_the_fold_config_overrides(tmp_path: Path) -> None:
    policy = write(tmp_path, "policy.toml", 'daily_limit = 3\nquiet_hours = {start = "23:00", end = "07:00"}\n'
                                            "active_window_minutes = 30\nmax_deferral_hours = 12\n"
                                            'default_timezone = "Europe/Madrid"\n')
    overrides = simulation_overrides(policy)
    assert overrides == {"daily_limit_override": 3, "quiet_hours_override": QuietHours(start="23:00", end="07:00"),
                         "active_window": timedelta(minutes=30), "max_deferral": timedelta(hours=12),
                         "default_timezone": "Europe/Madrid"}
    config = OutboundSettings().fold_config(**overrides)
    assert (config.daily_limit_override, config.active_window, config.default_timezone) == (
        3, timedelta(minutes=30), "Europe/Madrid")


def test_a_json_policy_and_the_options_win_over_the_file(tmp_path: Path) -> None:
    policy = write(tmp_path, "policy.json", '{"daily_limit": 3, "quiet_hours": "22:30-06:00"}')
    overrides = simulation_overrides(policy, daily_limit=5, quiet_hours=None, active_window_minutes=15.0)
    assert overrides == {"daily_limit_override": 5, "quiet_hours_override": QuietHours(start="22:30", end="06:00"),
                         "active_window": timedelta(minutes=15)}
    # The options alone, as before --policy existed.
    assert simulation_overrides(None, quiet_hours="23:00-07:00") == {
        "quiet_hours_override": QuietHours(start="23:00", end="07:00")}


@pytest.mark.parametrize(("policy", "message"), [
    ({"burst": 1}, "unknown key 'burst'"),
    ({"daily_limit_override": 1}, "unknown key 'daily_limit_override'"),
    ({"daily_limit": -1}, "key daily_limit: must be a finite number, 0 or more"),
    ({"daily_limit": 2.5}, "key daily_limit: expected an integer"),
    ({"daily_limit": True}, "key daily_limit: expected an integer"),
    ({"quiet_hours": "23:00"}, "key quiet_hours: expected HH:MM-HH:MM"),
    ({"quiet_hours": "25:00-07:00"}, "key quiet_hours: '25:00' is not a time HH:MM"),
    ({"quiet_hours": {"start": "23:00"}}, "key quiet_hours: expected"),
    ({"default_timezone": "Mars/Olympus"}, "key default_timezone: unknown IANA time zone"),
    ({"max_deferral_hours": 0}, "key max_deferral_hours: must be more than 0"),
])
def test_a_bad_policy_names_its_key(policy: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=message) as caught:
        policy_overrides(policy, "p.toml")
    assert str(caught.value).startswith("p.toml: ")


def test_the_command_refuses_an_unknown_key_before_reading_the_log(tmp_path: Path, monkeypatch) -> None:
    async def no_broker(*_args: object) -> list:
        raise AssertionError("the log was read")

    monkeypatch.setattr("streams.logs.read_domain_log", no_broker)
    policy = write(tmp_path, "policy.toml", "daily_limit = 3\nburst = 5\n")
    result = CliRunner().invoke(cli, ["outbound", "simulate", "--policy", str(policy)])
    assert result.exit_code == 2
    assert f"{policy}: unknown key 'burst'" in result.output
    broken = write(tmp_path, "broken.toml", "daily_limit = \n")
    result = CliRunner().invoke(cli, ["outbound", "simulate", "--policy", str(broken)])
    assert result.exit_code == 2 and f"{broken}: not valid TOML" in result.output
