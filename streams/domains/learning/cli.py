"""The learning commands of the `baton` CLI: `baton learning status` reads a learner's status from the read models."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

import typer

learning_cli = typer.Typer(help="Learning plans.", no_args_is_help=True)


@learning_cli.command("status")
def status(tenant: Annotated[str, typer.Option(help="Tenant id.")],
           learner: Annotated[str, typer.Option(help="Learner id (the token subject).")]) -> None:
    """Print a learner's status as GET /v1/learning/status answers it."""
    from psycopg import AsyncConnection

    from agents.learning.config import LearningSettings
    from projections.learning.views import learner_status
    from schemas.learning import learner_stream_id
    from streams.cli import connected_settings, console
    from streams.settings import loaded

    settings = connected_settings()
    options = loaded(LearningSettings)

    async def query():
        async with await AsyncConnection.connect(settings.database_url) as conn:
            return await learner_status(
                conn, tenant, learner_stream_id(tenant, learner), learner, now=datetime.now(UTC),
                agents=list(options.agent_urls), freshness={a: options.freshness(a) for a in options.agent_urls},
                run_hour_local=options.run_hour_local, days_per_week=options.days_per_week)

    console.print_json(asyncio.run(query()).model_dump_json())


def add_commands(cli: typer.Typer) -> None:
    """Add the `learning` command group to the `baton` CLI."""
    cli.add_typer(learning_cli, name="learning")
