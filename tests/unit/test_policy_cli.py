"""`baton policy adopt` refuses bad input with a message naming it, before it connects to anything."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from streams.domains.policies import DOMAIN


def adopt(*args: str) -> tuple[int, str]:
    cli = typer.Typer()
    DOMAIN.commands(cli)  # type: ignore[misc]
    result = CliRunner().invoke(cli, ["policy", "adopt", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_an_unknown_domain_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    changes = tmp_path / "c.toml"
    changes.write_text("daily_limit = 3\n")
    code, output = adopt("costs", str(changes))
    assert code == 2 and "domain: 'costs' has no policy; known: conversations, learning, outbound, steps, workflow" in output


def test_a_file_that_is_no_table_of_fields_is_refused_naming_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("daily_limit = = 3\n")
    code, output = adopt("outbound", str(broken))
    assert code == 2 and f"{broken}: not valid TOML" in output.replace("\n", "")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    code, output = adopt("outbound", str(listed))
    assert code == 2 and "expected a table of the section's fields" in output.replace("\n", "")
    code, output = adopt("outbound", str(tmp_path / "missing.toml"))
    assert code == 2 and "cannot read" in output.replace("\n", "")
