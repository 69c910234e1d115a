"""BATON_DOMAINS: a deployment (or a benchmark) registers some of the built-in domains, policies always."""

from __future__ import annotations

import pytest

from streams.registry import DomainError, load_domains
from streams.settings import Settings


def test_the_named_domains_are_registered_with_policies_and_nothing_else():
    names = [domain.name for domain in load_domains(Settings(domains="conversations"))]
    assert names == ["conversations", "policies"]
    assert len(load_domains(Settings())) == 7  # none named: every built-in domain


def test_an_unknown_domain_is_refused_naming_it_and_the_known_ones():
    with pytest.raises(DomainError) as caught:
        load_domains(Settings(domains="conversations, orders"))
    assert str(caught.value) == ("BATON_DOMAINS names orders: the built-in domains are conversations, costs, "
                                 "learning, outbound, policies, steps, workflow")
