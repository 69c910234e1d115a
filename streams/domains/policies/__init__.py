"""The policies domain, declared for the registry: what every fold decides with, adopted on the log."""

from __future__ import annotations

from agents.policies.fold import CODEC, policies_folder
from projections import policies as read_side
from projections.policies.readmodels import ADOPTIONS
from projections.policies.routes import query_router
from schemas.policies import CATALOG
from streams.domains.policies.cli import add_commands
from streams.domains.policies.commands import command_router
from streams.registry import Domain

DOMAIN = Domain(
    name="policies", catalog=CATALOG,
    folder=policies_folder, state_table="policy-scopes", state_codec=CODEC,
    read_models=(ADOPTIONS,), migrations=read_side.MIGRATIONS,
    routers=lambda: (command_router(), query_router()), commands=add_commands,
)
