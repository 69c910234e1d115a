"""Keyword routing rules (Spanish and English): the lane of a message without an LLM."""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

from schemas.conversations import Lane

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
