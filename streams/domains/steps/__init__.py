"""The steps domain, declared for the registry: agent step executions, budgets across every scope, flags, audit."""

from __future__ import annotations

from agents.steps.config import StepsSettings, build_runner, steps_folder
from agents.steps.fold import CODEC
from projections import steps as read_side
from projections.steps.readmodels import BUDGET_DAYS, EXECUTIONS, TENANTS
from schemas.steps import CATALOG
from streams.registry import Domain


def _commands(cli) -> None:
    from streams.domains.steps.cli import add_commands

    add_commands(cli)


def _routers() -> tuple:
    from projections.steps.routes import query_router
    from streams.domains.steps.commands import command_router

    return (command_router(), query_router())


DOMAIN = Domain(
    name="steps",
    catalog=CATALOG,
    folder=steps_folder,
    state_table="step-states",
    state_codec=CODEC,
    read_models=(EXECUTIONS, BUDGET_DAYS, TENANTS),
    migrations=read_side.MIGRATIONS,
    routers=_routers,
    effects=build_runner,
    commands=_commands,
    console_page=read_side.CONSOLE_PAGE,
    settings=StepsSettings,
)
