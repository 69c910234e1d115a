"""The workflow domain, declared for the registry: tasks through phases, sprints, bugs, context search."""

from __future__ import annotations

from agents.folds.workflow import decode_state, encode_state
from agents.workflow import workflow_folder
from projections.migrations import CORE
from projections.writers.workflow import READ_MODELS
from schemas.workflow import CATALOG
from streams.domains import Domain, StateCodec


def _routers() -> tuple:
    from projections.api.workflow import workflow_router

    return (workflow_router(),)


def _commands(cli: object) -> None:
    from streams.workflow import add_commands

    add_commands(cli)


DOMAIN = Domain(
    name="workflow",
    catalog=CATALOG,
    folder=workflow_folder,
    state_table="workflow-states",
    state_codec=StateCodec(encode=encode_state, decode=decode_state),
    read_models=READ_MODELS,
    migrations=CORE.parent / "workflow",
    routers=_routers,
    commands=_commands,
    console_page=CORE.parent.parent / "console" / "pages" / "workflow.js",
)
