"""The learning domain's plan composition: the model's prompt and how its answer is read, and the deterministic
template plan built from the agents' signals (or from the intent alone)."""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.learning import IntentSnapshot, PlanSummary, SignalQuality

STEP_KEYS = ("steps", "objectives", "exercises", "tasks", "questions")
TITLE_KEYS = ("focus", "title", "topic")
TEXT_KEYS = ("summary", "advice", "description", "message")
MAX_STEPS = 8


PLAN_SYSTEM_PROMPT = (
    "You plan one day of study for a learner. You get the learner's intent (topic, depth, end goal, minutes per day) "
    "and advice from several agents as JSON. Answer with one JSON object and nothing else: "
    '{"title": str, "description": str, "steps": [str, ...], "plan_md": str}. '
    "The steps fit the learner's minutes per day; plan_md is the full plan in Markdown."
)


class _ModelPlan(msgspec.Struct):
    title: str
    description: str
    steps: list[str]
    plan_md: str


def _model_plan(text: str) -> tuple[str, PlanSummary] | None:
    """The plan in a model's answer (a JSON object, possibly fenced), or None."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        plan = msgspec.json.decode(text[start:end + 1], type=_ModelPlan)
    except msgspec.DecodeError:
        return None
    if not plan.title.strip() or not plan.steps:
        return None
    return plan.plan_md, PlanSummary(title=plan.title, description=plan.description, steps=plan.steps[:MAX_STEPS])


def _first_text(values: list[Any], keys: tuple[str, ...]) -> str | None:
    for value in values:
        if isinstance(value, dict):
            for key in keys:
                if isinstance(value.get(key), str) and value[key].strip():
                    return value[key].strip()
    return None


def _step_text(item: Any) -> str | None:
    if isinstance(item, dict):
        item = item.get("title") or item.get("text")
    return item.strip() if isinstance(item, str) and item.strip() else None


def _items(value: Any) -> list[str]:
    """The step-like strings of one signal (lists under STEP_KEYS; items are strings or {title|text})."""
    if not isinstance(value, dict):
        return []
    lists = [value[key] for key in STEP_KEYS if isinstance(value.get(key), list)]
    return [text for items in lists for item in items if (text := _step_text(item)) is not None]


def template_plan(intent: IntentSnapshot, week: int, day: int, data: dict[str, Any],
                  quality: dict[str, SignalQuality], degraded: bool) -> tuple[str, PlanSummary]:
    """The deterministic plan: title, description and steps taken from the signals, else from the intent alone."""
    signals = list(data.values())
    title = _first_text(signals, TITLE_KEYS) or f"{intent.topic}: week {week}, day {day}"
    description = _first_text(signals, TEXT_KEYS) or f"A step toward your goal: {intent.end_goal or intent.topic}."
    steps = list(dict.fromkeys(step for value in signals for step in _items(value)))[:MAX_STEPS] or [
        f"Review what you already know about {intent.topic}",
        f"Practice {intent.topic} hands-on",
        "Write down three questions for tomorrow",
    ]
    minutes = max(1, intent.time_per_day_min // len(steps))
    lines = [
        "# Daily Learning Plan", "", f"## Today's Focus: {title}", "", description, "",
        f"Week {week}, day {day} · {intent.time_per_day_min} min · depth: {intent.depth}", "", "## Steps", "",
        *(f"{i}. {step} (about {minutes} min)" for i, step in enumerate(steps, 1)), "", "## Sources", "",
        *(f"- {agent}: {'fresh' if q.fresh else 'cached' if q.available else 'unavailable'}"
          for agent, q in quality.items()),
    ]
    if degraded:
        lines += ["", "> Some agents could not be reached: this plan uses cached or fallback guidance."]
    return "\n".join(lines) + "\n", PlanSummary(title=title, description=description, steps=steps)
