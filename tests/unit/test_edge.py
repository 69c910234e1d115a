"""The API's edge without a broker: one body limit for every route, 4xx for what no route can take (NUL, UTF-8,
depth, numbers), 422 bodies that match the OpenAPI document, tokens that grant only their scope, the webhook's
signature before any parsing, bounded logs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import structlog
from fastapi import FastAPI
from fastapi.testclient import TestClient

from streams.auth import AgentOrCallerDep, CallerDep, issue_token
from streams.domains.conversations.webhook import sign
from streams.domains.learning import DOMAIN as LEARNING
from streams.edge import (
    MAX_JSON_DEPTH,
    MAX_NUMBER_CHARS,
    bounded,
    check_json,
    configure_bounded_logging,
)
from streams.publisher import EventTooLarge
from streams.server import create_api
from streams.settings import Settings

LIMIT = 256 * 1024
INTENT = {"topic": "Machine Learning", "depth": "informed", "time_per_day_min": 60}


class Publisher:
    """Stands in for the broker in these unit tests: records envelopes, or refuses them as too large."""

    def __init__(self, too_large: bool = False) -> None:
        self.too_large = too_large
        self.envelopes: list = []

    async def publish(self, envelopes):
        if self.too_large:
            raise EventTooLarge("1 of 1 events are larger than the broker accepts")
        self.envelopes.extend(envelopes)
        return [e.event_id for e in envelopes]


@pytest.fixture
def settings() -> Settings:
    return Settings(max_request_bytes=LIMIT)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    """The real API app (lifespan not run: no broker, no database); refusals happen before either is needed."""
    app = create_api(settings)
    app.state.publisher = Publisher()
    return app


@pytest.fixture
def api(app: FastAPI, settings: Settings) -> Iterator[TestClient]:
    client = TestClient(app, raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {issue_token(settings, 'acme')}"
    yield client


def conforms(app: FastAPI, status: int, body: Any, schema_name: str) -> None:
    """The body validates against the component schema the OpenAPI document gives that status."""
    document = app.openapi()
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]}
    jsonschema.Draft202012Validator(schema).validate(body)


def deep(levels: int) -> bytes:
    return b'{"topic": ' + b"[" * levels + b"]" * levels + b"}"


# -- check_json: linear, nothing parsed ----------------------------------------------------------------------------

def test_depth_counts_arrays_and_objects_but_not_brackets_inside_strings() -> None:
    assert check_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is None
    refused = check_json(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    assert refused is not None and refused["msg"] == f"nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects"
    assert check_json(json.dumps({"s": "[" * 10_000, "t": 'a\\"[[[' * 1000}).encode()) is None
    # Depth that climbs by one level per sibling still counts.
    assert check_json(b"[[]," * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)) is not None


def test_utf8_and_numbers_are_checked_outside_strings_only() -> None:
    refused = check_json(b'{"a": "\xff"}')
    assert refused is not None and refused["loc"] == ["body"] and "not valid UTF-8 (byte 7 is 0xff)" in refused["msg"]
    assert check_json(b'{"n": ' + b"9" * MAX_NUMBER_CHARS + b"}") is None
    refused = check_json(b'{"n": ' + b"9" * 5000 + b"}")
    assert refused is not None and "a number of 5000 characters" in refused["msg"]
    assert check_json(json.dumps({"digits": "9" * 5000}).encode()) is None  # a long string of digits is text


def test_bodies_at_the_size_limit_get_their_verdict() -> None:
    # One pass over the bytes, no parsing (its speed is a bench matter, not a test's).
    deep = check_json(b"[" * 1_048_576)
    assert deep is not None and "nested" in deep["msg"], deep
    assert check_json(b'["' + b"a" * 1_048_570 + b'"]') is None
    assert check_json(b"[" + b"1," * 524_286 + b"1]") is None  # half a million numbers, flat


# -- one body limit for every route --------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), [("PUT", "/v1/flags"), ("POST", "/v1/outbound"),
                                              ("POST", "/v1/learning/day.run"), ("POST", "/v1/events"),
                                              ("GET", "/v1/conversations"), ("POST", "/v1/no-such-route")])
def test_every_route_answers_413_naming_the_limit(app: FastAPI, api: TestClient, method: str, path: str) -> None:
    response = api.request(method, path, content=b"x" * (LIMIT + 1), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["limit_bytes"] == LIMIT and f"limit of {LIMIT} bytes" in response.json()["detail"]
    conforms(app, 413, response.json(), "RequestTooLarge")


def test_a_streamed_body_without_content_length_is_cut_at_the_limit(api: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(300):
            yield b"x" * 1000

    response = api.post("/v1/outbound", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["limit_bytes"] == LIMIT


def test_a_body_the_broker_refuses_as_too_large_is_413_never_a_retry(app: FastAPI, api: TestClient) -> None:
    app.state.publisher = Publisher(too_large=True)
    event = {"type": "conversation.message.received", "occurred_at": "2026-03-01T12:00:00Z",
             "payload": {"contact": "+15550001", "text": "hi", "whatsapp_message_id": "wamid.1",
                         "message_type": "text"}}
    response = api.post("/v1/events", json=event)
    assert response.status_code == 413 and "a retry cannot succeed" in response.json()["detail"], response.text
    assert "retry-after" not in response.headers


# -- 422 for what no route can take, in the document's shape --------------------------------------------------------

@pytest.mark.parametrize(("path", "loc"), [("/v1/conversations/a%00b", ["path"]),
                                           ("/v1/conversations?lane=a%00b", ["query", "lane"]),
                                           ("/v1/tasks/T%00/status", ["path"]),
                                           ("/v1/audit?actor=%00", ["query", "actor"])])
def test_a_nul_in_a_path_or_query_parameter_is_422_naming_it(app: FastAPI, api: TestClient, path: str,
                                                             loc: list[str]) -> None:
    response = api.get(path)
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == loc and "NUL character" in problem["msg"]
    conforms(app, 422, response.json(), "HTTPValidationError")


@pytest.mark.parametrize(("body", "says"), [
    (deep(10_000), "nested deeper than"),
    (deep(900), "nested deeper than"),
    (b'{"topic": "\xff\xfe"}', "not valid UTF-8"),
    (b'{"time_per_day_min": ' + b"9" * 5000 + b"}", "a number of 5000 characters"),
])
@pytest.mark.parametrize("path", ["/v1/learning/intent.sync", "/v1/outbound", "/v1/events", "/v1/sprints"])
def test_unreadable_json_is_422_on_every_route_the_learning_ones_included(app: FastAPI, api: TestClient, path: str,
                                                                          body: bytes, says: str) -> None:
    response = api.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert says in response.json()["detail"][0]["msg"]
    conforms(app, 422, response.json(), "HTTPValidationError")


def test_a_route_s_own_string_422_is_in_the_document_too(app: FastAPI) -> None:
    conforms(app, 422, {"detail": "events[3].payload.contact: Expected `str`, got `int`"}, "HTTPValidationError")
    with pytest.raises(jsonschema.ValidationError):
        conforms(app, 422, {"detail": {"nested": "object"}}, "HTTPValidationError")


def test_every_operation_documents_413_and_422(app: FastAPI) -> None:
    for path, item in app.openapi()["paths"].items():
        for method, operation in item.items():
            assert {"413", "422"} <= set(operation["responses"]), f"{method} {path}"


# -- the learning router: Starlette's body errors, time zones, too large ---------------------------------------------

@pytest.fixture
def learning(settings: Settings) -> tuple[TestClient, Publisher]:
    app = FastAPI()
    app.state.settings = settings
    app.state.publisher = Publisher()
    for router in LEARNING.routers():
        app.include_router(router)
    client = TestClient(app, raise_server_exceptions=False)
    client.headers["Authorization"] = f"Bearer {issue_token(settings, 'acme', subject='ada')}"
    return client, app.state.publisher


def test_a_body_the_json_parser_cannot_decode_is_a_400_in_the_learning_format_not_a_500(learning) -> None:
    client, publisher = learning
    # Valid UTF-8 that JSON's encoding detection reads as UTF-16: Starlette's HTTPException, once a 500 here.
    response = client.post("/v1/learning/intent.sync", content=b"\x00{\x00", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["code"] == "invalid_request", response.text
    assert publisher.envelopes == []


def test_a_300_character_time_zone_is_refused_naming_the_field(learning) -> None:
    client, publisher = learning
    for zone in ("A" * 300, "Europe", "Europe/../../etc/passwd"):
        response = client.post("/v1/learning/intent.sync", json={**INTENT, "user_tz": zone})
        assert response.status_code == 400 and response.json()["field"] == "user_tz", response.text
    assert publisher.envelopes == []


def test_the_broker_refusing_an_intent_as_too_large_is_413(learning) -> None:
    client, publisher = learning
    publisher.too_large = True
    response = client.post("/v1/learning/intent.sync", json=INTENT)
    assert response.status_code == 413 and response.json()["code"] == "too_large"


# -- tokens ---------------------------------------------------------------------------------------------------------

def hand_made(header: dict[str, object], secret: str) -> str:
    now = int(time.time())
    claims = {"iss": "baton", "aud": "baton-api", "sub": "tenant:acme", "tenant_id": "acme", "iat": now,
              "exp": now + 600}
    b64 = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()  # noqa: E731
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest())}"


@pytest.mark.parametrize("kid", [{"a": 1}, ["k"], 7, True])
def test_a_kid_that_is_not_a_string_is_401_before_anything(api: TestClient, settings: Settings, kid: object) -> None:
    token = hand_made({"alg": "HS256", "typ": "JWT", "kid": kid}, settings.jwt_keys[0])
    response = api.get("/v1/conversations", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401 and response.json()["detail"] == "invalid token: malformed token"


def test_an_agent_token_reads_its_learner_and_nothing_else(settings: Settings, learning) -> None:
    app = FastAPI()
    app.state.settings = settings

    @app.get("/reads")
    def reads(who: AgentOrCallerDep) -> dict[str, object]:
        return who._asdict()

    @app.post("/writes")
    def writes(who: AgentOrCallerDep) -> dict[str, object]:
        return who._asdict()

    @app.get("/tenant")
    def tenant(who: CallerDep) -> dict[str, object]:
        return who._asdict()

    agent = {"Authorization": f"Bearer {issue_token(settings, 'acme', subject='ada', agent=True)}"}
    with TestClient(app) as client:
        assert client.get("/reads", headers=agent).json() == {"tenant_id": "acme", "subject": "ada", "service": False,
                                                              "agent": True}
        assert client.post("/writes", headers=agent).status_code == 403
        assert client.get("/tenant", headers=agent).status_code == 403
    learning_client, publisher = learning
    for method, path in [("POST", "/v1/learning/intent.sync"), ("GET", "/v1/learning/learners")]:
        response = learning_client.request(method, path, json=INTENT, headers=agent)
        assert response.status_code == 403 and response.json()["code"] == "forbidden", (path, response.text)
    assert publisher.envelopes == []
    with pytest.raises(ValueError):
        issue_token(settings, "acme", service=True, agent=True)


def test_an_agent_token_is_refused_by_the_operations_routes(api: TestClient, settings: Settings) -> None:
    agent = {"Authorization": f"Bearer {issue_token(settings, 'acme', subject='ada', agent=True)}"}
    assert api.get("/v1/ops/deadletters", headers=agent).status_code == 403
    assert api.post("/v1/ops/deadletters/redrive", json={"ids": []}, headers=agent).status_code == 403


# -- the webhook authenticates before it parses -----------------------------------------------------------------------

def test_the_webhook_checks_the_signature_before_reading_the_json(api: TestClient, settings: Settings) -> None:
    for body in (deep(50_000), b'{"entry": "\xff"}', b"{" * 10):
        unsigned = api.post("/v1/webhooks/whatsapp", content=body, headers={"Content-Type": "application/json"})
        assert unsigned.status_code == 401 and unsigned.json()["detail"] == "missing X-Hub-Signature-256 header"
        forged = api.post("/v1/webhooks/whatsapp", content=body, headers={
            "Content-Type": "application/json", "X-Hub-Signature-256": sign("not-the-secret", body)})
        assert forged.status_code == 401 and "does not match" in forged.json()["detail"]
    secret = settings.whatsapp_app_secret.get_secret_value()
    signed = api.post("/v1/webhooks/whatsapp", content=deep(1000), headers={
        "Content-Type": "application/json", "X-Hub-Signature-256": sign(secret, deep(1000))})
    assert signed.status_code == 422 and "nested deeper" in signed.json()["detail"][0]["msg"]


def test_the_webhook_body_limit_holds_before_the_signature(api: TestClient) -> None:
    response = api.post("/v1/webhooks/whatsapp", content=b"{" * (LIMIT + 1), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


# -- logs -----------------------------------------------------------------------------------------------------------

def test_log_values_and_exceptions_render_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    configure_bounded_logging()
    structure: Any = 1
    for _ in range(900):
        structure = {"meta": [structure, "x" * 50]}
    assert len(str(bounded(structure))) <= 1000 and len(str(bounded("y" * 100_000))) < 1100
    log = structlog.get_logger("test")
    try:
        deep_local = structure  # noqa: F841 (a local that rich's tracebacks used to render in full)
        raise RecursionError("deep")
    except RecursionError:
        log.exception("failed", body=structure, path="/v1/learning/intent.sync")
    err = capsys.readouterr().out
    assert len(err) < 20_000 and "deep_local" not in err and "RecursionError" in err
    logging.getLogger().handlers.clear()
