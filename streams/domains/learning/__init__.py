"""The learning domain, declared for the registry: learners' intents, day plans from agents' signals, progress."""

from __future__ import annotations

from typing import Annotated

import typer

from agents.learning.config import build_effects, learning_folder
from agents.learning.fold import CODEC
from projections import learning as read_side
from projections.learning.readmodels import LEARNERS, SESSIONS, SIGNALS
from schemas.learning import CATALOG
from streams.domains import Domain


def _routers() -> tuple:
    from projections.learning.routes import learning_router

    return (learning_router(),)


def _commands(cli: typer.Typer) -> None:
    import asyncio
    from datetime import UTC, datetime

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

        settings, options = connected_settings(), LearningSettings()

        async def query():
            async with await AsyncConnection.connect(settings.database_url) as conn:
                return await learner_status(
                    conn, tenant, learner_stream_id(tenant, learner), learner, now=datetime.now(UTC),
                    agents=list(options.agent_urls), freshness={a: options.freshness(a) for a in options.agent_urls},
                    run_hour_local=options.run_hour_local, days_per_week=options.days_per_week)

        console.print_json(asyncio.run(query()).model_dump_json())

    cli.add_typer(learning_cli, name="learning")


DOMAIN = Domain(
    name="learning",
    catalog=CATALOG,
    folder=learning_folder,
    state_table="learners",
    state_codec=CODEC,
    read_models=(LEARNERS, SESSIONS, SIGNALS),
    migrations=read_side.MIGRATIONS,
    routers=_routers,
    effects=build_effects,
    commands=_commands,
    console_page=read_side.CONSOLE_PAGE,
)
