"""The tenants file: which business number belongs to which tenant, and each tenant's FAQ and catalog."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated

import msgspec

from agents.errors import AgentError
from schemas.errors import locate


class TenantsError(AgentError, ValueError):
    """The tenants file, or a file it names, is missing or malformed."""


class FaqEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One FAQ answer and the keywords that select it."""

    question: str
    answer: str
    keywords: list[str] = []


class CatalogItem(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One product with its price and stock."""

    sku: str
    name: str
    price: float
    currency: str
    stock: Annotated[int, msgspec.Meta(ge=0)]
    keywords: list[str] = []


class Tenant(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant and its business number."""

    id: str
    name: str
    phone_number_id: str
    display_phone_number: str | None = None
    # The app secret of this tenant's Meta app, when it signs webhooks with its own (else the global one).
    whatsapp_app_secret: str | None = None
    faq: tuple[FaqEntry, ...] = ()
    catalog: tuple[CatalogItem, ...] = ()


class Tenants:
    """Tenants by id and by WhatsApp phone_number_id."""

    def __init__(self, tenants: list[Tenant]) -> None:
        self.by_id: dict[str, Tenant] = {}
        self.by_phone_number_id: dict[str, Tenant] = {}
        for tenant in tenants:
            if tenant.id in self.by_id:
                raise TenantsError(f"tenant {tenant.id!r} is declared twice")
            owner = self.by_phone_number_id.get(tenant.phone_number_id)
            if owner is not None:
                raise TenantsError(f"tenants {owner.id!r} and {tenant.id!r} share phone_number_id "
                                   f"{tenant.phone_number_id!r}; a WhatsApp business number belongs to one tenant")
            self.by_id[tenant.id] = tenant
            self.by_phone_number_id[tenant.phone_number_id] = tenant

    def for_phone_number_id(self, phone_number_id: str) -> Tenant | None:
        return self.by_phone_number_id.get(phone_number_id)

    def get(self, tenant_id: str) -> Tenant | None:
        return self.by_id.get(tenant_id)


_KEYS = ("name", "phone_number_id", "display_phone_number", "whatsapp_app_secret", "faq", "catalog")


def load_tenants(path: Path) -> Tenants:
    """Read the tenants file and the FAQ and catalog files it names (paths relative to it).

    Every problem is a TenantsError that starts with "tenants file <path>:" and names the tenant, key or file.
    """
    path = Path(path)
    where = f"tenants file {path}"
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TenantsError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TenantsError(f"{where}: not valid TOML: {exc}") from None
    if unknown := sorted(set(document) - {"tenants"}):
        raise TenantsError(f"{where}: unknown top-level key {_names(unknown)}; declare tenants as [tenants.<id>] tables")
    declared = document.get("tenants", {})
    if not isinstance(declared, dict):
        raise TenantsError(f"{where}: `tenants` must be a table of [tenants.<id>] tables")
    tenants = [_tenant(where, path.parent, tenant_id, entry) for tenant_id, entry in declared.items()]
    try:
        return Tenants(tenants)
    except TenantsError as exc:
        raise TenantsError(f"{where}: {exc}") from None


def _tenant(where: str, base: Path, tenant_id: str, entry: object) -> Tenant:
    here = f"{where}: tenant {tenant_id!r}"
    if not isinstance(entry, dict):
        raise TenantsError(f"{here} must be a table ([tenants.{tenant_id}]), got {type(entry).__name__}")
    if unknown := sorted(set(entry) - set(_KEYS)):
        raise TenantsError(f"{here} has unknown key {_names(unknown)} (known: {', '.join(_KEYS)})")
    if "phone_number_id" not in entry:
        raise TenantsError(f"{here} lacks phone_number_id")
    phone_number_id = entry["phone_number_id"]
    # A bare TOML integer is accepted: phone_number_ids are digits, and writing them unquoted is natural.
    if isinstance(phone_number_id, bool) or not isinstance(phone_number_id, str | int) or not str(phone_number_id):
        raise TenantsError(f"{here}: phone_number_id must be a non-empty string, got {phone_number_id!r}")
    for key in ("name", "display_phone_number", "whatsapp_app_secret"):
        if key in entry and not isinstance(entry[key], str):
            raise TenantsError(f"{here}: {key} must be a string, got {entry[key]!r}")
    return Tenant(
        id=tenant_id,
        name=entry.get("name", tenant_id),
        phone_number_id=str(phone_number_id),
        display_phone_number=entry.get("display_phone_number"),
        whatsapp_app_secret=entry.get("whatsapp_app_secret"),
        faq=_load(here, base, entry, "faq", list[FaqEntry]),
        catalog=_load(here, base, entry, "catalog", list[CatalogItem]),
    )


def _load(here: str, base: Path, entry: dict, key: str, kind: type) -> tuple:
    if key not in entry:
        return ()
    if not isinstance(entry[key], str):
        raise TenantsError(f"{here}: {key} must be a path relative to the tenants file, got {entry[key]!r}")
    file = base / entry[key]
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise TenantsError(f"{here}: cannot read {key} file {file}: {exc.strerror or exc}") from None
    try:
        return tuple(msgspec.json.decode(data, type=kind))
    except msgspec.DecodeError as exc:
        raise TenantsError(f"{here}: {key} file {file}: {locate(str(exc))}") from None


def _names(keys: list[str]) -> str:
    return ", ".join(repr(key) for key in keys)
