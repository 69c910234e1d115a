"""A small domain of the tests' own, registered through BATON_EXTRA_DOMAINS: counters that add amounts.

It is the skeleton a new domain copies: the same inner names as a product domain's packages (README, "Adding a
domain"), flat in this one package: schemas.py (events, catalog), fold.py (state, fold, CODEC), config.py (the
folder and effect-worker factories), effects.py (the effect worker), readmodels.py, routes.py (GET only),
migrations/, and here `DOMAIN = Domain(...)` tying them together. Nothing outside this package names it but the
test that registers it (tests/integration/test_domain_registry.py).
"""

from __future__ import annotations

from pathlib import Path

from streams.registry import Domain
from tests.tally.config import build_effects, tally_folder
from tests.tally.fold import CODEC
from tests.tally.readmodels import COUNTERS
from tests.tally.routes import query_router
from tests.tally.schemas import CATALOG

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

DOMAIN = Domain(
    name="tally",
    catalog=CATALOG,
    folder=tally_folder,
    state_table="tallies",
    state_codec=CODEC,
    read_models=(COUNTERS,),
    migrations=MIGRATIONS,
    routers=lambda: (query_router(),),
    effects=build_effects,
)
