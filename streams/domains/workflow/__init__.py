"""The workflow domain, declared for the registry: tasks through phases, sprints, bugs, context search."""

from __future__ import annotations

from agents.workflow.config import POLICY, WorkflowSettings, workflow_folder
from agents.workflow.fold import CODEC
from projections import workflow as read_side
from projections.workflow.readmodels import READ_MODELS
from projections.workflow.routes import query_router
from schemas.workflow import CATALOG
from streams.domains.workflow.cli import add_commands
from streams.domains.workflow.commands import command_router
from streams.registry import Domain

DOMAIN = Domain(
    name="workflow", catalog=CATALOG, settings=WorkflowSettings, policy=POLICY,
    folder=workflow_folder, state_table="workflow-states", state_codec=CODEC,
    read_models=READ_MODELS, migrations=read_side.MIGRATIONS, console_page=read_side.CONSOLE_PAGE,
    routers=lambda: (command_router(), query_router()), commands=add_commands,
)
