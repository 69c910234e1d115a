"""The tenants file: what it loads, and for every mistake an error naming the file and the problem."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agents.tenants import (
    CatalogItem,
    FaqEntry,
    Tenant,
    Tenants,
    TenantsError,
    load_tenants,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tenants.toml"
FAQ = [{"question": "¿Horario?", "answer": "De 8 a 20.", "keywords": ["horario"]}]
CATALOG = [{"sku": "CAF-001", "name": "Café", "price": 18.9, "currency": "EUR", "stock": 3}]


def tenants_file(tmp_path: Path, toml: str, **files: object) -> Path:
    """A tenants.toml in tmp_path, with JSON files beside it (name -> document)."""
    for name, document in files.items():
        (tmp_path / name).write_text(json.dumps(document), encoding="utf-8")
    path = tmp_path / "tenants.toml"
    path.write_text(toml, encoding="utf-8")
    return path


def error_of(path: Path) -> str:
    with pytest.raises(TenantsError) as caught:
        load_tenants(path)
    message = str(caught.value)
    assert message.startswith(f"tenants file {path}: "), message
    return message.removeprefix(f"tenants file {path}: ")


def test_the_example_file_loads_with_faq_and_catalog() -> None:
    tenants = load_tenants(EXAMPLES)
    assert sorted(tenants.by_id) == ["acme", "globex"]
    acme = tenants.for_phone_number_id("109876543210")
    assert acme is tenants.get("acme") and acme.name == "Acme Café"
    assert acme.faq and acme.catalog and all(isinstance(item, CatalogItem) for item in acme.catalog)
    assert tenants.for_phone_number_id("000") is None and tenants.get("initech") is None


def test_paths_are_relative_to_the_file_and_defaults_apply(tmp_path: Path) -> None:
    (tmp_path / "acme").mkdir()
    path = tenants_file(tmp_path, """
[tenants.acme]
phone_number_id = 109876543210
faq = "acme/faq.json"
catalog = "acme/catalog.json"
""", **{"acme/faq.json": FAQ, "acme/catalog.json": CATALOG})
    (acme,) = load_tenants(path).by_id.values()
    # A bare TOML integer is taken as the digits it is; the name defaults to the id.
    assert acme == Tenant(id="acme", name="acme", phone_number_id="109876543210",
                          faq=(FaqEntry("¿Horario?", "De 8 a 20.", ["horario"]),),
                          catalog=(CatalogItem("CAF-001", "Café", 18.9, "EUR", 3),))


def test_a_file_without_tenants_loads_empty(tmp_path: Path) -> None:
    assert load_tenants(tenants_file(tmp_path, "# nobody yet\n")).by_id == {}


def test_duplicate_phone_number_id_names_both_tenants_and_the_number(tmp_path: Path) -> None:
    path = tenants_file(tmp_path, """
