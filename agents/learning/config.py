"""The learning domain's settings, its fold as configured, and the factory of its effect worker
(the worker itself: agents.learning.effects; plan composition: agents.learning.plans)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.batching import Folder
from agents.learning.fold import FoldConfig, fold
from streams.registry import DomainPolicy
from streams.settings import Settings

if TYPE_CHECKING:
    from agents.learning.effects import SignalsEffect


def _pairs(text: str) -> dict[str, str]:
    """`a=x,b=y` as a dict (a name without `=` maps to "")."""
    pairs = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name.strip():
            pairs[name.strip()] = value.strip()
    return pairs


class LearningPolicy(BaseModel):
    """The learning section of a policy (schemas.policies): how many sessions a learner's state keeps and how long
    an unplanned day request blocks a new run (plan_wait_s). Its defaults are the built-in policy."""

    model_config = ConfigDict(extra="forbid")

    sessions_kept: int = Field(60, ge=1)
    plan_wait_s: float = Field(45.0, gt=0)

    def fold_config(self) -> FoldConfig:
        return FoldConfig(sessions_kept=self.sessions_kept, pending_expiry=timedelta(seconds=self.plan_wait_s))


class LearningSettings(LearningPolicy, BaseSettings):
    """Settings of the learning domain (env prefix BATON_LEARNING_); docs/learning.md lists them."""

    model_config = SettingsConfigDict(env_prefix="BATON_LEARNING_", extra="ignore")

    agents: str = "clo=,alex=,ta=,socratic="  # name=url, comma-separated; an agent without a url is unavailable
    freshness_s: str = "clo=86400,alex=43200,ta=21600,socratic=3600"
    default_freshness_s: float = Field(3600.0, ge=0)
    agent_timeout_s: float = Field(15.0, gt=0)
    agent_attempts: int = Field(4, ge=1)
    backoff_s: float = Field(1.0, ge=0)  # 5xx retries wait backoff_s, 2x, 4x ...
    max_retry_after_s: float = Field(30.0, ge=0)
    signals_deadline_s: float = Field(25.0, gt=0)
    max_signal_bytes: int = Field(16_384, ge=64)
    service_token_ttl_s: int = Field(300, ge=30)
    plan_model: str = "claude-haiku-4-5"
    plan_max_tokens: int = Field(1200, ge=64)
    plan_poll_s: float = Field(0.02, gt=0)
    rate_per_s: float = Field(2.0, gt=0)
    burst: int = Field(20, ge=1)
    run_hour_local: int = Field(7, ge=0, le=23)
    days_per_week: int = Field(7, ge=1, le=7)
    sse_poll_s: float = Field(0.25, gt=0)
    sse_keepalive_s: float = Field(15.0, gt=0)

    @property
    def agent_urls(self) -> dict[str, str | None]:
        """Each configured agent's endpoint, in configuration order (None: not configured)."""
        return {name: url or None for name, url in _pairs(self.agents).items()}

    def freshness(self, agent: str) -> timedelta:
        """How long an agent's signal is used without asking the agent again."""
        return timedelta(seconds=float(_pairs(self.freshness_s).get(agent) or self.default_freshness_s))


def learning_folder(_settings: Settings) -> Folder:
    """The learner fold under the built-in policy (the spine decides each event under its stamped one)."""
    return Folder(fold=fold, config=LearningPolicy().fold_config())


POLICY = DomainPolicy.of(LearningPolicy, LearningSettings)


def build_effects(settings: Settings) -> SignalsEffect:
    """The signals-and-plan effect worker, configured from the environment."""
    from agents.learning.effects import SignalsEffect

    return SignalsEffect(settings)
