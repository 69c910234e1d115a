"""The domain registry: each domain is declared once, and the worker, projector, replay, ingest, API and CLI
iterate over it without naming any domain.

A declaration is a `Domain` named `DOMAIN` in a package of its own; every package in `streams/domains/` is a
built-in domain (adding one edits no generic file), and `BATON_EXTRA_DOMAINS` (comma-separated
`module:attribute`) adds more. The registry sits below every domain: it imports none of their layers.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from schemas import Envelope, EventCatalog
from streams.errors import StreamsError
from streams.settings import Settings, get_settings, loaded

if TYPE_CHECKING:  # the registry sits below every domain: it imports none of their layers at run time
    import faust
    import typer
    from fastapi import APIRouter

    from agents.batching import Folder, StateCodec
    from projections.readmodel import ReadModel
    from streams.policies import PolicyBook

BUILTIN_PACKAGE = "streams.domains"  # found at run time: the registry imports no domain


class DomainError(StreamsError, RuntimeError):
    """A domain declaration that cannot be loaded or clashes with another."""


class EffectWorker(Protocol):
    """Runs the side effects a domain's events ask for; results come back as events."""

    effect_types: frozenset[str]
    # Effects that must never run twice (a send reaches a person); a started one is recorded in the ledger.
    not_repeatable: frozenset[str]

    async def run(self, envelope: Envelope) -> list[Envelope]: ...

    def unknown_outcome(self, envelope: Envelope) -> list[Envelope]: ...


@dataclass(frozen=True, kw_only=True)
class DomainPolicy:
    """What a domain's fold decides with, as its section of a policy (schemas.policies).

    model: a pydantic model refusing unknown fields, with `fold_config()`; its defaults are the built-in policy
    (what an unstamped event is decided with). configured: the section the environment configures now.
    """

    model: Any
    configured: Callable[[], dict[str, Any]]

    @classmethod
    def of(cls, model: Any, settings: type) -> DomainPolicy:
        """The policy whose configured section is the model's fields of a settings class (BATON_* variables)."""
        def configured() -> dict[str, Any]:
            values = loaded(settings).model_dump(include=set(model.model_fields))  # type: ignore[attr-defined]
            return model.model_validate(values).model_dump(mode="json")

        return cls(model=model, configured=configured)

    def parse(self, section: dict[str, Any]) -> Any:
        """The fold configuration of a section (pydantic.ValidationError names a bad field)."""
        return self.model.model_validate(section).fold_config()


@dataclass(frozen=True, kw_only=True)
class Domain:
    """Everything Baton needs to know about one domain."""

    name: str
    catalog: EventCatalog
    # The fold under the built-in policy: never configured from the environment (folder_under adds stamps).
    folder: Callable[[Settings], Folder]
    # The worker's table of states (key = stream id); its changelog is what the projector reads.
    state_table: str
    state_codec: StateCodec
    read_models: tuple[ReadModel, ...] = ()
    migrations: Path | None = None
    routers: Callable[[], Sequence[APIRouter]] = field(default=lambda: ())
    effects: Callable[[Settings], EffectWorker] | None = None
    # Extra worker-side agents or timers (e.g. one publishing tick events): called with the worker's app.
    agents: Callable[[faust.App, Settings], None] | None = None
    # Adds the domain's commands (or command groups) to the `baton` CLI.
    commands: Callable[[typer.Typer], None] | None = None
    # The domain's page of the web console: an ES module exporting `{title, render(root, console)}`.
    console_page: Path | None = None
    # The domain's own settings (a pydantic BaseSettings class), read once per process with streams.settings.loaded.
    settings: type | None = None
    # What its fold decides with, adopted on the log as policy events; None: the fold decides with no policy.
    policy: DomainPolicy | None = None

    def folder_under(self, settings: Settings, book: PolicyBook) -> Folder:
        """The fold as the spine applies it: each event decided under the policy it is stamped with (from the
        book), an unstamped one under the built-in defaults; never under the environment of the moment."""
        folder = self.folder(settings)
        if self.policy is None:
            return folder
        parse = self.policy.parse
        return replace(folder, config_of=lambda policy: book.config(policy, self.name, parse))

    def rows_of(self, state: Any) -> list[tuple[ReadModel, tuple]]:
        """Each read model's rows for one state, as the projector and replay write them."""
        return [(model, row) for model in self.read_models for row in model.rows_of(state)]

    @property
    def ledger_table(self) -> str | None:
        """The effect ledger's table, when the domain has effects."""
        return f"{self.name}-ledger" if self.effects is not None else None

    @property
    def tables(self) -> tuple[str, ...]:
        """The worker's tables of this domain, co-partitioned with its topic."""
        return (self.state_table,) + ((self.ledger_table,) if self.ledger_table else ())


def load_domains(settings: Settings | None = None) -> tuple[Domain, ...]:
    """The built-in domains and the configured extra ones, loaded once per process."""
    settings = settings or get_settings()
    extra = tuple(path.strip() for path in settings.extra_domains.split(",") if path.strip())
    return _load((*builtin_domains(settings.domains), *extra))


@cache
def builtin_domains(names: str = "") -> tuple[str, ...]:
    """`module:DOMAIN` of every package in streams/domains/, or of those named (comma-separated; policies always)."""
    package = importlib.import_module(BUILTIN_PACKAGE)
    found = {module.name: f"{BUILTIN_PACKAGE}.{module.name}:DOMAIN"
             for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name)}
    wanted = {name.strip() for name in names.split(",") if name.strip()}
    if not wanted:
        return tuple(found.values())
    if unknown := wanted - found.keys():
        raise DomainError(f"BATON_DOMAINS names {', '.join(sorted(unknown))}: the built-in domains are"
                          f" {', '.join(found)}")
    return tuple(path for name, path in found.items() if name in wanted | {"policies"})


@cache
def _load(paths: tuple[str, ...]) -> tuple[Domain, ...]:
    domains: dict[str, Domain] = {}
    tables: dict[str, str] = {}
    for path in dict.fromkeys(paths):
        domain = _import(path)
        if domain.name in domains:
            raise DomainError(f"domain {domain.name!r} is declared twice ({path})")
        if domain.catalog.domain != domain.name:
            raise DomainError(f"domain {domain.name!r} declares the catalog of {domain.catalog.domain!r}")
        for table in domain.tables:
            if table in tables:
                raise DomainError(f"table {table!r} of {domain.name!r} is already {tables[table]!r}'s")
            tables[table] = domain.name
        domains[domain.name] = domain
    return tuple(domains.values())


def _import(path: str) -> Domain:
    module_name, _, attribute = path.partition(":")
    try:
        domain = getattr(importlib.import_module(module_name), attribute or "DOMAIN")
    except (ImportError, AttributeError) as exc:
        raise DomainError(f"cannot load domain {path!r}: {exc}") from None
    if not isinstance(domain, Domain):
        raise DomainError(f"{path!r} is a {type(domain).__name__}, not a Domain")
    return domain


def domain_of_topic(settings: Settings) -> dict[str, Domain]:
    """Each domain by its topic name."""
    return {settings.topic(d.name): d for d in load_domains(settings)}


def migration_sources(settings: Settings | None = None) -> list[tuple[str, Path]]:
    """(domain, directory) of every registered domain that has read-model migrations."""
    return [(d.name, d.migrations) for d in load_domains(settings) if d.migrations is not None]
