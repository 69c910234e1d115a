"""Keyword routing rules in Spanish and English."""

from __future__ import annotations

import pytest

from agents.conversations.routing import route_by_rules, tokens


def test_tokens_are_lowercase_and_accent_free():
    assert tokens("¿Cuánto CUESTA la Devolución?") == ("cuanto", "cuesta", "la", "devolucion")


@pytest.mark.parametrize(
    ("text", "lane"),
    [
        ("¿Cuánto cuesta el café en grano?", "commerce"),
        ("Quiero comprar una cafetera", "commerce"),
        ("¿Está disponible el té matcha?", "commerce"),
        ("¿Hay stock de auriculares?", "commerce"),
        ("How much is the TV?", "commerce"),
        ("I want to buy headphones, are they in stock?", "commerce"),
        ("Mi pedido llegó roto", "support"),
        ("La cafetera no funciona", "support"),
        ("No me funciona la cafetera", "support"),
        ("Quiero una devolución y el reembolso", "support"),
        ("My order arrived broken, I want a refund", "support"),
        ("The app is not working", "support"),
        ("¿Cuál es el horario?", "info"),
        ("¿Dónde están? Necesito la dirección", "info"),
        ("What are your opening hours?", "info"),
        ("Do you offer shipping?", "info"),
    ],
)
def test_lanes_in_spanish_and_english(text, lane):
    assert route_by_rules(text).lane == lane


def test_unmatched_text_defaults_to_info_with_no_matches():
    assert route_by_rules("hola, buenos días") == ("info", ())
    assert route_by_rules("") == ("info", ())


def test_matched_lists_the_phrases_of_the_winning_lane():
    decision = route_by_rules("Tengo un problema: el pedido llegó roto y quiero un reembolso")
    assert decision.lane == "support"
    assert decision.matched == ("problema", "roto", "reembolso")


def test_phrases_win_over_their_words_and_are_counted_once():
    # "cuanto cuesta" is one commerce phrase, not "cuesta" twice.
    assert route_by_rules("¿Cuánto cuesta?").matched == ("cuanto cuesta",)
    assert route_by_rules("it does not work").matched == ("does not work",)


def test_ties_go_to_support_then_commerce():
    assert route_by_rules("precio de la devolución").lane == "support"  # commerce 1, support 1
    assert route_by_rules("precio del envío").lane == "commerce"  # commerce 1, info 1


def test_more_matches_beat_priority():
    assert route_by_rules("horario y dirección, y el precio").lane == "info"  # info 2, commerce 1
