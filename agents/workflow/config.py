"""The workflow domain's worker side: its settings and its fold as configured (templates: agents.workflow.templates)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.batching import Folder
from agents.workflow.templates import (
    DEFAULT_TEMPLATE,
    Templates,
    WorkflowTemplate,
    load_template,
    load_templates,
)
from streams.registry import DomainPolicy
from streams.settings import loaded

if TYPE_CHECKING:
    from agents.workflow.fold import FoldConfig


class WorkflowSettings(BaseSettings):
    """Settings of the workflow domain (env prefix BATON_WORKFLOW_)."""

    model_config = SettingsConfigDict(env_prefix="BATON_WORKFLOW_", extra="ignore")

    template_file: Path = DEFAULT_TEMPLATE
    # <tenant>.yaml files here replace template_file for that tenant.
    tenant_templates_dir: Path | None = None
    allow_phase_skip: bool = False
    allow_user_override: bool = True
    search_half_life_hours: float = Field(24.0 * 7, gt=0)
    search_cache_ttl_s: float = Field(3600.0, ge=0)
    search_cache_entries: int = Field(1024, ge=0)
    # Project roots stripped from bug file paths before fingerprinting (beside the common deployment roots).
    strip_roots: list[str] = []
    # How long the API waits for the fold's decision before answering 202 with the request's event id.
    decision_timeout_s: float = Field(10.0, gt=0)


class WorkflowPolicy(BaseModel):
    """The workflow section of a policy (schemas.policies): the templates (in full) and the gate flags. Its
    defaults are the built-in policy: examples/workflow.yaml."""

    model_config = ConfigDict(extra="forbid")

    template: WorkflowTemplate = Field(default_factory=lambda: load_template(DEFAULT_TEMPLATE))
    tenant_templates: dict[str, WorkflowTemplate] = {}
    allow_phase_skip: bool = False
    allow_user_override: bool = True

    def fold_config(self) -> FoldConfig:
        from agents.workflow.fold import FoldConfig

        return FoldConfig(templates=Templates(self.template, self.tenant_templates),
                          allow_phase_skip=self.allow_phase_skip, allow_user_override=self.allow_user_override)


def _configured() -> dict:
    settings = loaded(WorkflowSettings)
    templates = load_templates(settings)
    return WorkflowPolicy(template=templates.default, tenant_templates=templates.by_tenant,
                          allow_phase_skip=settings.allow_phase_skip,
                          allow_user_override=settings.allow_user_override).model_dump(mode="json")


POLICY = DomainPolicy(model=WorkflowPolicy, configured=_configured)


def fold_config(settings: WorkflowSettings, templates: Templates | None = None, *,
                allow_phase_skip: bool | None = None, allow_user_override: bool | None = None) -> FoldConfig:
    """The fold's configuration from the settings; `templates` and the flags given replace theirs (what-if)."""
    from agents.workflow.fold import FoldConfig

    return FoldConfig(
        templates=templates if templates is not None else load_templates(settings),
        allow_phase_skip=settings.allow_phase_skip if allow_phase_skip is None else allow_phase_skip,
        allow_user_override=settings.allow_user_override if allow_user_override is None else allow_user_override,
    )


def workflow_folder(_settings: object) -> Folder:
    """The workflow fold under the built-in policy (the spine decides each event under its stamped one)."""
    from agents.workflow.fold import fold

    return Folder(fold=fold, config=WorkflowPolicy().fold_config())
