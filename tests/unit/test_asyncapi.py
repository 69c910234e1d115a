"""The AsyncAPI document: valid against the official AsyncAPI 3.0.0 JSON Schema, complete over the registry, and
describing the envelopes the codec writes.

The official schema is not in this repository: a session fixture fetches the npm package `@asyncapi/specs` once
with `npm pack` into ~/.cache/baton/asyncapi/ (reused afterwards) and reads the one JSON file it needs.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft7Validator
from typer.testing import CliRunner

from schemas import encode, new_event, registration, source_event_id
from schemas.conversations import MessageReceived
from streams.asyncapi import asyncapi_document, key_template
from streams.registry import load_domains
from streams.settings import Settings
from streams.topics import key_partition

SPECS_VERSION = "6.11.1"
SPEC_FILE = "3.0.0-without-$id.json"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "baton" / "asyncapi" / SPECS_VERSION


@pytest.fixture(scope="session")
def asyncapi_schema() -> dict[str, Any]:
    """The official AsyncAPI 3.0.0 JSON Schema from @asyncapi/specs, fetched with npm once and cached."""
    cached = CACHE / SPEC_FILE
    if not cached.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(f"`npm` is not installed: it fetches the AsyncAPI JSON Schema (@asyncapi/specs@{SPECS_VERSION})"
                        f" into {CACHE}; install Node.js with npm (apt-get install npm), or put {SPEC_FILE} there",
                        pytrace=False)
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
            done = subprocess.run([npm, "pack", f"@asyncapi/specs@{SPECS_VERSION}", "--pack-destination", scratch],
                                  cwd=scratch, capture_output=True, text=True, timeout=240, check=False)
            if done.returncode != 0:
                pytest.fail(f"`npm pack @asyncapi/specs@{SPECS_VERSION}` failed ({done.returncode}): "
                            f"{done.stderr.strip()[-2000:]}", pytrace=False)
            (tarball,) = Path(scratch).glob("*.tgz")
            with tarfile.open(tarball) as tar:
                member = tar.extractfile(f"package/schemas/{SPEC_FILE}")
                assert member is not None, f"{tarball.name} holds no schemas/{SPEC_FILE}"
                data = member.read()
            json.loads(data)  # a truncated file is never cached
            partial = Path(scratch) / SPEC_FILE
            partial.write_bytes(data)
            os.replace(partial, cached)  # atomic: a concurrent run sees the whole file or none
    schema = json.loads(cached.read_text())
    Draft7Validator.check_schema(schema)
    return schema


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return asyncapi_document(Settings())


def problems(schema: dict[str, Any], instance: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
            for e in Draft7Validator(schema).iter_errors(instance)]


def component_validator(document: dict[str, Any], name: str) -> Draft7Validator:
    """A draft-07 validator for one component schema, its $refs resolved within the document."""
    root = {"allOf": [{"$ref": f"#/components/schemas/{name}"}], "components": document["components"]}
    return Draft7Validator(root, format_checker=Draft7Validator.FORMAT_CHECKER)


def test_the_document_is_valid_asyncapi_3(asyncapi_schema: dict[str, Any], document: dict[str, Any]) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert problems(asyncapi_schema, document) == []
    # The check is not vacuous: AsyncAPI 2's `publish` is no 3.0 action, and a channel holds no `payload`.
    broken = copy.deepcopy(document)
    broken["operations"]["receive.conversations"]["action"] = "publish"
    broken["channels"]["conversations"]["payload"] = {}
    assert len(problems(asyncapi_schema, broken)) >= 2
    # Everything the document holds is JSON (what the API and the CLI serve).
    assert json.loads(json.dumps(document)) == document


@pytest.mark.parametrize("prefix", ["baton.", "acme-prod."])
def test_every_ingestible_type_of_every_domain_is_in_the_document_with_its_payload_schema(prefix: str) -> None:
    settings = Settings(topic_prefix=prefix)
    document = asyncapi_document(settings)
    schemas, messages = document["components"]["schemas"], document["components"]["messages"]
    domains = load_domains(settings)
    assert set(document["channels"]) == {d.name for d in domains}
    listed = set()
    for domain in domains:
        channel = document["channels"][domain.name]
        assert channel["address"] == settings.topic(domain.name)
        assert channel["bindings"]["kafka"]["partitions"] == settings.topic_partitions
        assert set(channel["messages"]) == set(domain.catalog.ingestible)
        if domain.catalog.ingestible:
            operation = document["operations"][f"receive.{domain.name}"]
            assert operation["action"] == "receive" and operation["channel"] == {"$ref": f"#/channels/{domain.name}"}
            assert {m["$ref"].rsplit("/", 1)[1] for m in operation["messages"]} == set(domain.catalog.ingestible)
        for event_type in domain.catalog.ingestible:
            listed.add(event_type)
            message = messages[event_type]
            assert channel["messages"][event_type] == {"$ref": f"#/components/messages/{event_type}"}
            envelope = schemas[message["payload"]["$ref"].rsplit("/", 1)[1]]
            assert envelope["properties"]["type"] == {"const": event_type, "description": "The event type."}
            assert envelope["properties"]["schema_version"]["const"] == registration(event_type).version
            # The payload is msgspec's own JSON Schema of the type's Struct (closed to unknown fields).
            (ref,), own = msgspec.json.schema_components([domain.catalog.events[event_type]],
                                                         ref_template="#/components/schemas/{name}")
            assert envelope["properties"]["payload"] == ref
            name = ref["$ref"].rsplit("/", 1)[1]
            expected = {**own[name], "additionalProperties": False}
            assert schemas[name] == expected
            assert message["bindings"]["kafka"]["key"]["type"] == "string"
    # Only producers' types: nothing Baton emits is offered to them.
    assert set(messages) == listed


def test_an_envelope_from_new_event_validates_against_its_message_schema(document: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    payload = MessageReceived(contact="+4915112345678", whatsapp_message_id="wamid.1", message_type="text", text="hi")
    envelope = new_event("acme", payload, event_id=source_event_id("acme", "crm", "m-1"), occurred_at=now,
                         recorded_at=now, actor="crm")
    value = json.loads(encode(envelope))
    message = document["components"]["messages"]["conversation.message.received"]
    validator = component_validator(document, message["payload"]["$ref"].rsplit("/", 1)[1])
    assert list(validator.iter_errors(value)) == []
    # The key the document describes is the codec's stream id, and event ids follow the uuid5 it states.
    template = message["x-baton-key-template"]
    assert template.format(tenant_id="acme", payload=payload) == envelope.stream_id
    assert envelope.stream_id == "conversation:acme:+4915112345678"
    namespace = document["info"]["description"].split("uuid5(", 1)[1].split(",", 1)[0]
    assert uuid.uuid5(uuid.UUID(namespace), "acme:crm:m-1") == envelope.event_id
    assert key_partition(envelope.stream_id.encode(), 4) is not None
    # What the codec would not take, or the document does not allow, is invalid.
    for change in ({"type": "conversation.status.updated"}, {"schema_version": 2}, {"stream_id": ""},
                   {"unknown": 1}, {"payload": {**value["payload"], "unknown": 1}},
                   {"payload": {**value["payload"], "message_type": "fax"}}, {"event_id": 7}):
        assert not validator.is_valid({**value, **change}), change
    assert not validator.is_valid({k: v for k, v in value.items() if k != "stream_id"})


def test_a_computed_key_is_said_to_be_computed(document: dict[str, Any]) -> None:
    by_domain = {d.name: d.catalog for d in load_domains(Settings())}
    # A bug's stream id is a fingerprint under versioned rules: no template, and the document says to use ingest.
    assert key_template(by_domain["workflow"], "workflow.bug.logged") is None
    message = document["components"]["messages"]["workflow.bug.logged"]
    assert message["x-baton-key-template"] is None and "POST /v1/events" in message["description"]
    assert key_template(by_domain["steps"], "steps.budget.set") == "budget:{tenant_id}"


def test_the_api_serves_the_document_without_a_token() -> None:
    from streams.server import create_api

    settings = Settings()
    response = TestClient(create_api(settings)).get("/v1/asyncapi.json")  # no lifespan: no broker, no database
    assert response.status_code == 200, response.text
    assert response.json() == asyncapi_document(settings)


def test_baton_asyncapi_prints_the_document() -> None:
    from streams.cli import cli

    result = CliRunner().invoke(cli, ["asyncapi"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == asyncapi_document(Settings())
