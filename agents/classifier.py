"""LLM lane classifier on the Anthropic Messages API; any failure is a ClassifierError."""

from __future__ import annotations

import re
from typing import NamedTuple, Protocol

import anthropic
import httpx2

from schemas.conversations import LANES, Lane

SYSTEM_PROMPT = (
    "You route customer messages for a shop on WhatsApp (usually Spanish or English). "
    "Answer with exactly one lowercase word and nothing else: "
    "info (opening hours, address, shipping, payment, general questions), "
    "commerce (prices, stock, availability, buying or ordering products), or "
    "support (problems, complaints, broken or missing items, returns, refunds)."
)
MAX_TOKENS = 8
MAX_INPUT_CHARS = 2000

_FIRST_WORD = re.compile(r"[a-z]+")


class ClassifierError(Exception):
    """The classifier gave no usable lane (API error, timeout, or an unparseable answer)."""


class Classification(NamedTuple):
    """A lane chosen by the model and what it cost."""

    lane: Lane
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float


class Classifier(Protocol):
    """Anything that picks a lane for a message text."""

    async def classify(self, text: str) -> Classification: ...


class AnthropicClassifier:
    """Asks a Claude model for the lane of a message; one request, no retries (rules are the fallback)."""

    def __init__(
        self,
        api_key: str,
        model: str,
        timeout_s: float,
        *,
        base_url: str | None = None,
        http_client: httpx2.AsyncClient | None = None,
        input_usd_per_mtok: float = 1.0,
        output_usd_per_mtok: float = 5.0,
        max_retries: int = 0,
    ) -> None:
        self.model = model
        self.timeout_s = timeout_s
        self.input_usd_per_mtok = input_usd_per_mtok
        self.output_usd_per_mtok = output_usd_per_mtok
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=max_retries,
            http_client=http_client,
        )

    async def classify(self, text: str) -> Classification:
        """The lane of one customer message."""
        try:
            message = await self._client.messages.create(
                model=self.model,
                max_tokens=MAX_TOKENS,
                system=SYSTEM_PROMPT,
                messages=[{"role": "user", "content": text[:MAX_INPUT_CHARS]}],
                timeout=self.timeout_s,
            )
        except anthropic.APIStatusError as exc:
            raise ClassifierError(f"anthropic {exc.status_code}: {exc.message}") from exc
        except anthropic.AnthropicError as exc:
            raise ClassifierError(f"anthropic: {type(exc).__name__}: {exc}") from exc
        answer = next((block.text for block in message.content if block.type == "text"), "")
        word = _FIRST_WORD.match(answer.strip().lower())
        if word is None or word.group() not in LANES:
            raise ClassifierError(f"unparseable classifier answer {answer[:80]!r}")
        usage = message.usage
        return Classification(
            lane=word.group(),  # type: ignore[arg-type]
            model=message.model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost_usd=self.cost_usd(usage.input_tokens, usage.output_tokens),
        )

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        """Price of one call at the configured per-million-token rates."""
        return (input_tokens * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok) / 1_000_000

    async def aclose(self) -> None:
        """Close the HTTP connections of the underlying client."""
        await self._client.close()
