"""The learning domain, declared for the registry: learners' intents, day plans from agents' signals, progress."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agents.learning.config import LearningSettings, build_effects, learning_folder
from agents.learning.fold import CODEC
from projections import learning as read_side
from projections.learning.readmodels import LEARNERS, SESSIONS, SIGNALS
from schemas.learning import CATALOG
from streams.registry import Domain

if TYPE_CHECKING:
    import typer


def _routers() -> tuple:
    from projections.learning.routes import learner_dependency, query_router
    from streams.domains.learning.commands import command_router

    learner_of = learner_dependency()  # one per-learner token bucket for the commands and the queries
    return (command_router(learner_of), query_router(learner_of))


def _commands(cli: typer.Typer) -> None:
    from streams.domains.learning.cli import add_commands

    add_commands(cli)


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
    settings=LearningSettings,
)
