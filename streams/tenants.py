"""The tenants file: which business number belongs to which tenant, and each tenant's FAQ and catalog."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated

import msgspec


class TenantsError(ValueError):
    """The tenants file, or a file it names, is missing or malformed."""


class FaqEntry(msgspec.Struct, frozen=True):
    """One FAQ answer and the keywords that select it."""

    question: str
    answer: str
    keywords: list[str] = []


class CatalogItem(msgspec.Struct, frozen=True):
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
    faq: tuple[FaqEntry, ...] = ()
    catalog: tuple[CatalogItem, ...] = ()


class Tenants:
    """Tenants by id and by WhatsApp phone_number_id."""

    def __init__(self, tenants: list[Tenant]) -> None:
        self.by_id = {t.id: t for t in tenants}
        self.by_phone_number_id = {t.phone_number_id: t for t in tenants}
        if len(self.by_phone_number_id) != len(tenants):
            raise TenantsError("two tenants share a phone_number_id")

    def for_phone_number_id(self, phone_number_id: str) -> Tenant | None:
        return self.by_phone_number_id.get(phone_number_id)

    def get(self, tenant_id: str) -> Tenant | None:
        return self.by_id.get(tenant_id)


def load_tenants(path: Path) -> Tenants:
    """Read the tenants file and the FAQ and catalog files it names."""
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TenantsError(f"cannot read tenants file {path}: {exc}") from None
    base = Path(path).parent
    tenants = []
    for tenant_id, entry in document.get("tenants", {}).items():
        try:
            tenants.append(
                Tenant(
                    id=tenant_id,
                    name=entry.get("name", tenant_id),
                    phone_number_id=str(entry["phone_number_id"]),
                    display_phone_number=entry.get("display_phone_number"),
                    faq=tuple(_load(base / entry["faq"], list[FaqEntry])) if "faq" in entry else (),
                    catalog=tuple(_load(base / entry["catalog"], list[CatalogItem])) if "catalog" in entry else (),
                )
            )
        except KeyError as exc:
            raise TenantsError(f"tenant {tenant_id!r} in {path} lacks {exc}") from None
    return Tenants(tenants)


def _load(path: Path, kind: type) -> object:
    try:
        return msgspec.convert(json.loads(path.read_text(encoding="utf-8")), kind)
    except (OSError, ValueError, msgspec.ValidationError) as exc:
        raise TenantsError(f"cannot load {path}: {exc}") from None
