"""Secure defaults at the edge, on the real broker: forged and rate-limited requests leave the log unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from streams.domains.conversations.webhook import sign
from streams.settings import DEV_WHATSAPP_APP_SECRET, Settings
from tests.fixtures.ingest import bearer, event, hand_wired, log_size, webhook

pytestmark = pytest.mark.integration

STRONG = {"env": "production", "jwt_secret": SecretStr("j" * 48), "whatsapp_app_secret": SecretStr("w" * 48),
          "whatsapp_verify_token": SecretStr("v" * 48)}
ACME_APP_SECRET = "acme-own-meta-app-secret-" + "a" * 24
ACME, GLOBEX = "109876543210", "209876543210"


def signed_with(secret: str, document: object) -> dict:
    body = json.dumps(document).encode()
    return {"content": body, "headers": {"Content-Type": "application/json", "X-Hub-Signature-256": sign(secret, body)}}


@pytest.fixture
def production(settings: Settings) -> Settings:
    return settings.model_copy(update=STRONG)


async def test_a_webhook_forged_with_the_public_default_secret_is_refused_in_production(production: Settings) -> None:
    async with hand_wired(production) as http:
        forged = await http.post("/v1/webhooks/whatsapp", **signed_with(DEV_WHATSAPP_APP_SECRET, webhook()))
        assert forged.status_code == 401 and "does not match" in forged.json()["detail"]
        assert await log_size(production) == 0
        genuine = await http.post("/v1/webhooks/whatsapp", **signed_with("w" * 48, webhook()))
        assert genuine.status_code == 200
    assert await log_size(production) == 2


@pytest.fixture
def per_tenant_secrets(production: Settings, tmp_path: Path) -> Settings:
    examples = Path(production.tenants_file).parent
    tenants = (examples / "tenants.toml").read_text().replace(
        'phone_number_id = "109876543210"', f'phone_number_id = "109876543210"\nwhatsapp_app_secret = "{ACME_APP_SECRET}"')
    tenants = tenants.replace('"tenants/', f'"{examples}/tenants/')
    (tmp_path / "tenants.toml").write_text(tenants)
    return production.model_copy(update={"tenants_file": tmp_path / "tenants.toml"})


async def test_each_tenant_is_verified_with_its_own_meta_app_secret(per_tenant_secrets: Settings) -> None:
    async with hand_wired(per_tenant_secrets) as http:
        # acme signs with its own app's secret; the global one no longer passes for acme's number.
        assert (await http.post("/v1/webhooks/whatsapp", **signed_with("w" * 48, webhook(ACME)))).status_code == 401
        assert (await http.post("/v1/webhooks/whatsapp", **signed_with(ACME_APP_SECRET, webhook(ACME)))).status_code == 200
        # globex has no secret of its own: the global one applies.
        assert (await http.post("/v1/webhooks/whatsapp", **signed_with(ACME_APP_SECRET, webhook(GLOBEX)))).status_code == 401
        assert (await http.post("/v1/webhooks/whatsapp", **signed_with("w" * 48, webhook(GLOBEX)))).status_code == 200
        # One delivery naming numbers of both apps cannot carry a valid signature of either.
        mixed = webhook(ACME)
        mixed["entry"] += webhook(GLOBEX)["entry"]
        refused = await http.post("/v1/webhooks/whatsapp", **signed_with(ACME_APP_SECRET, mixed))
        assert refused.status_code == 401 and "different Meta apps" in refused.json()["detail"]
    assert await log_size(per_tenant_secrets) == 4


async def test_webhook_limit_is_per_business_number_and_refusals_publish_nothing(settings: Settings) -> None:
    limited = settings.model_copy(update={"webhook_rate_per_s": 0.001, "webhook_burst": 1})
    secret = limited.whatsapp_app_secret.get_secret_value()
    async with hand_wired(limited) as http:
        assert (await http.post("/v1/webhooks/whatsapp", **signed_with(secret, webhook(ACME)))).status_code == 200
        refused = await http.post("/v1/webhooks/whatsapp", **signed_with(secret, webhook(ACME)))
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert await log_size(limited) == 2
        assert (await http.post("/v1/webhooks/whatsapp", **signed_with(secret, webhook(GLOBEX)))).status_code == 200
    assert await log_size(limited) == 4


async def test_ingest_limit_refuses_a_whole_batch_before_the_log(settings: Settings) -> None:
    limited = settings.model_copy(update={"ingest_rate_per_s": 0.001, "ingest_burst": 1})
    async with hand_wired(limited) as http:
        assert (await http.post("/v1/events", json={"events": [event(), event()]}, headers=bearer(limited))).status_code == 202
        refused = await http.post("/v1/events", json={"events": [event(), event()]}, headers=bearer(limited))
        assert refused.status_code == 429 and "tenant 'acme' (ingest)" in refused.json()["detail"]
        assert (await http.post("/v1/events", json=event(), headers=bearer(limited, "globex"))).status_code == 202
    assert await log_size(limited) == 3
