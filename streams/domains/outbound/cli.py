"""The outbound commands of the `baton` CLI: `baton outbound simulate`, the what-if replay of the delivery policy."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time
from typing import Annotated

import typer

from schemas.outbound import QuietHours
from streams.settings import loaded


def add_commands(cli: typer.Typer) -> None:
    """Add `baton outbound ...` (simulate) to the CLI."""
    from rich.table import Table

    from streams.cli import connected_settings, console, err_console

    group = typer.Typer(help="Outbound messages: what-if replay of the delivery policy.", no_args_is_help=True)

    @group.command()
    def simulate(
        daily_limit: Annotated[int | None, typer.Option(min=0, help="Daily limit for every user.")] = None,
        quiet_hours: Annotated[str | None, typer.Option(help="Quiet hours for every user, HH:MM-HH:MM.")] = None,
        active_window: Annotated[float | None, typer.Option(min=0, help="Active window, minutes.")] = None,
        since: Annotated[str | None, typer.Option(help="Only messages queued on or after this date (YYYY-MM-DD, UTC).")] = None,
        show: Annotated[int, typer.Option(min=0, help="Changed messages listed at most.")] = 20,
    ) -> None:
        """Re-fold the outbound log under another policy (no network, no sends) and show how decisions differ."""
        from datetime import timedelta

        from agents.outbound.config import OutboundSettings
        from agents.outbound.fold import parse_hhmm
        from agents.outbound.simulate import simulate as run_simulation
        from streams.domains.outbound.commands import read_outbound_log

        overrides: dict = {}
        try:
            if daily_limit is not None:
                overrides["daily_limit_override"] = daily_limit
            if quiet_hours is not None:
                start, _, end = quiet_hours.partition("-")
                parse_hhmm(start), parse_hhmm(end)
                overrides["quiet_hours_override"] = QuietHours(start=start, end=end)
            if active_window is not None:
                overrides["active_window"] = timedelta(minutes=active_window)
            after = datetime.combine(date.fromisoformat(since), time(0), UTC) if since else None
        except ValueError as exc:
            err_console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
        settings = connected_settings(database=False)
        envelopes = asyncio.run(read_outbound_log(settings))
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
