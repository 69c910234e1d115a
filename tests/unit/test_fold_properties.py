"""Properties every registered fold keeps under the spine: deterministic, never mutating the state it is given,
and unchanged by a redelivered record or a duplicate event (agents.batching owns de-duplication)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.batching import Folder, Record, fold_batch
from schemas import Envelope, encode, registration
from streams.registry import Domain, load_domains
from streams.settings import Settings
from tests.fixtures.domain_logs import INPUTS

DOMAINS = {domain.name: domain for domain in load_domains(Settings())}


def closed_loop(domain: Domain, folder: Folder) -> tuple[list[Envelope], dict[str, Any]]:
    """The domain's log as the worker writes it: its inputs, and every event a fold emits onto the domain."""
    queue, log, states = list(INPUTS[domain.name]()), [], {}
    while queue:
        envelope = queue.pop(0)
        log.append(envelope)
        before = states.get(envelope.stream_id)
        snapshot = None if before is None else domain.state_codec.encode(before)
        states[envelope.stream_id], emitted = folder.apply(before, envelope)
        assert before is None or domain.state_codec.encode(before) == snapshot, f"{envelope.type} mutated its input"
        queue.extend(e for e in emitted if registration(e.type).domain == domain.name)
    return log, states


def records(log: list[Envelope], topic: str = "t") -> list[Record]:
    return [Record(topic, 0, offset, e.stream_id.encode(), encode(e)) for offset, e in enumerate(log)]


def folded(domain: Domain, folder: Folder, batches: list[list[Record]]) -> tuple[dict[str, bytes], list[str]]:
    """Encoded final states and emitted event ids after folding the batches as the worker does."""
    table: dict[str, Any] = {}
    emitted: list[str] = []
    for batch in batches:
        result = fold_batch(batch, table.get, folder)
        assert result.dead == [], result.dead
        table.update(result.writes)
        emitted += [str(e.event_id) for e in result.emitted]
    return {key: domain.state_codec.encode(state) for key, state in table.items()}, emitted


def test_every_registered_domain_has_an_input_log() -> None:
    assert set(DOMAINS) == set(INPUTS)


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_folding_is_deterministic_and_never_mutates_its_input(name: str) -> None:
    domain = DOMAINS[name]
    log, states = closed_loop(domain, domain.folder(Settings()))
    again, states_again = closed_loop(domain, domain.folder(Settings()))
    assert [e.event_id for e in log] == [e.event_id for e in again] and any(states.values())
    assert {k: domain.state_codec.encode(v) for k, v in states.items() if v is not None} == \
        {k: domain.state_codec.encode(v) for k, v in states_again.items() if v is not None}


@pytest.mark.parametrize("name", sorted(INPUTS))
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_redelivered_records_and_duplicate_events_change_nothing(name: str, data: st.DataObject) -> None:
    domain = DOMAINS[name]
    folder = domain.folder(Settings())
    log, _ = closed_loop(domain, folder)
    clean = records(log)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(clean) - 1), max_size=4), label="batch ends"))
    batches = [clean[a:b] for a, b in zip([0, *cuts], [*cuts, len(clean)])]
    expected = folded(domain, folder, batches)

    # Redelivery: after any batch, any of the records already folded comes again (same offsets).
    redelivered = [list(batch) for batch in batches]
    for index in data.draw(st.lists(st.integers(1, len(batches) - 1), max_size=3), label="redelivered") \
            if len(batches) > 1 else []:
        done = [r for batch in batches[:index] for r in batch]
        again = data.draw(st.lists(st.sampled_from(done), min_size=1, max_size=5), label="records")
        redelivered[index] = sorted(again, key=lambda r: r.offset) + redelivered[index]
    assert folded(domain, folder, redelivered) == expected

    # Duplicates: an event written to the log again later (a new offset) emits nothing new.
    copies = data.draw(st.lists(st.sampled_from(log), max_size=4), label="duplicates")
    noisy = records(log + copies)
    states, emitted = folded(domain, folder, [noisy[: len(log)], noisy[len(log):]])
    assert emitted == expected[1]
    if folder.on_duplicate is None:
        assert states == expected[0]
