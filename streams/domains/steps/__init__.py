"""The steps domain, declared for the registry: agent step executions, budgets across every scope, flags, audit."""

from __future__ import annotations

from agents.steps.config import POLICY, StepsSettings, build_runner, steps_folder
from agents.steps.fold import CODEC
from projections import steps as read_side
from projections.steps.readmodels import BUDGET_DAYS, EXECUTIONS, TENANTS
from projections.steps.routes import query_router
from schemas.steps import CATALOG
from streams.domains.steps.cli import add_commands
from streams.domains.steps.commands import command_router
from streams.registry import Domain

DOMAIN = Domain(
    name="steps", catalog=CATALOG, settings=StepsSettings, policy=POLICY,
    folder=steps_folder, state_table="step-states", state_codec=CODEC,
    effects=build_runner,
    read_models=(EXECUTIONS, BUDGET_DAYS, TENANTS), migrations=read_side.MIGRATIONS, console_page=read_side.CONSOLE_PAGE,
    routers=lambda: (command_router(), query_router()), commands=add_commands,
)
