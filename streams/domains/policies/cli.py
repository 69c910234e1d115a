"""The policy commands of the `baton` CLI: `baton policy show` and `baton policy adopt` (the operator's way to
change the default policy, "*", or a tenant's, straight on the log)."""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer

from schemas.policies import DEFAULT_SCOPE


def read_changes(path: Path) -> dict[str, Any]:
    """The fields a file changes: JSON when it ends in .json, TOML otherwise (ValueError names the file)."""
    try:
        text = path.read_text(encoding="utf-8")
        document = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a table of the section's fields")
    return document


def add_commands(cli: typer.Typer) -> None:
    """Add `baton policy ...` (show, adopt) to the CLI."""
    from rich.table import Table

    from streams.cli import connected_settings, console, err_console
    from streams.domains.policies.commands import (
        PolicyRefused,
        adopt_section,
        policy_domains,
    )
    from streams.policies import PolicyReader
    from streams.publisher import Publisher

    group = typer.Typer(help="Policies: what every fold decides with, adopted on the log.", no_args_is_help=True)

    @group.command()
    def show(scope: Annotated[str, typer.Option(help="A tenant, or * for the default.")] = DEFAULT_SCOPE) -> None:
        """Print the policy in force for a scope (a tenant without its own shows the default) and the history."""
        async def read() -> Any:
            reader = PolicyReader(connected_settings(database=False))
            try:
                return await reader.refresh()
            finally:
                await reader.stop()

        book = asyncio.run(read())
        stamp = book.stamp(scope)
        if stamp is None:
            console.print("No policy adopted yet: every fold decides with the built-in defaults.")
            return
        console.print(f"policy in force for {scope}: {stamp}", markup=False)
        console.print_json(json.dumps(book.documents[stamp]))
        table = Table("scope", "policy", "previous", "reason", "actor", "adopted at", title="adoptions")
        for envelope in book.adoptions:
            adopted = envelope.payload
            table.add_row(adopted.scope, adopted.policy[:12], (adopted.previous or "-")[:12],  # type: ignore[attr-defined]
                          adopted.reason, envelope.actor, envelope.occurred_at.isoformat())  # type: ignore[attr-defined]
        console.print(table)

    @group.command()
    def adopt(
        domain: Annotated[str, typer.Argument(help="The domain whose section changes.")],
        changes: Annotated[Path, typer.Argument(help="A TOML (or .json) file with the fields to change.")],
        scope: Annotated[str, typer.Option(help="A tenant, or * for the default.")] = DEFAULT_SCOPE,
        actor: Annotated[str, typer.Option(help="Who adopts it (recorded on the event).")] = "operator",
    ) -> None:
        """Adopt a policy with fields of one domain's section changed; decisions stamped from now on use it."""
        known = policy_domains()
        if domain not in known:
            err_console.print(f"domain: {domain!r} has no policy; known: {', '.join(sorted(known))}", style="red",
                              markup=False)
            raise typer.Exit(2)
        try:
            fields = read_changes(changes)
        except ValueError as exc:
            err_console.print(str(exc), style="red", markup=False)
            raise typer.Exit(2) from None

        async def run() -> tuple[Any, Any]:
            async with Publisher(connected_settings(database=False)) as publisher:
                book = await publisher.policies.refresh()
                envelope, section = adopt_section(book, scope, known[domain], fields, actor=actor)
                if envelope is not None:
                    await publisher.publish([envelope])
                return envelope, section

        try:
            envelope, section = asyncio.run(run())
        except PolicyRefused as exc:
            err_console.print(str(exc), style="red", markup=False)
            raise typer.Exit(2) from None
        if envelope is None:
            console.print(f"Unchanged: {scope}'s {domain} section is already in force.", markup=False)
            return
        console.print(f"adopted {envelope.payload.policy} for {scope} (was {envelope.payload.previous})",  # type: ignore[attr-defined]
                      markup=False)
        console.print_json(json.dumps({domain: section}))

    cli.add_typer(group, name="policy")
