"""Answer composition per lane (Spanish), from the tenant's FAQ and catalog; pure functions."""

from __future__ import annotations

import uuid
from functools import lru_cache
from typing import TypeVar

from agents.conversations.routing import find_phrases, tokens
from agents.tenants import CatalogItem, Tenant

T = TypeVar("T")


def answer_info(text: str, tenant: Tenant) -> str:
    """The best-matching FAQ answer, else matching products, else the FAQ topics."""
    answer = _faq_answer(text, tenant) or _items_answer(text, tenant)
    if answer:
        return answer
    if not tenant.faq:
        return "Lo siento, ahora mismo no tengo esa información. Un agente te responderá pronto."
    topics = "; ".join(entry.question for entry in tenant.faq)
    return f"Lo siento, no tengo una respuesta para eso. Puedo informarte sobre: {topics}"


def answer_commerce(text: str, tenant: Tenant) -> str:
    """Price and availability of the products named, else a matching FAQ answer, else the product list."""
    answer = _items_answer(text, tenant) or _faq_answer(text, tenant)
    if answer:
        return answer
    if not tenant.catalog:
        return "Lo siento, ahora mismo no tenemos productos disponibles en el catálogo."
    listing = ", ".join(f"{item.name} ({_price(item)})" for item in tenant.catalog)
    return f"No he encontrado ese producto. Tenemos: {listing}."


def ticket_id_for(message_event_id: uuid.UUID) -> str:
    """The support ticket id of an inbound message; the same message always gets the same id."""
    return "T-" + uuid.uuid5(message_event_id, "ticket").hex[:8].upper()


def answer_support(ticket_id: str) -> str:
    """The reply that acknowledges a support ticket."""
    return f"Hemos abierto el ticket {ticket_id}. Un agente te contactará pronto."


def _ranked(text: str, candidates: list[tuple[T, list[str]]]) -> list[T]:
    """Candidates matching at least one keyword, most matches first (ties keep the given order)."""
    words = tokens(text)
    scored = []
    for position, (candidate, keywords) in enumerate(candidates):
        score = len(set(find_phrases(words, _phrases(tuple(keywords)))))
        if score:
            scored.append((-score, position, candidate))
    return [candidate for *_, candidate in sorted(scored, key=lambda row: row[:2])]


@lru_cache(maxsize=4096)
def _phrases(keywords: tuple[str, ...]) -> dict[tuple[str, ...], str]:
    """A FAQ entry's or product's keywords as find_phrases looks them up (tokenized once per keyword list)."""
    return {tokens(k): k for k in keywords}


def _faq_answer(text: str, tenant: Tenant) -> str | None:
    entries = _ranked(text, [(entry, entry.keywords) for entry in tenant.faq])
    return entries[0].answer if entries else None


def _items_answer(text: str, tenant: Tenant) -> str | None:
    items = _ranked(text, [(item, item.keywords) for item in tenant.catalog])
    return " ".join(_describe(item) for item in items) or None


def _describe(item: CatalogItem) -> str:
    availability = f"disponible ({item.stock} en stock)" if item.stock > 0 else "agotado"
    return f"{item.name}: {_price(item)}, {availability}."


def _price(item: CatalogItem) -> str:
    amount = f"{item.price:,.2f}".replace(",", " ").replace(".", ",").replace(" ", ".")
    return f"{amount} {item.currency}"
