"""The workflow templates: their models (pydantic), parsing and loading with errors that name the phase and key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from agents.errors import AgentError

if TYPE_CHECKING:
    from agents.workflow.config import WorkflowSettings

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATE = ROOT / "examples" / "workflow.yaml"
_PHASE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

PhaseName = Annotated[str, StringConstraints(pattern=_PHASE_NAME.pattern)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class TemplateError(AgentError, ValueError):
    """A workflow template that cannot be used; the message names the file, the phase and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArtifactRules(_Strict):
    """Files a phase needs: required ones gate the completion, optional ones are only recommended."""

    required: list[Name] = []
    optional: list[Name] = []


class FieldRules(_Strict):
    """Task fields a phase needs: required ones gate the completion, recommended ones are reported."""

    required: list[Name] = []
    recommended: list[Name] = []


class PhaseTemplate(_Strict):
    """One phase of the workflow."""

    order: int = Field(ge=1)
    goal: Name
    description: str = ""
    artifacts: ArtifactRules = ArtifactRules()
    fields: FieldRules = FieldRules()
    events: list[Name] = []
    next_step: str = ""


class WorkflowTemplate(_Strict):
    """Phases and the variants (task types) listing them in order."""

    version: int = Field(1, ge=1)
    default_variant: PhaseName = "feature"
    variants: dict[PhaseName, list[PhaseName]]
    phases: dict[PhaseName, PhaseTemplate]

    @model_validator(mode="after")
    def _consistent(self) -> WorkflowTemplate:
        orders: dict[int, str] = {}
        for name, phase in self.phases.items():
            if phase.order in orders:
                raise ValueError(f"phase {name!r}: key order: {phase.order} is also the order of {orders[phase.order]!r}")
            orders[phase.order] = name
        for variant, names in self.variants.items():
            if not names:
                raise ValueError(f"variants.{variant}: lists no phase")
            for name in names:
                if name not in self.phases:
                    raise ValueError(f"variants.{variant}: phase {name!r} is not defined under phases")
            if [self.phases[n].order for n in names] != sorted({self.phases[n].order for n in names}):
                raise ValueError(f"variants.{variant}: phases must be listed once each, in phase order")
        if self.default_variant not in self.variants:
            raise ValueError(f"default_variant: {self.default_variant!r} is not a variant")
        return self

    def phases_of(self, variant: str) -> list[str]:
        """The phases of a task type, in order."""
        return self.variants[variant]


def parse_template(text: str, source: str = "<template>") -> WorkflowTemplate:
    """A validated template from YAML text; TemplateError names the phase and key of each problem."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TemplateError(f"{source}: not valid YAML: {exc}") from None
    try:
        return WorkflowTemplate.model_validate(document)
    except ValidationError as exc:
        raise TemplateError(f"{source}: " + "; ".join(_located(error) for error in exc.errors())) from None


def _located(error: dict) -> str:
    loc = [str(part) for part in error["loc"]]
    message = error["msg"].removeprefix("Value error, ")
    if len(loc) >= 2 and loc[0] == "phases":
        key = ".".join(loc[2:]) or "(the phase)"
        return f"phase {loc[1]!r}: key {key}: {message}"
    return f"key {'.'.join(loc)}: {message}" if loc else message


def load_template(path: Path) -> WorkflowTemplate:
    """The validated template of a file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TemplateError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_template(text, str(path))


class Templates:
    """The default template and the tenants' own ones."""

    def __init__(self, default: WorkflowTemplate, by_tenant: dict[str, WorkflowTemplate] | None = None) -> None:
        self.default = default
        self.by_tenant = by_tenant or {}

    def of(self, tenant_id: str) -> WorkflowTemplate:
        return self.by_tenant.get(tenant_id, self.default)


def load_templates(settings: WorkflowSettings) -> Templates:
    """The templates the settings name, each validated."""
    by_tenant = {}
    if settings.tenant_templates_dir is not None:
        by_tenant = {path.stem: load_template(path) for path in sorted(settings.tenant_templates_dir.glob("*.yaml"))}
    return Templates(load_template(settings.template_file), by_tenant)
