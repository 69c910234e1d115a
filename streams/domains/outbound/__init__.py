"""The outbound domain, declared for the registry: per-user budgets, quiet hours and the delivery queue."""

from __future__ import annotations

from agents.outbound.config import (
    POLICY,
    OutboundSettings,
    build_effects,
    outbound_folder,
)
from agents.outbound.fold import CODEC
from agents.outbound.wakeups import register_wakeups
from projections import outbound as read_side
from projections.outbound.readmodels import BUDGETS, MESSAGES, USERS
from projections.outbound.routes import query_router
from schemas.outbound import CATALOG
from streams.domains.outbound.cli import add_commands
from streams.domains.outbound.commands import command_router
from streams.registry import Domain

DOMAIN = Domain(
    name="outbound", catalog=CATALOG, settings=OutboundSettings, policy=POLICY,
    folder=outbound_folder, state_table="outbound-users", state_codec=CODEC,
    effects=build_effects, agents=register_wakeups,
    read_models=(MESSAGES, USERS, BUDGETS), migrations=read_side.MIGRATIONS, console_page=read_side.CONSOLE_PAGE,
    routers=lambda: (command_router(), query_router()), commands=add_commands,
)
