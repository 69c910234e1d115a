"""The steps domain's worker-side configuration: its settings (BATON_STEPS_*), the fold as configured and the
step runner (agents.steps.effects) as the worker builds it."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.batching import Folder
from agents.llm import llm_client
from agents.steps.effects import StepRunner
from agents.steps.fold import FoldConfig, fold
from agents.zones import zone
from schemas.steps import Flags, Limit
from streams.registry import DomainPolicy
from streams.settings import DEFAULT_LLM_PRICES, ModelPrice, Settings, loaded


class Route(BaseModel):
    """One routing rule: steps of `intent` ("*" any) whose input has at most `max_input_tokens` use `model`."""

    intent: str = "*"
    max_input_tokens: int | None = Field(None, ge=0)
    model: str


class LimitSetting(BaseModel):
    """A default limit (tokens and/or USD; None unlimited)."""

    model_config = ConfigDict(extra="forbid")

    tokens: int | None = Field(None, ge=0)
    usd: float | None = Field(None, ge=0)


DEFAULT_ROUTES = [
    Route(intent="extract", max_input_tokens=8000, model="claude-haiku-4-5"),
    Route(intent="enrich", max_input_tokens=8000, model="claude-haiku-4-5"),
    Route(intent="summarize", max_input_tokens=16000, model="claude-haiku-4-5"),
    Route(intent="generate", max_input_tokens=2000, model="claude-haiku-4-5"),
]


class StepsPolicy(BaseModel):
    """The steps section of a policy (schemas.policies): default limits and flags, the budget day's zone and the
    reservation TTL. Its defaults are the built-in policy."""

    model_config = ConfigDict(extra="forbid")

    # Default limits by "scope:subject" ("user:*" every user's daily default, "execution:*" each execution's).
    limits: dict[str, LimitSetting] = Field(default_factory=dict)
    flags: dict[str, bool] = Field(default_factory=dict)
    default_timezone: str = "UTC"
    reservation_ttl_s: float = Field(600.0, gt=0)
    retention_days: int = Field(3, ge=1)

    @field_validator("flags")
    @classmethod
    def _known_flags(cls, flags: dict[str, bool]) -> dict[str, bool]:
        if unknown := sorted(flags.keys() - set(Flags.__struct_fields__)):
            raise ValueError(f"unknown flags {unknown}; known: {sorted(Flags.__struct_fields__)}")
        return flags

    @field_validator("default_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone(value)
        return value

    def fold_config(self) -> FoldConfig:
        return FoldConfig(
            default_limits={key: Limit(tokens=v.tokens, usd=v.usd) for key, v in self.limits.items()},
            default_flags=Flags(**self.flags),
            default_timezone=self.default_timezone,
            reservation_ttl=timedelta(seconds=self.reservation_ttl_s),
            retention_days=self.retention_days,
        )


class StepsSettings(StepsPolicy, BaseSettings):
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
    summary_fallback_words: int = Field(60, ge=1)
    # How long POST /v1/executions?wait=true waits for the projected result.
    wait_timeout_s: float = Field(60.0, gt=0)


def steps_folder(_settings: Settings) -> Folder:
    """The steps fold under the built-in policy (the spine decides each event under its stamped one)."""
    return Folder(fold=fold, config=StepsPolicy().fold_config())


POLICY = DomainPolicy.of(StepsPolicy, StepsSettings)


def build_runner(settings: Settings) -> StepRunner:
    """The step runner with the shared LLM client when ANTHROPIC_API_KEY is set."""
    return StepRunner(loaded(StepsSettings), llm_client(settings))
