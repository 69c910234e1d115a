"""The costs domain, declared for the registry: the ledger of every LLM call any domain's effects make."""

from __future__ import annotations

from agents.batching import Folder
from agents.folds.costs import decode_state, encode_state, fold
from projections.migrations import CORE
from projections.writers.costs import LLM_COSTS
from schemas.costs import CATALOG
from streams.domains import Domain, StateCodec


def _routers() -> tuple:
    from projections.api.costs import costs_router

    return (costs_router(),)


DOMAIN = Domain(
    name="costs",
    catalog=CATALOG,
    folder=lambda _settings: Folder(fold=fold, config=None),
    state_table="cost-days",
    state_codec=StateCodec(encode=encode_state, decode=decode_state),
    read_models=(LLM_COSTS,),
    migrations=CORE.parent / "costs",
    routers=_routers,
    console_page=CORE.parent.parent / "console" / "pages" / "costs.js",
)
