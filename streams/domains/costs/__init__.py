"""The costs domain, declared for the registry: the ledger of every LLM call any domain's effects make."""

from __future__ import annotations

from agents.costs.config import costs_folder
from agents.costs.fold import CODEC
from projections import costs as read_side
from projections.costs.readmodels import LLM_COSTS
from projections.costs.routes import query_router
from schemas.costs import CATALOG
from streams.registry import Domain

DOMAIN = Domain(
    name="costs", catalog=CATALOG,
    folder=costs_folder, state_table="cost-days", state_codec=CODEC,
    read_models=(LLM_COSTS,), migrations=read_side.MIGRATIONS, console_page=read_side.CONSOLE_PAGE,
    routers=lambda: (query_router(),),
)
