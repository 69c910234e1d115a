"""The learning domain, declared for the registry: learners' intents, day plans from agents' signals, progress."""

from __future__ import annotations

from agents.learning.config import (
    POLICY,
    LearningSettings,
    build_effects,
    learning_folder,
)
from agents.learning.fold import CODEC
from projections import learning as read_side
from projections.learning.readmodels import LEARNERS, SESSIONS, SIGNALS
from projections.learning.routes import learner_dependency, query_router
from schemas.learning import CATALOG
from streams.domains.learning.cli import add_commands
from streams.domains.learning.commands import command_router
from streams.registry import Domain


def _routers() -> tuple:
    learner_of = learner_dependency()  # one per-learner token bucket for the commands and the queries
    return (command_router(learner_of), query_router(learner_of))


DOMAIN = Domain(
    name="learning", catalog=CATALOG, settings=LearningSettings, policy=POLICY,
    folder=learning_folder, state_table="learners", state_codec=CODEC,
    effects=build_effects,
    read_models=(LEARNERS, SESSIONS, SIGNALS), migrations=read_side.MIGRATIONS, console_page=read_side.CONSOLE_PAGE,
    routers=_routers, commands=add_commands,
)
