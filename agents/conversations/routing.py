"""Routing a message to a lane: keyword rules (Spanish and English), and the model that goes first when configured.

The model is asked through the shared `LlmClient` (agents/llm.py), so its cost comes from the one price table;
any failure of it is a `RoutingError`, on which the effect falls back to the rules.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

from agents.errors import AgentError
from agents.llm import Completion, LlmClient, LlmError
from schemas.conversations import LANES, Lane

_WORD = re.compile(r"[a-z0-9]+")

_KEYWORDS: dict[Lane, tuple[str, ...]] = {
    "support": (
        "problema", "problemas", "error", "errores", "no funciona", "no me funciona", "no enciende", "roto",
        "rota", "rotos", "averiado", "averia", "estropeado", "defectuoso", "queja", "reclamacion", "reclamar",
        "ayuda con", "necesito ayuda", "devolucion", "devolver", "reembolso", "garantia", "incidencia",
        "no me ha llegado", "no ha llegado", "help", "broken", "not working", "doesn't work",
        "does not work", "issue", "problem", "refund", "complaint", "ticket", "damaged", "defective",
    ),
    "commerce": (
        "precio", "precios", "cuanto cuesta", "cuanto cuestan", "cuanto vale", "cuanto valen", "cuesta",
        "cuestan", "comprar", "compro", "pedido", "pedir", "encargar", "stock", "disponible",
        "disponibles", "hay", "quedan", "catalogo", "producto", "productos", "oferta", "ofertas",
        "price", "prices", "cost", "costs", "how much", "buy", "purchase", "order", "available",
        "in stock", "catalog", "catalogue", "product", "products", "sell", "venden", "vendeis", "vendes",
    ),
    "info": (
        "horario", "horarios", "hora", "abren", "abierto", "abris", "cierran", "direccion", "donde",
        "ubicacion", "envio", "envios", "domicilio", "tarjeta", "pago", "pagar", "informacion",
        "hours", "open", "opening", "close", "address", "where", "location", "shipping", "delivery",
        "payment", "pay", "info", "information",
    ),
}

# Tie-break order: support beats commerce beats info.
_PRIORITY: tuple[Lane, ...] = ("support", "commerce", "info")


class RuleDecision(NamedTuple):
    """The lane the rules chose and the keyword phrases that chose it."""

    lane: Lane
    matched: tuple[str, ...]


def tokens(text: str) -> tuple[str, ...]:
    """Lowercase, accent-free word tokens of a text."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return tuple(_WORD.findall(plain))


def find_phrases(words: tuple[str, ...], phrases: dict[tuple[str, ...], str]) -> list[str]:
    """Phrases occurring in words, longest match first, each word used once, in text order."""
    longest = max(map(len, phrases), default=0)
    found, i = [], 0
    while i < len(words):
        for size in range(min(longest, len(words) - i), 0, -1):
            phrase = phrases.get(words[i:i + size])
            if phrase is not None:
                found.append(phrase)
                i += size
                break
        else:
            i += 1
    return found


_PHRASES: dict[tuple[str, ...], str] = {tokens(k): k for keys in _KEYWORDS.values() for k in keys}
_LANE_OF: dict[str, Lane] = {k: lane for lane, keys in _KEYWORDS.items() for k in keys}


def route_by_rules(text: str) -> RuleDecision:
    """The lane with most keyword matches; ties go support > commerce > info; default info."""
    matched = find_phrases(tokens(text), _PHRASES)
    if not matched:
        return RuleDecision("info", ())
    scores = {lane: sum(1 for m in matched if _LANE_OF[m] == lane) for lane in _PRIORITY}
    lane = max(_PRIORITY, key=lambda candidate: (scores[candidate], -_PRIORITY.index(candidate)))
    return RuleDecision(lane, tuple(m for m in matched if _LANE_OF[m] == lane))


ROUTING_SYSTEM = (
    "You route customer messages for a shop on WhatsApp (usually Spanish or English). "
    "Answer with exactly one lowercase word and nothing else: "
    "info (opening hours, address, shipping, payment, general questions), "
    "commerce (prices, stock, availability, buying or ordering products), or "
    "support (problems, complaints, broken or missing items, returns, refunds)."
)
ROUTING_MAX_TOKENS = 8
MAX_INPUT_CHARS = 2000

_FIRST_WORD = re.compile(r"[a-z]+")


class RoutingError(AgentError):
    """The model gave no usable lane (API error, timeout, or an unparseable answer).

    `completion` is the call's answer when there was one (an unparseable answer still cost its tokens).
    """

    def __init__(self, reason: str, completion: Completion | None = None) -> None:
        super().__init__(reason)
        self.completion = completion


class LaneChoice(NamedTuple):
    """A lane chosen by the model and the call that chose it (model, usage, cost, latency)."""

    lane: Lane
    completion: Completion


def parse_lane(answer: str) -> Lane | None:
    """The lane named by the first word of a model answer, leniently (case, spaces, punctuation), else None."""
    word = _FIRST_WORD.match(answer.strip().lower())
    return word.group() if word is not None and word.group() in LANES else None  # type: ignore[return-value]


class LaneModel:
    """Asks a model for the lane of a message: one short request, no retries (the rules are the fallback)."""

    def __init__(self, llm: LlmClient, model: str, timeout_s: float | None = None) -> None:
        self.llm, self.model, self.timeout_s = llm, model, timeout_s

    async def classify(self, text: str) -> LaneChoice:
        """The lane of one customer message; a `RoutingError` when the model gives none."""
        try:
            completion = await self.llm.complete(
                model=self.model, system=ROUTING_SYSTEM, max_tokens=ROUTING_MAX_TOKENS,
                messages=[{"role": "user", "content": text[:MAX_INPUT_CHARS]}], timeout_s=self.timeout_s,
            )
        except LlmError as exc:
            raise RoutingError(str(exc)) from exc
        lane = parse_lane(completion.text)
        if lane is None:
            raise RoutingError(f"unparseable routing answer {completion.text[:80]!r}", completion)
        return LaneChoice(lane, completion)
