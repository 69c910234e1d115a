"""The import direction between Baton's layers (README, "Layers"): never upward, no package cycles, domains apart."""

from __future__ import annotations

import itertools
from pathlib import Path

import grimp
import pytest

from streams.registry import load_domains
from streams.settings import Settings

# Top to bottom: a module may import its own layer and the layers below it, never one above.
FOUNDATION = ("streams.settings", "streams.app", "streams.topics", "streams.publisher", "streams.metrics",
              "streams.deadletter", "streams.auth", "streams.edge", "streams.ratelimit", "streams.liveness",
              "streams.registry", "streams.errors", "streams.policies", "streams.tansu", "streams.process")
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("tests and bench", ("tests", "bench")),
    ("streams: processes, edges, domain declarations, commands, CLI", ("streams",)),
    ("projections: the read side", ("projections",)),
    ("agents: folds, effects, fold agents", ("agents",)),
    ("streams foundation: settings, app, topics, publisher, metrics, auth, the registry", FOUNDATION),
    ("schemas", ("schemas",)),
)
DOMAINS = tuple(d.name for d in load_domains(Settings()))


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("schemas", "agents", "projections", "streams", "bench", "tests",
                             include_external_packages=False, exclude_type_checking_imports=True)


def layer(module: str) -> int:
    matches = [(len(prefix), rank) for rank, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1]


def imports(graph: grimp.ImportGraph) -> list[tuple[str, str]]:
    return [(importer, imported) for importer in graph.modules
            for imported in graph.find_modules_directly_imported_by(importer)]


def test_no_module_imports_a_layer_above_its_own(graph: grimp.ImportGraph) -> None:
    upward = sorted(f"{a} ({LAYERS[layer(a)][0]}) imports {b} ({LAYERS[layer(b)][0]})"
                    for a, b in imports(graph) if layer(b) < layer(a))
    assert upward == []


def test_tests_and_bench_do_not_import_each_other_and_test_modules_import_no_test_module(graph) -> None:
    crossing = [(a, b) for a, b in imports(graph) if {a.split(".")[0], b.split(".")[0]} == {"tests", "bench"}]
    test_modules = [(a, b) for a, b in imports(graph) if b.rsplit(".", 1)[-1].startswith("test_")]
    assert crossing == [] and test_modules == []


def test_a_domain_imports_no_other_domain_outside_its_events(graph: grimp.ImportGraph) -> None:
    packages = [f"{top}.{d}" for top in ("agents", "projections", "streams.domains") for d in DOMAINS]
    crossing = []
    for ours, theirs in itertools.permutations(DOMAINS, 2):
        for top in ("agents", "projections", "streams.domains"):
            for other in ("agents", "projections", "streams.domains"):
                if graph.direct_import_exists(importer=f"{top}.{ours}", imported=f"{other}.{theirs}", as_packages=True):
                    crossing.append(f"{top}.{ours} -> {other}.{theirs}")
    assert packages and crossing == []


def test_no_package_imports_form_a_cycle(graph: grimp.ImportGraph) -> None:
    # The top-level packages are ordered by the layers above (streams holds both the top and the foundation).
    packages = sorted(m for m in graph.modules if graph.find_children(m) and "." in m)
    cycles = [f"{a} <-> {b}" for a, b in itertools.combinations(packages, 2)
              if not a.startswith(b + ".") and not b.startswith(a + ".")
              and graph.direct_import_exists(importer=a, imported=b, as_packages=True)
              and graph.direct_import_exists(importer=b, imported=a, as_packages=True)]
    assert cycles == []


def test_every_reader_of_the_log_outside_the_faust_app_is_built_by_log_consumer() -> None:
    """streams.topics.log_consumer is where a reader gets what every reader needs (on the embedded profile, fetches
    that wait for a gap in offsets); a consumer built anywhere else in Baton would miss it."""
    root = Path(__file__).resolve().parents[2]
    builders = sorted(str(path.relative_to(root)) for top in ("schemas", "agents", "projections", "streams")
                      for path in (root / top).rglob("*.py") if "AIOKafkaConsumer(" in path.read_text())
    assert builders == ["streams/topics.py"]
