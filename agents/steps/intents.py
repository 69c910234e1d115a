"""The steps domain's intent handlers, pure functions of a step's data and spec.

The deterministic intents (transform, filter, conditional, aggregate, validate), the deterministic fallback of the
model intents, the payload a `send` step queues, and what a model step's plan is made of: system prompts, the
rendered and the compressed prompt, routing, the USD upper bound of a call and the savings ledger of one call.
The step runner (agents.steps.effects) calls them; a StepError is a failed step.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jmespath
import jsonschema
import msgspec

from agents.errors import AgentError
from agents.llm import Usage, cost_usd, price_of
from schemas import UnknownEventType, registration
from schemas.steps import Plan, Savings, StepApproved
from streams.settings import ModelPrice

if TYPE_CHECKING:
    from agents.steps.config import Route

SYSTEM_PROMPTS = {
    "extract": "You extract structured facts from the data you are given. Answer with JSON only.",
    "summarize": "You summarize the data you are given faithfully and briefly. Answer with the summary only.",
    "generate": "You write the text the instruction asks for from the data you are given.",
    "enrich": "You enrich the JSON record you are given with the fields the instruction asks for. "
              "Answer with the enriched JSON object only.",
}


class StepError(AgentError):
    """A handler could not run its step (bad spec, invalid data, missing field)."""


# ---- deterministic handlers ---------------------------------------------------------------------------------


def _search(expression: Any, data: Any, field: str) -> Any:
    if not isinstance(expression, str):
        raise StepError(f"spec.{field} must be a JMESPath expression")
    try:
        return jmespath.search(expression, data)
    except jmespath.exceptions.JMESPathError as exc:
        raise StepError(f"spec.{field}: {exc}") from None


def transform(data: Any, spec: dict[str, Any]) -> Any:
    """`{"expression": "<jmespath>"}` → the expression's value over the data."""
    return _search(spec.get("expression"), data, "expression")


def filter_items(data: Any, spec: dict[str, Any]) -> Any:
    """`{"items": "<jmespath list>", "where": "<jmespath per item>"}` → the items where `where` is truthy."""
    items = _search(spec.get("items", "input"), data, "items")
    if not isinstance(items, list):
        raise StepError("spec.items must select a list")
    return [item for item in items if _search(spec.get("where"), item, "where")]


def conditional(data: Any, spec: dict[str, Any]) -> Any:
    """`{"when": "<jmespath>", "then": [step ids], "else": [step ids]}`: the other branch's steps are skipped."""
    value = bool(_search(spec.get("when"), data, "when"))
    return {"condition": value, "branch": "then" if value else "else"}


_AGGREGATES: dict[str, Callable[[list[Any]], Any]] = {
    "count": len, "sum": sum, "min": lambda v: min(v) if v else None, "max": lambda v: max(v) if v else None,
    "avg": lambda v: sum(v) / len(v) if v else None,
}


def aggregate(data: Any, spec: dict[str, Any]) -> Any:
    """`{"items": expr, "group_by": expr?, "metrics": {name: {"op": count|sum|avg|min|max, "of": expr}}}`."""
    items = _search(spec.get("items", "input"), data, "items")
    if not isinstance(items, list):
        raise StepError("spec.items must select a list")
    metrics = spec.get("metrics") or {"count": {"op": "count"}}
    if not isinstance(metrics, dict):
        raise StepError("spec.metrics must be an object")

    def measure(group: list[Any]) -> dict[str, Any]:
        result = {}
        for name, metric in metrics.items():
            op = metric.get("op") if isinstance(metric, dict) else None
            if op not in _AGGREGATES:
                raise StepError(f"spec.metrics.{name}.op must be one of {sorted(_AGGREGATES)}")
            values = group if op == "count" else [
                v for v in (_search(metric.get("of"), item, f"metrics.{name}.of") for item in group) if v is not None]
            try:
                result[name] = _AGGREGATES[op](values)
            except TypeError as exc:
                raise StepError(f"spec.metrics.{name}: {exc}") from None
        return result

    if "group_by" not in spec:
        return measure(items)
    groups: dict[str, list[Any]] = {}
    for item in items:
        groups.setdefault(str(_search(spec["group_by"], item, "group_by")), []).append(item)
    return {key: measure(group) for key, group in groups.items()}