[tenants.acme]
phone_number_id = "109876543210"
[tenants.globex]
phone_number_id = "209876543210"
[tenants.initech]
phone_number_id = 109876543210
""")
    assert error_of(path) == ("tenants 'acme' and 'initech' share phone_number_id '109876543210'; "
                              "a WhatsApp business number belongs to one tenant")


def test_duplicates_are_refused_without_a_file_too() -> None:
    a, b = Tenant(id="a", name="A", phone_number_id="1"), Tenant(id="b", name="B", phone_number_id="1")
    with pytest.raises(TenantsError, match="^tenants 'a' and 'b' share phone_number_id '1'"):
        Tenants([a, b])
    with pytest.raises(TenantsError, match="^tenant 'a' is declared twice$"):
        Tenants([a, Tenant(id="a", name="A again", phone_number_id="2")])


def test_a_tenant_declared_twice_is_a_toml_error_naming_the_line(tmp_path: Path) -> None:
    path = tenants_file(tmp_path, '[tenants.acme]\nphone_number_id = "1"\n[tenants.acme]\nphone_number_id = "2"\n')
    assert re.fullmatch(r"not valid TOML: .*acme.*\(at line 3, column \d+\)", error_of(path))


@pytest.mark.parametrize(("key", "what"), [("faq", "faq"), ("catalog", "catalog")])
def test_missing_faq_or_catalog_file_names_the_tenant_and_the_file(tmp_path: Path, key: str, what: str) -> None:
    path = tenants_file(tmp_path, f'[tenants.acme]\nphone_number_id = "1"\n{key} = "acme/{key}.json"\n')
    assert error_of(path) == (f"tenant 'acme': cannot read {what} file {tmp_path / 'acme' / f'{key}.json'}: "
                              "No such file or directory")


@pytest.mark.parametrize(("files", "problem"), [
    ({"faq.json": [{"question": "q"}]}, "faq file {faq}: [0]: Object missing required field `answer`"),
    ({"faq.json": [{"question": "q", "answer": "a", "keyword": ["x"]}]},
     "faq file {faq}: [0]: Object contains unknown field `keyword`"),
    ({"faq.json": {"question": "q"}}, "faq file {faq}: Expected `array`, got `object`"),
    ({"faq.json": FAQ, "catalog.json": [{**CATALOG[0], "stock": -1}]},
     "catalog file {catalog}: [0].stock: Expected `int` >= 0"),
    ({"faq.json": FAQ, "catalog.json": [{**CATALOG[0], "price": "18,90"}]},
     "catalog file {catalog}: [0].price: Expected `float`, got `str`"),
])
def test_malformed_faq_or_catalog_names_the_entry_and_field(tmp_path: Path, files: dict, problem: str) -> None:
    path = tenants_file(tmp_path, '[tenants.acme]\nphone_number_id = "1"\nfaq = "faq.json"\ncatalog = "catalog.json"\n',
                        **files)
    if "catalog.json" not in files:
        (tmp_path / "catalog.json").write_text(json.dumps(CATALOG), encoding="utf-8")
    expected = problem.format(faq=tmp_path / "faq.json", catalog=tmp_path / "catalog.json")
    assert error_of(path) == f"tenant 'acme': {expected}"


def test_faq_file_that_is_not_json_gives_the_position(tmp_path: Path) -> None:
    path = tenants_file(tmp_path, '[tenants.acme]\nphone_number_id = "1"\nfaq = "faq.json"\n')
    (tmp_path / "faq.json").write_text('[{"question": "q", }]', encoding="utf-8")
    assert error_of(path) == f"tenant 'acme': faq file {tmp_path / 'faq.json'}: JSON is malformed: " \
                             "trailing comma in object (byte 19)"


@pytest.mark.parametrize(("toml", "problem"), [
    ('[tenants.acme]\nphone_number_id = "1"\nphone = "2"\nfaqs = "faq.json"\n',
     ("tenant 'acme' has unknown key 'faqs', 'phone' "
      "(known: name, phone_number_id, display_phone_number, whatsapp_app_secret, faq, catalog)")),
    ('[tenant.acme]\nphone_number_id = "1"\n',
     "unknown top-level key 'tenant'; declare tenants as [tenants.<id>] tables"),
    ('tenants = ["acme"]\n', "`tenants` must be a table of [tenants.<id>] tables"),
    ('[tenants]\nacme = "109876543210"\n', "tenant 'acme' must be a table ([tenants.acme]), got str"),
    ('[tenants.acme]\nname = "Acme"\n', "tenant 'acme' lacks phone_number_id"),
    ('[tenants.acme]\nphone_number_id = ""\n', "tenant 'acme': phone_number_id must be a non-empty string, got ''"),
    ('[tenants.acme]\nphone_number_id = 1.5\n', "tenant 'acme': phone_number_id must be a non-empty string, got 1.5"),
    ('[tenants.acme]\nphone_number_id = "1"\nname = 7\n', "tenant 'acme': name must be a string, got 7"),
    ('[tenants.acme]\nphone_number_id = "1"\nfaq = ["a.json"]\n',
     "tenant 'acme': faq must be a path relative to the tenants file, got ['a.json']"),
])
def test_structural_mistakes_name_the_tenant_and_key(tmp_path: Path, toml: str, problem: str) -> None:
    assert error_of(tenants_file(tmp_path, toml)) == problem


def test_missing_or_unreadable_tenants_file(tmp_path: Path) -> None:
    assert error_of(tmp_path / "absent.toml") == "cannot read it: No such file or directory"
    (tmp_path / "latin1.toml").write_bytes(b'[tenants.acme]\nname = "Caf\xe9"\n')
    assert error_of(tmp_path / "latin1.toml").startswith("not valid TOML: 'utf-8' codec can't decode byte 0xe9")
