"""The outbound commands of the `baton` CLI: `baton outbound simulate`, the what-if replay of the delivery policy."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Annotated, Any

import typer

from streams.settings import loaded

_OPTION = {"active_window_minutes": "--active-window"}


def simulation_overrides(policy_file: Path | None, **options: object) -> dict[str, Any]:
    """The fold-config overrides of `baton outbound simulate`: the policy file's, then the options given (keys of
    agents.outbound.simulate.POLICY_KEYS), which win. PolicyError (a ValueError) names the file or option and key."""
    from agents.outbound.simulate import policy_overrides, read_policy

    overrides = policy_overrides(read_policy(policy_file), str(policy_file)) if policy_file is not None else {}
    for key, value in options.items():
        if value is not None:
            overrides |= policy_overrides({key: value}, _OPTION.get(key, f"--{key.replace('_', '-')}"))
    return overrides


def add_commands(cli: typer.Typer) -> None:
    """Add `baton outbound ...` (simulate) to the CLI."""
    from rich.table import Table

    from streams.cli import connected_settings, console, err_console

    group = typer.Typer(help="Outbound messages: what-if replay of the delivery policy.", no_args_is_help=True)

    @group.command()
    def simulate(
        policy: Annotated[Path | None, typer.Option(
            help="The policy to try: a TOML (or .json) file with daily_limit, quiet_hours, active_window_minutes, "
                 "max_deferral_hours, default_timezone; the options below win over it.")] = None,
        daily_limit: Annotated[int | None, typer.Option(min=0, help="Daily limit for every user.")] = None,
        quiet_hours: Annotated[str | None, typer.Option(help="Quiet hours for every user, HH:MM-HH:MM.")] = None,
        active_window: Annotated[float | None, typer.Option(min=0, help="Active window, minutes.")] = None,
        since: Annotated[str | None, typer.Option(help="Only messages queued on or after this date (YYYY-MM-DD, UTC).")] = None,
        show: Annotated[int, typer.Option(min=0, help="Changed messages listed at most.")] = 20,
    ) -> None:
        """Re-fold the outbound log under another policy (no network, no sends) and show how decisions differ."""
        from agents.outbound.config import OutboundSettings
        from agents.outbound.simulate import simulate as run_simulation
        from streams.logs import read_domain_log

        try:
            overrides = simulation_overrides(policy, daily_limit=daily_limit, quiet_hours=quiet_hours,
                                             active_window_minutes=active_window)
            after = datetime.combine(date.fromisoformat(since), time(0), UTC) if since else None
        except ValueError as exc:
            err_console.print(str(exc), style="red", markup=False, soft_wrap=True)
            raise typer.Exit(2) from None
        settings = connected_settings(database=False)
        envelopes = asyncio.run(read_domain_log(settings, "outbound"))
        result = run_simulation(envelopes, loaded(OutboundSettings).fold_config(**overrides))
        before, simulated = result.counts(after)
        table = Table("outcome", "reason", "before", "after", "change",
                      title=f"outbound simulate: {result.events} events, {sum(before.values())} messages")
        for outcome, reason in sorted(set(before) | set(simulated)):
            b, a = before[(outcome, reason)], simulated[(outcome, reason)]
            table.add_row(outcome, reason, str(b), str(a), f"{a - b:+d}" if a != b else "",
                          style=None if a == b else "yellow")
        console.print(table)
        changed = result.changed(after)
        listing = Table("message", "user", "agent", "priority", "before", "after",
                        title=f"{len(changed)} messages change outcome")
        for old, new in changed[:show]:
            some = old or new
            listing.add_row(some.message_id, some.user_id, some.agent_id, some.priority,  # type: ignore[union-attr]
                            "/".join(old.label) if old else "-", "/".join(new.label) if new else "-")
        console.print(listing if changed else "No message changes outcome.")

    cli.add_typer(group, name="outbound")
