"""Bearer JWT paths of the tenant dependency: the one good token, and every bad one answered 401."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Iterator

import jwt
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from streams.auth import CallerDep, Tenant, issue_token, key_id
from streams.settings import Settings, get_settings

SECRET = "unit-test-jwt-secret-" + "0123456789abcdef" * 3  # 68 bytes: long enough for HS512


@pytest.fixture
def settings() -> Settings:
    """Built inside the test, after tests/unit/conftest.py has cleared the environment."""
    return Settings(jwt_secret=SecretStr(SECRET))


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A minimal app with one route behind the Tenant dependency (no network: ASGI in process)."""
    app = FastAPI()
    app.state.settings = settings

    @app.get("/whoami")
    def whoami(tenant: Tenant) -> dict[str, str]:
        return {"tenant": tenant}

    with TestClient(app) as test_client:
        yield test_client


def claims(**changes: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {"iss": "baton", "aud": "baton-api", "sub": "tenant:acme", "tenant_id": "acme",
                               "iat": now, "exp": now + 3600}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, object], body: dict[str, object], secret: str | None = SECRET) -> str:
    """A JWS built without PyJWT: any header, HMAC-SHA256 over it with `secret` (empty signature when None)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(body).encode())}"
    signature = "" if secret is None else b64(hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest())
    return f"{signing_input}.{signature}"


def get(client: TestClient, authorization: str | None):
    headers = {} if authorization is None else {"Authorization": authorization}
    return client.get("/whoami", headers=headers)


def test_issued_token_names_its_tenant(client: TestClient, settings: Settings) -> None:
    response = get(client, f"Bearer {issue_token(settings, 'acme')}")
    assert response.status_code == 200 and response.json() == {"tenant": "acme"}


def test_scheme_name_is_case_insensitive(client: TestClient, settings: Settings) -> None:
    assert get(client, f"bearer {issue_token(settings, 'acme')}").json() == {"tenant": "acme"}


def test_hand_made_hs256_token_is_accepted(client: TestClient) -> None:
    # Guards the helper below: the rejections are about alg/key/claims, not a malformed JWS.
    assert get(client, f"Bearer {hand_made({'alg': 'HS256', 'typ': 'JWT'}, claims())}").status_code == 200


ALG = "InvalidAlgorithmError"
# case -> (token factory, why it is refused: the 401 must be for this reason, not another one)
BAD_TOKENS = {
    "expired": (lambda: jwt.encode(claims(exp=int(time.time()) - 60), SECRET, algorithm="HS256"),
                "token expired"),
    "no exp": (lambda: jwt.encode(claims(exp=...), SECRET, algorithm="HS256"), "lacks the 'exp' claim"),
    "no aud": (lambda: jwt.encode(claims(aud=...), SECRET, algorithm="HS256"), "lacks the 'aud' claim"),
    "wrong aud": (lambda: jwt.encode(claims(aud="another-api"), SECRET, algorithm="HS256"), "wrong audience"),
    "wrong iss": (lambda: jwt.encode(claims(iss="someone-else"), SECRET, algorithm="HS256"), "wrong issuer"),
    "issued in the future": (lambda: jwt.encode(claims(iat=int(time.time()) + 600), SECRET, algorithm="HS256"),
                             "not yet valid"),
    "no tenant_id": (lambda: jwt.encode(claims(tenant_id=...), SECRET, algorithm="HS256"), "no tenant_id"),
    "empty tenant_id": (lambda: jwt.encode(claims(tenant_id=""), SECRET, algorithm="HS256"), "no tenant_id"),
    "tenant_id not a string": (lambda: jwt.encode(claims(tenant_id=7), SECRET, algorithm="HS256"), "no tenant_id"),
    "alg none": (lambda: hand_made({"alg": "none", "typ": "JWT"}, claims(), secret=None), ALG),
    "alg None, signed": (lambda: hand_made({"alg": "None", "typ": "JWT"}, claims()), ALG),
    "HS384": (lambda: jwt.encode(claims(), SECRET, algorithm="HS384"), ALG),
    "HS512": (lambda: jwt.encode(claims(), SECRET, algorithm="HS512"), ALG),
    "RS256 header, HMAC signature": (lambda: hand_made({"alg": "RS256", "typ": "JWT"}, claims()), ALG),
    "other secret": (lambda: jwt.encode(claims(), "another-secret-" + "x" * 40, algorithm="HS256"),
                     "bad signature"),
    "unknown kid": (lambda: jwt.encode(claims(), SECRET, algorithm="HS256", headers={"kid": "0" * 16}),
                    "not (or no longer) accepted"),
    "truncated signature": (lambda: jwt.encode(claims(), SECRET, algorithm="HS256")[:-4], ""),
    "not a jwt": (lambda: "not-a-jwt", "malformed token"),
    "header not an object": (lambda: f"{b64(b'[1]')}.{b64(json.dumps(claims()).encode())}.c2ln",
                             "malformed token"),
}


@pytest.mark.parametrize("case", BAD_TOKENS)
def test_bad_bearer_tokens_are_401_with_a_bearer_challenge(client: TestClient, case: str) -> None:
    make, reason = BAD_TOKENS[case]
    token = make()
    response = get(client, f"Bearer {token}")
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"
    detail = response.json()["detail"]
    assert detail.startswith("invalid token: ") and reason in detail
    for part in {token, *token.split(".")} - {""}:
        assert part not in response.text  # never echo the credential, or any segment of it


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic YWNtZTpzZWNyZXQ=",  # acme:secret
        "Digest username=acme",
        "Token {token}",
        "{token}",  # no scheme at all
        "Basic {token}",  # a valid token under the wrong scheme
    ],
)
def test_missing_token_or_other_scheme_is_401(client: TestClient, settings: Settings,
                                              authorization: str | None) -> None:
    token = issue_token(settings, "acme")
    header = None if authorization is None else authorization.format(token=token)
    response = get(client, header)
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == {"detail": "missing bearer token"}
    assert token not in response.text


def test_missing_settings_is_a_server_error_not_an_open_door(settings: Settings) -> None:
    app = FastAPI()

    @app.get("/whoami")
    def whoami(tenant: Tenant) -> dict[str, str]:
        return {"tenant": tenant}

    with TestClient(app, raise_server_exceptions=False) as test_client:
        response = get(test_client, f"Bearer {issue_token(settings, 'acme')}")
    assert response.status_code == 500


def test_runner_environment_never_reaches_unit_tests() -> None:
    # tests/unit/conftest.py removes BATON_* and the standard names before every test; with BATON_JWT_SECRET
    # exported by whoever runs the suite, tokens here would otherwise be checked against another secret.
    leaked = [n for n in os.environ if n.startswith(("BATON_", "ANTHROPIC_")) or n in ("DATABASE_URL",
                                                                                        "KAFKA_BOOTSTRAP_SERVERS")]
    assert leaked == []
    defaults = get_settings()
    assert defaults.jwt_secret.get_secret_value() == Settings.model_fields["jwt_secret"].default.get_secret_value()
    assert (defaults.database_url, defaults.kafka_bootstrap_servers, defaults.anthropic_api_key) == (None, None, None)


def test_expiry_has_a_small_clock_skew_leeway(client: TestClient) -> None:
    just_expired = jwt.encode(claims(exp=int(time.time()) - 10), SECRET, algorithm="HS256")
    assert get(client, f"Bearer {just_expired}").status_code == 200


def rotation_client(secrets: str) -> TestClient:
    app = FastAPI()
    app.state.settings = Settings(jwt_secrets=SecretStr(secrets))

    @app.get("/whoami")
    def whoami(tenant: Tenant) -> dict[str, str]:
        return {"tenant": tenant}

    return TestClient(app)


def test_a_rotated_out_secret_verifies_while_listed_and_is_refused_after() -> None:
    old, new = "old-secret-" + "a" * 40, "new-secret-" + "b" * 40
    old_token = issue_token(Settings(jwt_secret=SecretStr(old)), "acme")
    with rotation_client(f"{new},{old}") as during:
        # The new secret signs; tokens of both keep working while both are listed.
        new_token = issue_token(during.app.state.settings, "acme")
        assert jwt.get_unverified_header(new_token)["kid"] == key_id(new)
        assert get(during, f"Bearer {old_token}").json() == {"tenant": "acme"}
        assert get(during, f"Bearer {new_token}").json() == {"tenant": "acme"}
    with rotation_client(new) as after:
        refused = get(after, f"Bearer {old_token}")
        assert refused.status_code == 401 and "no longer" in refused.json()["detail"]
        assert get(after, f"Bearer {new_token}").status_code == 200


def test_subject_and_service_tokens_name_the_caller(settings: Settings) -> None:
    app = FastAPI()
    app.state.settings = settings

    @app.get("/caller")
    def caller(who: CallerDep) -> dict[str, object]:
        return who._asdict()

    with TestClient(app) as test_client:
        learner = issue_token(settings, "acme", subject="learner-7")
        service = issue_token(settings, "acme", service=True)
        assert test_client.get("/caller", headers={"Authorization": f"Bearer {learner}"}).json() == {
            "tenant_id": "acme", "subject": "learner-7", "service": False, "agent": False}
        assert test_client.get("/caller", headers={"Authorization": f"Bearer {service}"}).json() == {
            "tenant_id": "acme", "subject": "tenant:acme", "service": True, "agent": False}


def test_query_and_ingest_buckets_are_per_tenant_with_retry_after() -> None:
    settings = Settings(jwt_secret=SecretStr(SECRET), query_rate_per_s=0.01, query_burst=2, ingest_rate_per_s=0.01,
                        ingest_burst=1)
    app = FastAPI()
    app.state.settings = settings

    @app.get("/whoami")
    def whoami(tenant: Tenant) -> dict[str, str]:
        return {"tenant": tenant}

    @app.post("/write")
    def write(tenant: Tenant) -> dict[str, str]:
        return {"tenant": tenant}

    acme = {"Authorization": f"Bearer {issue_token(settings, 'acme')}"}
    globex = {"Authorization": f"Bearer {issue_token(settings, 'globex')}"}
    with TestClient(app) as test_client:
        assert [test_client.get("/whoami", headers=acme).status_code for _ in range(3)] == [200, 200, 429]
        refused = test_client.get("/whoami", headers=acme)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert "tenant 'acme' (queries)" in refused.json()["detail"]
        # Another tenant has its own bucket; writes have their own budget.
        assert test_client.get("/whoami", headers=globex).status_code == 200
        assert [test_client.post("/write", headers=acme).status_code for _ in range(2)] == [200, 429]