def validate(data: Any, spec: dict[str, Any]) -> Any:
    """`{"schema": {JSON Schema}, "of": expr?}`: the data (or `of` of it) must match; otherwise the step fails."""
    target = _search(spec["of"], data, "of") if "of" in spec else data.get("input") if isinstance(data, dict) else data
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise StepError("spec.schema must be a JSON Schema object")
    try:
        validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
        validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise StepError(f"spec.schema: {exc.message}") from None
    errors = sorted(validator.iter_errors(target), key=lambda e: list(e.absolute_path))
    if errors:
        raise StepError("; ".join(f"{'/'.join(map(str, e.absolute_path)) or '$'}: {e.message}" for e in errors[:10]))
    return {"valid": True, "value": target}


DETERMINISTIC: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "transform": transform, "filter": filter_items, "conditional": conditional, "aggregate": aggregate,
    "validate": validate,
}


def fallback_output(intent: str, data: Any, spec: dict[str, Any], summary_words: int) -> Any:
    """The deterministic path of a model intent: `spec.fallback` (JMESPath) when given, else a plain rule."""
    if "fallback" in spec:
        return _search(spec["fallback"], data, "fallback")
    value = data.get("input") if isinstance(data, dict) else data
    if intent == "summarize":
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
        words = text.split()
        return " ".join(words[:summary_words]) + (" …" if len(words) > summary_words else "")
    if intent == "enrich" and isinstance(value, dict):
        return {**value, **(spec.get("defaults") or {})}
    if intent == "generate" and isinstance(spec.get("template"), str):
        try:
            return spec["template"].format_map(value if isinstance(value, dict) else {"input": value})
        except (KeyError, IndexError, ValueError) as exc:
            raise StepError(f"spec.template: {exc}") from None
    return value


# ---- prompts, compression, savings --------------------------------------------------------------------------


def render(data: Any, instruction: str) -> str:
    """The uncompressed prompt an agent would send: its instruction and the data as indented JSON."""
    body = data if isinstance(data, str) else json.dumps(data, indent=2, ensure_ascii=False)
    return f"{instruction}\n\n{body}" if instruction else body


_SPACES = re.compile(r"[ \t\f\v]+")
_BLANK_RUNS = re.compile(r"\n{3,}")


def _squeeze(text: str) -> str:
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    seen: set[str] = set()
    kept = []
    for line in lines:
        if line and line in seen:
            continue
        seen.add(line)
        kept.append(line)
    return _BLANK_RUNS.sub("\n\n", "\n".join(kept)).strip()


