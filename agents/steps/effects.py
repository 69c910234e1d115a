"""The steps domain's effect worker: the step runner.

The runner answers two requests. A `steps.step.requested` is estimated: for a model step the prompt is built,
routed (intent + input tokens → model), compressed and counted with the model's token-counting endpoint, and an
upper bound of its tokens and USD goes to the tenant's budget stream. A `steps.step.approved` is executed by the
intent's handler (agents.steps.intents); its outcome, the reservation's settlement and the cost-ledger record come
back as events.
"""

from __future__ import annotations

import asyncio
import math
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from agents.llm import Completion, LlmClient, LlmError, cost_event
from agents.steps.intents import (
    DETERMINISTIC,
    SYSTEM_PROMPTS,
    compress,
    fallback_output,
    render,
    route,
    savings,
    send_payload,
    usd_bound,
)
from schemas import Envelope, emitted
from schemas.steps import (
    MODEL_INTENTS,
    Alternative,
    Flags,
    Plan,
    ReservationSettled,
    StepApproved,
    StepDegraded,
    StepEstimated,
    StepExecuted,
    StepFailed,
    StepRequested,
)

if TYPE_CHECKING:
    from agents.steps.config import StepsSettings

ACTOR = "effect:steps"
REQUESTED = "steps.step.requested"
APPROVED = "steps.step.approved"
# Emission indexes are fixed per kind, so a re-run derives the same event ids.
OUTCOME, SETTLED, DEGRADED, COST, FALLBACK_COST, SENT = range(6)


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
                message, target = send_payload(approved)
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
