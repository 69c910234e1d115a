"""The learning domain's effect worker: fetches every agent's signal (cache, ETag, retries) and composes the day's
plan (with the model when one is configured, else the template of agents.learning.plans)."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import structlog

from agents.learning.config import LearningSettings
from agents.learning.plans import PLAN_SYSTEM_PROMPT, _model_plan, template_plan
from schemas import Envelope, emitted
from schemas.learning import (
    COST_INDEX,
    PLANNED_INDEX,
    AgentSignal,
    CachedSignal,
    DayPlanned,
    PlanSummary,
    SignalQuality,
    SignalsRequested,
)
from streams.settings import Settings, loaded

log = structlog.get_logger(__name__)

ACTOR = "effect:learning"


class _AgentAnswer(msgspec.Struct, kw_only=True):
    ok: bool
    data: Any = None
    error: str | None = None
    code: str | None = None


_answer_decoder = msgspec.json.Decoder(_AgentAnswer)


class Attempt(msgspec.Struct, kw_only=True):
    """The outcome of one HTTP call to an agent, and how long to wait before retrying it (None: final)."""

    status: str
    http_status: int | None = None
    data: Any = None
    etag: str | None = None
    error: str | None = None
    code: str | None = None
    retry_in: float | None = None  # a wait the agent asked for (Retry-After)
    backoff: bool = False  # retry after the exponential backoff


class SignalsEffect:
    """Fetches every agent's signal in parallel (cache, ETag, retries), composes the plan, returns it all as events."""

    effect_types = frozenset({"learning.signals.requested"})
    not_repeatable: frozenset[str] = frozenset()  # agent calls carry idempotency keys; a re-run is harmless

    def __init__(self, settings: Settings, options: LearningSettings | None = None, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        from agents.llm import llm_client

        self.settings = settings
        self.options = options or loaded(LearningSettings)
        self.clock = clock
        self.llm = llm_client(settings)
        self._http: httpx.AsyncClient | None = None

    async def run(self, envelope: Envelope) -> list[Envelope]:
        """The plan with every agent's signal, and (when a model composed it) the call's cost."""
        request = envelope.payload
        if not isinstance(request, SignalsRequested):
            return []
        cached = {c.agent: c for c in request.cached}
        deadline = time.monotonic() + self.options.signals_deadline_s
        agents = list(self.options.agent_urls.items())
        fetched = await asyncio.gather(*(
            self._signal(envelope, request, name, url, cached.get(name), deadline) for name, url in agents))
        now = self.clock()
        plan, cost = await self._plan(envelope, request, fetched, cached, now)
        return [emitted(envelope, PLANNED_INDEX, plan, actor=ACTOR, occurred_at=now), *([cost] if cost else [])]

    def unknown_outcome(self, envelope: Envelope) -> list[Envelope]:
        return []

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        if self._http is not None:
            await self._http.aclose()

    async def _signal(self, envelope: Envelope, request: SignalsRequested, agent: str, url: str | None,
                      cached: CachedSignal | None, deadline: float) -> AgentSignal:
        if url is None:
            return AgentSignal(agent=agent, status="unconfigured", available=cached is not None, fresh=False,
                               from_cache=cached is not None, etag=cached.etag if cached else None,
                               error="no endpoint configured", code="unconfigured")
        # A forced refresh revalidates every agent: a fresh cached signal is not served without asking.
        if (cached is not None and not request.force_refresh
                and envelope.occurred_at - cached.validated_at < self.options.freshness(agent)):
            return AgentSignal(agent=agent, status="cached", available=True, fresh=True, from_cache=True,
                               etag=cached.etag, validated_at=cached.validated_at)
        started = time.monotonic()
        headers = {"Authorization": f"Bearer {self._agent_token(envelope.tenant_id, request.learner)}",
                   "X-Idempotency-Key": f"{request.session_id}:{agent}"}
        if cached is not None and cached.etag:
            headers["If-None-Match"] = cached.etag
        body = {"user_id": request.learner, "session_id": str(request.session_id), "week": request.week,
                "day": request.day, "intent": msgspec.to_builtins(request.intent)}
        attempts = 0
        while True:
            attempts += 1
            attempt = await self._call(url, headers, body, deadline, cached)
            wait = self.options.backoff_s * 2 ** (attempts - 1) if attempt.backoff else attempt.retry_in
            if wait is None or attempts >= self.options.agent_attempts or time.monotonic() + wait >= deadline:
                break
            await asyncio.sleep(wait)
        latency_ms = (time.monotonic() - started) * 1000
        result = {"agent": agent, "attempts": attempts, "http_status": attempt.http_status, "latency_ms": latency_ms}
        if attempt.status == "fetched":
            return AgentSignal(**result, status="fetched", available=True, fresh=True, from_cache=False,
                               etag=attempt.etag, data=attempt.data, validated_at=self.clock())
        if attempt.status == "not_modified" and cached is not None:
            return AgentSignal(**result, status="not_modified", available=True, fresh=True, from_cache=True,
                               etag=attempt.etag or cached.etag, validated_at=self.clock())
        return AgentSignal(**result, status="failed", available=cached is not None, fresh=False,
                           from_cache=cached is not None, etag=cached.etag if cached else None,
                           error=attempt.error, code=attempt.code or "failed")

    async def _call(self, url: str, headers: dict[str, str], body: dict[str, Any], deadline: float,
                    cached: CachedSignal | None) -> Attempt:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Attempt(status="failed", error="signals deadline passed", code="deadline")
        try:
            response = await self._client().post(url, json=body, headers=headers,
                                                 timeout=min(self.options.agent_timeout_s, remaining))
        except httpx.TimeoutException:
            return Attempt(status="failed", error="agent call timed out", code="timeout")
        except httpx.TransportError as exc:
            return Attempt(status="failed", error=f"{type(exc).__name__}: {exc}"[:300], code="unreachable",
                           backoff=True)
        status = response.status_code
        if status == 304:
            if cached is None:
                return Attempt(status="failed", http_status=status, error="304 without a cached signal",
                               code="protocol")
            return Attempt(status="not_modified", http_status=status, etag=response.headers.get("etag"))
        if status == 429:
            after = _retry_after(response.headers.get("retry-after"), self.options.backoff_s)
            return Attempt(status="failed", http_status=status, error="rate limited by agent", code="rate_limited",
                           retry_in=after if after <= self.options.max_retry_after_s else None)
        if status >= 500:
            return Attempt(status="failed", http_status=status, error=f"agent answered {status}", code="unavailable",
                           backoff=True)
        if len(response.content) > self.options.max_signal_bytes:
            return Attempt(status="failed", http_status=status, code="too_large",
                           error=f"signal of {len(response.content)} bytes exceeds {self.options.max_signal_bytes}")
        try:
            answer = _answer_decoder.decode(response.content)
        except msgspec.DecodeError as exc:
            return Attempt(status="failed", http_status=status, error=f"not an agent answer: {exc}"[:300],
                           code="protocol")
        if status != 200 or not answer.ok:
            return Attempt(status="failed", http_status=status, error=(answer.error or f"agent answered {status}")[:300],
                           code=answer.code or "agent_error")
        return Attempt(status="fetched", http_status=status, data=answer.data, etag=response.headers.get("etag"))

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient()
        return self._http

    def _agent_token(self, tenant_id: str, learner: str) -> str:
        """What an agent is handed: reads (GET) the learning routes of this one learner, nothing else (streams.auth)."""
        from streams.auth import issue_token

        return issue_token(self.settings, tenant_id, self.options.service_token_ttl_s, subject=learner, agent=True)

    async def _plan(self, envelope: Envelope, request: SignalsRequested, fetched: list[AgentSignal],
                    cached: dict[str, CachedSignal], now: datetime) -> tuple[DayPlanned, Envelope | None]:
        data = {s.agent: (s.data if s.status == "fetched" else cached[s.agent].data)
                for s in fetched if s.available}
        quality = {s.agent: SignalQuality(available=s.available, fresh=s.fresh) for s in fetched}
        degraded = any(s.status in ("failed", "unconfigured") for s in fetched)
        hits = sum(1 for s in fetched if s.from_cache and s.available)
        common = {"learner": request.learner, "request_event_id": request.request_event_id,
                  "session_id": request.session_id, "intent_id": request.intent.intent_id, "week": request.week,
                  "day": request.day, "topic": request.intent.topic,
                  "time_per_day_min": request.intent.time_per_day_min, "degraded_mode": degraded,
                  "cache_hits": hits, "cache_misses": len(fetched) - hits, "signal_quality": quality,
                  "signals": fetched}
        cost = None
        if self.llm is not None:
            composed, cost = await self._compose_with_model(envelope, request, data, now)
            if composed is not None:
                plan_md, summary, model = composed
                return DayPlanned(**common, plan_md=plan_md, plan_json_summary=summary, composer="llm",
                                  model=model), cost
        plan_md, summary = template_plan(request.intent, request.week, request.day, data, quality, degraded)
        return DayPlanned(**common, plan_md=plan_md, plan_json_summary=summary, composer="template"), cost

    async def _compose_with_model(self, envelope: Envelope, request: SignalsRequested, data: dict[str, Any],
                                  now: datetime) -> tuple[tuple[str, PlanSummary, str] | None, Envelope]:
        from agents.llm import LlmError, cost_event

        assert self.llm is not None
        prompt = msgspec.json.encode({"intent": request.intent, "week": request.week, "day": request.day,
                                      "signals": data}).decode()
        completion, error = None, None
        try:
            completion = await self.llm.complete(model=self.options.plan_model, system=PLAN_SYSTEM_PROMPT,
                                                 messages=[{"role": "user", "content": prompt}],
                                                 max_tokens=self.options.plan_max_tokens, cache_prefix=True)
            composed = _model_plan(completion.text)
        except LlmError as exc:
            error, composed = str(exc)[:300], None
        if completion is not None and composed is None:
            error = "the model's answer is not a plan"
        if error:
            log.warning("learning.plan_model_failed", reason=error)
        cost = cost_event(envelope, COST_INDEX, completion, domain="learning", purpose="plan",
                          model=self.options.plan_model, user_id=request.learner, error=error, occurred_at=now)
        if composed is None or completion is None:
            return None, cost
        return (composed[0], composed[1], completion.model), cost


def _retry_after(value: str | None, default: float) -> float:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date)."""
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