def _tabulate(value: Any) -> Any:
    """Lists of objects sharing their keys become {"columns", "rows"}: each key is written once."""
    if isinstance(value, dict):
        return {k: _tabulate(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_tabulate(v) for v in value]
        if len(items) >= 2 and all(isinstance(i, dict) for i in items):
            keys = list(items[0])
            if keys and all(list(i) == keys for i in items):
                return {"columns": keys, "rows": [[i[k] for k in keys] for i in items]}
        return items
    if isinstance(value, str):
        return _squeeze(value)
    return value


def compress(data: Any, instruction: str) -> tuple[str, list[str]]:
    """Deterministic compression: whitespace, duplicate lines, repeated JSON keys; and what was applied."""
    applied = []
    if isinstance(data, str):
        body = _squeeze(data)
        if body != data:
            applied.append("whitespace+duplicate_lines")
    else:
        table = _tabulate(data)
        if table != data:
            applied.append("json_keys")
        body = json.dumps(table, separators=(",", ":"), ensure_ascii=False)
        if body != json.dumps(data, indent=2, ensure_ascii=False):
            applied.append("json_whitespace")
    prompt = f"{_squeeze(instruction)}\n\n{body}" if instruction else body
    return prompt, applied


def savings(plan: Plan, usage: Usage, prices: dict[str, ModelPrice]) -> tuple[Savings, Savings, Savings, float, float]:
    """(compression, routing, caching, counterfactual USD, actual USD) of one call, without double counting.

    Counterfactual: the unrouted model, the uncompressed prompt, no cache, the same output. Routing saves the
    price difference of the uncompressed prompt; compression the input tokens it removed (the model's counts
    against the call's usage); caching the price difference of cache reads and writes. They sum to the
    counterfactual's cost minus the actual cost.
    """
    routed, base = price_of(prices, plan.model), price_of(prices, plan.counterfactual_model)
    used_input = usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
    if not plan.raw_tokens_counterfactual:  # never counted (fail-open estimate): nothing is claimed saved
        plan = msgspec.structs.replace(plan, raw_tokens_counterfactual=used_input, raw_tokens_routed=used_input,
                                       counterfactual_model=plan.model)
        base = routed
    counterfactual = (plan.raw_tokens_counterfactual * base.input_usd_per_mtok
                      + usage.output_tokens * base.output_usd_per_mtok) / 1e6
    unrouted_on_routed = (plan.raw_tokens_routed * routed.input_usd_per_mtok
                          + usage.output_tokens * routed.output_usd_per_mtok) / 1e6
    actual = cost_usd(prices, plan.model, usage)
    compression_tokens = plan.raw_tokens_routed - used_input
    cached_input = (usage.input_tokens * routed.input_usd_per_mtok
                    + usage.cache_read_input_tokens * routed.cache_read_usd_per_mtok
                    + usage.cache_creation_input_tokens * routed.cache_write_usd_per_mtok) / 1e6
    return (
        Savings(tokens=compression_tokens, usd=round(compression_tokens * routed.input_usd_per_mtok / 1e6, 9)),
        Savings(tokens=plan.raw_tokens_counterfactual - plan.raw_tokens_routed,
                usd=round(counterfactual - unrouted_on_routed, 9)),
        Savings(tokens=0, usd=round(used_input * routed.input_usd_per_mtok / 1e6 - cached_input, 9)),
        round(counterfactual, 9),
        round(actual, 9),
    )


def route(routes: list[Route], intent: str, input_tokens: int, default: str) -> str:
    """The first rule matching the intent and input size, else the default model."""
    for rule in routes:
        if rule.intent in ("*", intent) and (rule.max_input_tokens is None or input_tokens <= rule.max_input_tokens):
            return rule.model
    return default


def usd_bound(prices: dict[str, ModelPrice], model: str, input_tokens: int, output_tokens: int) -> float:
    """The most a call can cost: every input token at the dearer of input and cache-write prices."""
    price = price_of(prices, model)
    per_input = max(price.input_usd_per_mtok, price.cache_write_usd_per_mtok)
    return round((input_tokens * per_input + output_tokens * price.output_usd_per_mtok) / 1e6, 9)


# ---- send ---------------------------------------------------------------------------------------------------


def registered(event_type: str) -> type | None:
    """The payload class of an event type when its domain's catalog is registered, else None."""
    try:
        return registration(event_type).payload
    except UnknownEventType:
        return None


def send_payload(approved: StepApproved) -> tuple[Any, str]:
    """The outbound queue's message when that domain's events are registered, else a conversation reply."""
    spec = approved.spec
    text = _search(spec["text_from"], approved.data, "text_from") if "text_from" in spec else spec.get("text")
    queued = registered("outbound.message.queued")
    if queued is not None:
        fields = spec.get("fields") or {}
        if "fields_from" in spec:
            fields = _search(spec["fields_from"], approved.data, "fields_from") or {}
        if not isinstance(fields, dict):
            raise StepError("spec.fields_from must select an object")
        if text is not None:
            fields = {"text": str(text), **fields}
        message_data = {field.name: field.type for field in msgspec.structs.fields(queued)}["message_data"]
        message = message_data(type=str(spec.get("message_type", "text")), fields=fields)
        return queued(
            user_id=str(spec.get("user_id", approved.user_id)), agent_id=approved.agent_id, message_data=message,
            priority=spec.get("priority", "medium"), can_delay=bool(spec.get("can_delay", True)),
            idempotency_key=f"{approved.execution_id}/{approved.step_id}"), "outbound"
    from schemas.conversations import ReplyRequested

    if not spec.get("contact") or text is None:
        raise StepError("spec.contact and spec.text (or text_from) are needed to reply in a conversation")
    session_id = uuid.UUID(spec["session_id"]) if spec.get("session_id") else uuid.uuid5(
        uuid.NAMESPACE_URL, f"steps:{approved.execution_id}")
    return ReplyRequested(session_id=session_id, contact=str(spec["contact"]), in_reply_to=session_id,
                          lane=spec.get("lane", "info"), text=str(text)), "conversation"
