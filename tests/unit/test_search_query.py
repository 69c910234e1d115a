"""Context search's query language (web search syntax) and its table of word forms, without PostgreSQL."""

from __future__ import annotations

from projections.workflow.search import LEMMAS, Parsed, Unit, forms, parse


def test_words_are_anded_or_binds_tighter_phrases_stay_whole_and_minus_negates() -> None:
    assert parse("zebra migration") == Parsed(((Unit(("zebra",)),), (Unit(("migration",)),)))
    assert parse("a b OR c") == Parsed(((Unit(("a",)),), (Unit(("b",)), Unit(("c",)))))
    assert parse('"phase overridden" -draft') == Parsed(((Unit(("phase", "overridden")),),
                                                         (Unit(("draft",), negated=True),)))
    assert parse("Error-Rate") == Parsed(((Unit(("error",)),), (Unit(("rate",)),)))
    assert parse("or zebra or") == Parsed(((Unit(("zebra",)),),))
    assert parse('  "" - , ') == Parsed(())
    assert parse("validación falló").positive == (Unit(("validación",)), Unit(("falló",)))


def test_a_word_stands_for_every_form_of_its_lemma() -> None:
    for word, other in (("override", "overridden"), ("Overrides", "overrode"), ("failure", "fail"),
                        ("failed", "failures"), ("despliegue", "desplegar"), ("falló", "fallo")):
        assert other in forms(word), (word, other)
    assert forms("zebra") == ("zebra",)


def test_no_form_belongs_to_two_lemmas() -> None:
    seen: dict[str, tuple[str, ...]] = {}
    for group in LEMMAS:
        for form in group:
            assert form == form.lower() and seen.setdefault(form, group) is group, form
