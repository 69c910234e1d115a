"""The steps domain, declared for the registry: agent step executions, budgets across every scope, flags, audit."""

from __future__ import annotations

from agents.folds.steps import decode_state, encode_state
from agents.steps import build_runner, steps_folder
from projections.migrations import CORE
from projections.writers.steps import BUDGET_DAYS, EXECUTIONS, TENANTS
from schemas.steps import CATALOG
from streams.domains import Domain, StateCodec


def _commands(cli) -> None:
    from streams.steps import add_commands

    add_commands(cli)


def _routers() -> tuple:
    from projections.api.steps import steps_router

    return (steps_router(),)


DOMAIN = Domain(
    name="steps",
    catalog=CATALOG,
    folder=steps_folder,
    state_table="step-states",
    state_codec=StateCodec(encode=encode_state, decode=decode_state),
    read_models=(EXECUTIONS, BUDGET_DAYS, TENANTS),
    migrations=CORE.parent / "steps",
    routers=_routers,
    effects=build_runner,
    commands=_commands,
    console_page=CORE.parent.parent / "console" / "pages" / "steps.js",
)
