"""The costs domain, declared for the registry: the ledger of every LLM call any domain's effects make."""

from __future__ import annotations

from agents.batching import Folder
from agents.costs.fold import CODEC, fold
from projections import costs as read_side
from projections.costs.readmodels import LLM_COSTS
from schemas.costs import CATALOG
from streams.domains import Domain


def _routers() -> tuple:
    from projections.costs.routes import costs_router

    return (costs_router(),)


DOMAIN = Domain(
    name="costs",
    catalog=CATALOG,
    folder=lambda _settings: Folder(fold=fold, config=None),
    state_table="cost-days",
    state_codec=CODEC,
    read_models=(LLM_COSTS,),
    migrations=read_side.MIGRATIONS,
    routers=_routers,
    console_page=read_side.CONSOLE_PAGE,
)
