"""The steps domain's worker side: settings, the fold as configured, and the step runner (an effect worker).

The runner answers two requests. A `steps.step.requested` is estimated: for a model step the prompt is built,
routed (intent + input tokens → model), compressed and counted with the model's token-counting endpoint, and an
upper bound of its tokens and USD goes to the tenant's budget stream. A `steps.step.approved` is executed by the
intent's handler; its outcome, the reservation's settlement and the cost-ledger record come back as events.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import re
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jmespath
import jsonschema
import msgspec
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.batching import Folder
from agents.llm import (
    Completion,
    LlmClient,
    LlmError,
    Usage,
    cost_event,
    cost_usd,
    llm_client,
    price_of,
)
from agents.steps.fold import FoldConfig, fold
from schemas import Envelope, emitted
from schemas.steps import (
    MODEL_INTENTS,
    Alternative,
    Flags,
    Limit,
    Plan,
    ReservationSettled,
    Savings,
    StepApproved,
    StepDegraded,
    StepEstimated,
    StepExecuted,
    StepFailed,
    StepRequested,
)
from streams.settings import DEFAULT_LLM_PRICES, ModelPrice, Settings

ACTOR = "effect:steps"
REQUESTED = "steps.step.requested"
APPROVED = "steps.step.approved"
# Emission indexes are fixed per kind, so a re-run derives the same event ids.
OUTCOME, SETTLED, DEGRADED, COST, FALLBACK_COST, SENT = range(6)

SYSTEM_PROMPTS = {
    "extract": "You extract structured facts from the data you are given. Answer with JSON only.",
    "summarize": "You summarize the data you are given faithfully and briefly. Answer with the summary only.",
    "generate": "You write the text the instruction asks for from the data you are given.",
    "enrich": "You enrich the JSON record you are given with the fields the instruction asks for. "
              "Answer with the enriched JSON object only.",
}


class Route(BaseModel):
    """One routing rule: steps of `intent` ("*" any) whose input has at most `max_input_tokens` use `model`."""

    intent: str = "*"
    max_input_tokens: int | None = Field(None, ge=0)
    model: str


class LimitSetting(BaseModel):
    """A default limit (tokens and/or USD; None unlimited)."""

    tokens: int | None = Field(None, ge=0)
    usd: float | None = Field(None, ge=0)


DEFAULT_ROUTES = [
    Route(intent="extract", max_input_tokens=8000, model="claude-haiku-4-5"),
    Route(intent="enrich", max_input_tokens=8000, model="claude-haiku-4-5"),
    Route(intent="summarize", max_input_tokens=16000, model="claude-haiku-4-5"),
    Route(intent="generate", max_input_tokens=2000, model="claude-haiku-4-5"),
]


class StepsSettings(BaseSettings):
    """Settings of the steps domain (env prefix BATON_STEPS_; dicts and lists as JSON)."""

    model_config = SettingsConfigDict(env_prefix="BATON_STEPS_", extra="ignore")

    # USD per million tokens, cache reads and writes apart: budgets reserve and settle at these prices.
    prices: dict[str, ModelPrice] = Field(default_factory=lambda: dict(DEFAULT_LLM_PRICES))
    # The unrouted model: the counterfactual every saving is measured against.
    default_model: str = "claude-sonnet-4-5"
    routes: list[Route] = Field(default_factory=lambda: list(DEFAULT_ROUTES))
    # Models a step may be degraded to when its estimate's USD does not fit (flag degrade_over_budget).
    cheaper_models: list[str] = Field(default_factory=lambda: ["claude-haiku-4-5"])
    max_output_tokens: dict[str, int] = Field(default_factory=lambda: {
        "extract": 512, "summarize": 256, "generate": 1024, "enrich": 512})
    # Counted input tokens are reserved with this margin, so the reservation bounds what the call uses.
    input_margin: float = Field(0.05, ge=0)
    # Shortest prefix (tokens) each model caches; a prefix shorter than this is sent without cache_control.
    cache_min_tokens: dict[str, int] = Field(default_factory=lambda: {
        "claude-haiku-4-5": 4096, "claude-sonnet-4-5": 1024, "claude-opus-4-5": 4096})
    # Model requests (counts and calls) in flight at once per worker; more wait their turn.
    max_concurrent_calls: int = Field(8, ge=1)
    step_timeout_s: float = Field(60.0, gt=0)
    reservation_ttl_s: float = Field(600.0, gt=0)
    default_timezone: str = "UTC"
    # Default limits by "scope:subject" ("user:*" every user's daily default, "execution:*" each execution's).
    limits: dict[str, LimitSetting] = Field(default_factory=dict)
    flags: dict[str, bool] = Field(default_factory=dict)
    retention_days: int = Field(3, ge=1)
    summary_fallback_words: int = Field(60, ge=1)
    # How long POST /v1/executions?wait=true waits for the projected result.
    wait_timeout_s: float = Field(60.0, gt=0)


def steps_folder(_settings: Settings) -> Folder:
    """The steps fold with its defaults from BATON_STEPS_*."""
    config = StepsSettings()
    return Folder(fold=fold, config=FoldConfig(
        default_limits={key: Limit(tokens=v.tokens, usd=v.usd) for key, v in config.limits.items()},
        default_flags=Flags(**config.flags),
        default_timezone=config.default_timezone,
        reservation_ttl=timedelta(seconds=config.reservation_ttl_s),
        retention_days=config.retention_days,
    ))


def build_runner(settings: Settings) -> StepRunner:
    """The step runner with the shared LLM client when ANTHROPIC_API_KEY is set."""
    return StepRunner(StepsSettings(), llm_client(settings))


class StepError(Exception):
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


# ---- the runner ---------------------------------------------------------------------------------------------


def _send_payload(approved: StepApproved, output: Any) -> tuple[Any, str]:
    """The outbound queue's MessageQueued when that domain is installed, else a conversation reply."""
    spec = approved.spec
    text = _search(spec["text_from"], approved.data, "text_from") if "text_from" in spec else spec.get("text")
    try:
        outbound = importlib.import_module("schemas.outbound")
    except ImportError:
        outbound = None
    if outbound is not None:
        fields = spec.get("fields") or {}
        if "fields_from" in spec:
            fields = _search(spec["fields_from"], approved.data, "fields_from") or {}
        if not isinstance(fields, dict):
            raise StepError("spec.fields_from must select an object")
        if text is not None:
            fields = {"text": str(text), **fields}
        message = outbound.MessageData(type=str(spec.get("message_type", "text")), fields=fields)
        return outbound.MessageQueued(
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


class StepRunner:
    """Estimates requested steps and executes approved ones; every outcome is an event, none is silent."""

    effect_types = frozenset({REQUESTED, APPROVED})
    # A model call spends budget and a send reaches a person: an approved step never runs twice.
    not_repeatable = frozenset({APPROVED})

    def __init__(self, config: StepsSettings, client: LlmClient | None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.config = config
        self.client = client
        self.clock = clock
        self._calls = asyncio.Semaphore(config.max_concurrent_calls)

    async def run(self, envelope: Envelope) -> list[Envelope]:
        """Result events of one request."""
        payload = envelope.payload
        if isinstance(payload, StepRequested):
            return [await self.estimate(envelope, payload)]
        if isinstance(payload, StepApproved):
            return await self.execute(envelope, payload)
        return []

    def unknown_outcome(self, envelope: Envelope) -> list[Envelope]:
        """An approved step that started before a crash: failed, not retried, its whole reservation charged."""
        approved = envelope.payload
        if not isinstance(approved, StepApproved):
            return []
        failed = StepFailed(execution_id=approved.execution_id, step_id=approved.step_id, intent=approved.intent,
                            error="outcome unknown: the worker stopped during the step; not retried",
                            outcome_unknown=True)
        return [self._emit(envelope, OUTCOME, failed), self._settle(envelope, approved, "unknown")]

    # -- estimate

    async def estimate(self, envelope: Envelope, request: StepRequested) -> Envelope:
        """The step's upper bound of tokens and USD, with the plan a model step will call."""
        common = {"execution_id": request.execution_id, "step_id": request.step_id, "intent": request.intent,
                  "agent_id": request.agent_id, "user_id": request.user_id, "token_budget": request.token_budget,
                  "data": request.data, "spec": request.spec}
        if request.intent not in MODEL_INTENTS or self.client is None:
            return self._emit(envelope, OUTCOME, StepEstimated(**common))
        flags = request.flags if request.flags.orchestration else Flags(
            orchestration=False, compression=False, routing=False, caching=False)
        plan, unavailable = await self._plan(request, flags)
        max_tokens = plan.max_tokens
        if unavailable:
            tokens = len(plan.system.encode()) + len(plan.prompt.encode()) + max_tokens
        else:
            tokens = math.ceil(plan.compressed_tokens * (1 + self.config.input_margin)) + max_tokens
        input_bound = tokens - max_tokens
        alternatives = [Alternative(model=m, usd=usd_bound(self.config.prices, m, input_bound, max_tokens))
                        for m in self.config.cheaper_models if m != plan.model]
        return self._emit(envelope, OUTCOME, StepEstimated(
            **common, tokens=tokens, usd=usd_bound(self.config.prices, plan.model, input_bound, max_tokens),
            plan=plan, alternatives=alternatives, estimate_unavailable=unavailable))

    async def _plan(self, request: StepRequested, flags: Flags) -> tuple[Plan, str | None]:
        client = self.client
        assert client is not None
        spec = request.spec
        instruction = str(spec.get("instruction", ""))
        system = SYSTEM_PROMPTS[request.intent] + (f"\n\n{request.context}" if request.context else "")
        raw = render(request.data, instruction)
        max_tokens = int(spec.get("max_tokens", self.config.max_output_tokens.get(request.intent, 512)))
        default = self.config.default_model
        plan = Plan(model=default, counterfactual_model=default, system=system, prompt=raw, max_tokens=max_tokens)

        async def count(model: str, prompt: str, system_text: str = system) -> int:
            async with self._calls:
                return await client.count_tokens(model=model, system=system_text,
                                                 messages=[{"role": "user", "content": prompt}])

        try:
            raw_default = await count(default, raw)
            model = route(self.config.routes, request.intent, raw_default, default) if flags.routing else default
            raw_routed = raw_default if model == default else await count(model, raw)
            prompt, applied = compress(request.data, instruction) if flags.compression else (raw, [])
            tokens = raw_routed if prompt == raw else await count(model, prompt)
            if flags.compression and request.token_budget is not None:
                prompt, tokens, applied = await self._truncate(prompt, tokens, applied, max_tokens,
                                                               request.token_budget, lambda p: count(model, p))
            minimum = self.config.cache_min_tokens.get(model, 1024)
            # A prefix has at least as many characters as tokens: a shorter one needs no count to be ruled out.
            cache = flags.caching and len(system) >= minimum and await count(model, ".", system) >= minimum
        except LlmError as exc:
            return plan, f"token count failed: {exc}"[:300]
        return Plan(model=model, counterfactual_model=default, system=system, prompt=prompt, max_tokens=max_tokens,
                    cache_prefix=cache, raw_tokens_counterfactual=raw_default, raw_tokens_routed=raw_routed,
                    compressed_tokens=tokens, compression=applied), None

    async def _truncate(self, prompt: str, tokens: int, applied: list[str], max_tokens: int, budget: int,
                        count: Callable[[str], Awaitable[int]]) -> tuple[str, int, list[str]]:
        """Cut the prompt's tail until its counted tokens, margin and output fit the step's token budget."""
        allowed = math.floor((budget - max_tokens) / (1 + self.config.input_margin))
        for _ in range(4):
            if tokens <= allowed or allowed <= 0:
                break
            keep = max(1, math.floor(len(prompt) * allowed / tokens * 0.95))
            prompt, tokens = prompt[:keep] + " …[truncated]", 0
            tokens = await count(prompt)
            applied = [*applied, "truncated"] if "truncated" not in applied else applied
        return prompt, tokens, applied

    # -- execute

    async def execute(self, envelope: Envelope, approved: StepApproved) -> list[Envelope]:
        """Run the approved step within the step timeout; its outcome, settlement and costs as events."""
        try:
            return await asyncio.wait_for(self._execute(envelope, approved), self.config.step_timeout_s)
        except TimeoutError:
            failed = StepFailed(execution_id=approved.execution_id, step_id=approved.step_id, intent=approved.intent,
                                error=f"timed out after {self.config.step_timeout_s:g} s", timed_out=True)
            return [self._emit(envelope, OUTCOME, failed), self._settle(envelope, approved, "timed_out")]

    async def _execute(self, envelope: Envelope, approved: StepApproved) -> list[Envelope]:
        started = time.perf_counter()
        events: list[Envelope] = []
        try:
            if approved.intent in MODEL_INTENTS:
                return await self._model_step(envelope, approved, started)
            if approved.intent == "send":
                message, target = _send_payload(approved, None)
                events.append(self._emit(envelope, SENT, message))
                output: Any = {"queued": target, "event_id": str(events[-1].event_id)}
            else:
                output = DETERMINISTIC[approved.intent](approved.data, approved.spec)
        except Exception as exc:  # noqa: BLE001 - a failing handler is a failed step, recorded with its stack
            return [*events, *self._failed(envelope, approved, exc)]
        executed = StepExecuted(execution_id=approved.execution_id, step_id=approved.step_id, intent=approved.intent,
                                output=output, latency_ms=round((time.perf_counter() - started) * 1000, 3))
        return [self._emit(envelope, OUTCOME, executed), self._settle(envelope, approved, "executed"), *events]

    async def _model_step(self, envelope: Envelope, approved: StepApproved, started: float) -> list[Envelope]:
        plan = approved.plan
        events: list[Envelope] = []
        completion: Completion | None = None
        reason = "no model client (ANTHROPIC_API_KEY unset)" if self.client is None else "no plan"
        if self.client is not None and plan is not None:
            try:
                async with self._calls:
                    completion = await self.client.complete(
                        model=plan.model, system=plan.system, messages=[{"role": "user", "content": plan.prompt}],
                        max_tokens=plan.max_tokens, cache_prefix=plan.cache_prefix)
            except LlmError as exc:
                reason = f"model call failed: {exc}"[:500]
            events.append(cost_event(envelope, COST, completion, domain="steps", purpose=f"step:{approved.intent}",
                                     model=plan.model, agent_id=approved.agent_id, user_id=approved.user_id,
                                     error=None if completion else reason, occurred_at=self.clock()))
        if completion is None or plan is None:
            output = fallback_output(approved.intent, approved.data, approved.spec, self.config.summary_fallback_words)
            # The degradation goes first: the execution completes on the executed event and must know it by then.
            events.append(self._emit(envelope, DEGRADED, StepDegraded(
                execution_id=approved.execution_id, step_id=approved.step_id, fallback="deterministic",
                reason=reason)))
            executed = StepExecuted(execution_id=approved.execution_id, step_id=approved.step_id,
                                    intent=approved.intent, output=output, degraded=True, fallback="deterministic",
                                    degraded_reason=reason,
                                    latency_ms=round((time.perf_counter() - started) * 1000, 3))
            return [*events, self._emit(envelope, OUTCOME, executed), self._settle(envelope, approved, "executed")]
        usage = completion.usage
        compression, routing, caching, counterfactual_usd, actual_usd = savings(plan, usage, self.config.prices)
        executed = StepExecuted(
            execution_id=approved.execution_id, step_id=approved.step_id, intent=approved.intent,
            output=_parse(completion.text) if approved.intent in ("extract", "enrich") else completion.text,
            model=completion.model, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_input_tokens, cache_write_tokens=usage.cache_creation_input_tokens,
            counterfactual_tokens=plan.raw_tokens_counterfactual + usage.output_tokens,
            counterfactual_usd=counterfactual_usd, compression=compression, routing=routing, caching=caching,
            cost_usd=actual_usd, latency_ms=round(completion.latency_ms, 3))
        used = (usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
                + usage.output_tokens)
        settled = self._settle(envelope, approved, "executed", used_tokens=used, used_usd=actual_usd,
                               model=completion.model, tokens_saved=compression.tokens + routing.tokens,
                               usd_saved=round(counterfactual_usd - actual_usd, 9))
        return [self._emit(envelope, OUTCOME, executed), settled, *events]

    def _failed(self, envelope: Envelope, approved: StepApproved, exc: Exception) -> list[Envelope]:
        frames = traceback.extract_tb(exc.__traceback__)
        last = frames[-1] if frames else None
        failed = StepFailed(execution_id=approved.execution_id, step_id=approved.step_id, intent=approved.intent,
                            error=f"{type(exc).__name__}: {exc}"[:2000],
                            stack="".join(traceback.format_exception(exc))[-20_000:],
                            file=last.filename if last else None, line=last.lineno if last else None)
        return [self._emit(envelope, OUTCOME, failed), self._settle(envelope, approved, "failed")]

    def _settle(self, envelope: Envelope, approved: StepApproved, outcome: Any, **used: Any) -> Envelope:
        return self._emit(envelope, SETTLED, ReservationSettled(
            execution_id=approved.execution_id, step_id=approved.step_id, day=approved.day, outcome=outcome,
            user_id=approved.user_id, agent_id=approved.agent_id, **used))

    def _emit(self, cause: Envelope, index: int, payload: Any) -> Envelope:
        return emitted(cause, index, payload, actor=ACTOR, occurred_at=self.clock())


def _parse(text: str) -> Any:
    """A model's JSON answer (fenced or not), else its text."""
    stripped = text.strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        return msgspec.json.decode(stripped)
    except msgspec.DecodeError:
        return text
