"""Answer composition from the example tenants' FAQ and catalog."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from agents.conversations.responders import (
    answer_commerce,
    answer_info,
    answer_support,
    ticket_id_for,
)
from agents.tenants import CatalogItem, Tenant, load_tenants

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tenants.toml"


@pytest.fixture(scope="module")
def acme() -> Tenant:
    return load_tenants(EXAMPLES).get("acme")


@pytest.fixture(scope="module")
def globex() -> Tenant:
    return load_tenants(EXAMPLES).get("globex")


def test_info_answers_from_the_best_faq_entry(acme):
    assert answer_info("¿A qué hora abren el domingo?", acme).startswith("Abrimos de lunes a sábado")
    assert answer_info("donde estan? necesito la direccion", acme).startswith("Estamos en la Calle Mayor 12")
    assert answer_info("¿Puedo pagar con TARJETA?", acme) == "Aceptamos tarjeta, Bizum y efectivo."


def test_info_without_a_match_lists_the_faq_topics(acme):
    answer = answer_info("hola", acme)
    assert answer.startswith("Lo siento")
    for question in ("¿Cuál es el horario?", "¿Dónde están?", "¿Hacen envíos?", "¿Aceptan tarjeta?"):
        assert question in answer


def test_info_naming_a_product_gives_its_price(acme):
    assert answer_info("¿tenéis matcha?", acme) == "Té verde matcha 100 g: 12,00 EUR, disponible (7 en stock)."


def test_commerce_gives_price_and_stock(acme):
    assert answer_commerce("¿Cuánto cuesta el café en grano?", acme) == (
        "Café en grano 1 kg: 18,90 EUR, disponible (42 en stock).")


def test_commerce_reports_sold_out_items(acme):
    assert answer_commerce("¿Hay cafetera moka?", acme) == "Cafetera italiana: 24,50 EUR, agotado."


def test_commerce_lists_every_named_product_best_match_first(acme, globex):
    assert answer_commerce("precio del café y del té matcha", acme) == (
        "Té verde matcha 100 g: 12,00 EUR, disponible (7 en stock). "
        "Café en grano 1 kg: 18,90 EUR, disponible (42 en stock).")
    assert answer_commerce("How much are the headphones?", globex) == (
        "Auriculares inalámbricos: 79,99 USD, disponible (25 en stock).")


def test_commerce_without_a_product_answers_a_matching_faq(acme):
    assert answer_commerce("¿Cuánto cuesta el envío?", acme).endswith("el envío cuesta 3,50 €.")


def test_commerce_without_any_match_lists_the_products(globex):
    assert answer_commerce("quiero comprar algo", globex) == (
        'No he encontrado ese producto. Tenemos: Televisor 55" (499,00 USD), Auriculares inalámbricos (79,99 USD).')


def test_prices_use_spanish_separators():
    sofa = CatalogItem(sku="X", name="Sofá", price=1234.5, currency="EUR", stock=1, keywords=["sofa"])
    tenant = Tenant(id="t", name="T", phone_number_id="1", catalog=(sofa,))
    assert answer_commerce("sofá", tenant) == "Sofá: 1.234,50 EUR, disponible (1 en stock)."


def test_tenant_without_faq_or_catalog_gets_polite_fallbacks():
    empty = Tenant(id="t", name="T", phone_number_id="1")
    assert "agente" in answer_info("horario", empty)
    assert "catálogo" in answer_commerce("precio", empty)


def test_ticket_ids_are_deterministic_per_message():
    message = uuid.UUID("3f2b1c4d-0000-4000-8000-000000000001")
    ticket = ticket_id_for(message)
    assert ticket == ticket_id_for(message)
    assert ticket != ticket_id_for(uuid.UUID("3f2b1c4d-0000-4000-8000-000000000002"))
    assert ticket.startswith("T-") and len(ticket) == 10 and ticket[2:] == ticket[2:].upper()
    int(ticket[2:], 16)  # noqa: FURB166 - asserts the suffix is hexadecimal


def test_support_answer_names_the_ticket():
    assert answer_support("T-1A2B3C4D") == "Hemos abierto el ticket T-1A2B3C4D. Un agente te contactará pronto."
