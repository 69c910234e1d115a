"""The outbound domain, declared for the registry: per-user budgets, quiet hours and the delivery queue."""

from __future__ import annotations

import typer

from agents.outbound.config import OutboundSettings, build_effects, outbound_folder
from agents.outbound.fold import CODEC
from agents.outbound.wakeups import register_wakeups
from projections import outbound as read_side
from projections.outbound.readmodels import BUDGETS, MESSAGES, USERS
from schemas.outbound import CATALOG
from streams.registry import Domain


def _routers() -> tuple:
    from projections.outbound.routes import query_router
    from streams.domains.outbound.commands import command_router

    return (command_router(), query_router())


def _commands(cli: typer.Typer) -> None:
    from streams.domains.outbound.cli import add_commands

    add_commands(cli)


DOMAIN = Domain(
    name="outbound",
    catalog=CATALOG,
    folder=outbound_folder,
    state_table="outbound-users",
    state_codec=CODEC,
    read_models=(MESSAGES, USERS, BUDGETS),
    migrations=read_side.MIGRATIONS,
    routers=_routers,
    effects=build_effects,
    agents=register_wakeups,
    commands=_commands,
    console_page=read_side.CONSOLE_PAGE,
    settings=OutboundSettings,
)
