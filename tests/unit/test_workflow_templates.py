"""Workflow templates: the shipped default, and errors that name the phase and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agents.workflow.config import WorkflowSettings
from agents.workflow.templates import (
    DEFAULT_TEMPLATE,
    TemplateError,
    load_template,
    load_templates,
    parse_template,
)


def default_document() -> dict:
    return yaml.safe_load(DEFAULT_TEMPLATE.read_text())


def test_default_template_has_six_phases_and_two_variants() -> None:
    template = load_template(DEFAULT_TEMPLATE)
    assert template.phases_of("feature") == ["intake", "research", "plan", "execute", "review", "close"]
    assert template.phases_of("bug_fix") == ["intake", "research", "execute", "review", "close"]
    execute = template.phases["execute"]
    assert execute.order == 4 and execute.artifacts.optional == ["BUGS.md", "TOOLS.md"]
    assert "execute.step_complete" in execute.events and "REVIEW" in execute.next_step
    assert template.phases["plan"].artifacts.required == ["PLAN.md"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["phases"]["plan"]["artifacts"].update(required="PLAN.md"),
     "phase 'plan': key artifacts.required: Input should be a valid list"),
    (lambda d: d["phases"]["review"].pop("goal"), "phase 'review': key goal: Field required"),
    (lambda d: d["phases"]["close"].update(order=0), "phase 'close': key order: Input should be greater than or equal to 1"),
    (lambda d: d["phases"]["intake"].update(gaol="x"), "phase 'intake': key gaol: Extra inputs are not permitted"),
    (lambda d: d["phases"]["close"].update(order=4), "phase 'execute': key order: 4 is also the order of 'close'"),
    (lambda d: d["variants"].update(bug_fix=["intake", "debug"]),
     "variants.bug_fix: phase 'debug' is not defined under phases"),
    (lambda d: d["variants"].update(bug_fix=["research", "intake"]), "variants.bug_fix: phases must be listed once each"),
])
def test_invalid_templates_name_the_phase_and_key(change, message: str) -> None:
    document = default_document()
    change(document)
    with pytest.raises(TemplateError, match="workflow.yaml") as raised:
        parse_template(yaml.safe_dump(document), "workflow.yaml")
    assert message in str(raised.value)


def test_a_tenant_supplies_its_own_template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    document = default_document()
    document["variants"]["spike"] = ["intake", "research", "close"]
    (tmp_path / "globex.yaml").write_text(yaml.safe_dump(document))
    monkeypatch.setenv("BATON_WORKFLOW_TENANT_TEMPLATES_DIR", str(tmp_path))
    monkeypatch.setenv("BATON_WORKFLOW_ALLOW_PHASE_SKIP", "true")
    settings = WorkflowSettings()
    assert settings.allow_phase_skip and settings.allow_user_override
    templates = load_templates(settings)
    assert "spike" in templates.of("globex").variants and "spike" not in templates.of("acme").variants


def test_unreadable_and_malformed_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="missing.yaml: cannot read"):
        load_template(tmp_path / "missing.yaml")
    with pytest.raises(TemplateError, match="not valid YAML"):
        parse_template("phases: [", "bad.yaml")
