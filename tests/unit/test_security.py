"""Secure defaults: processes refuse public, missing or short secrets outside development; buckets refill."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import SecretStr

from agents.tenants import load_tenants
from streams.ratelimit import TokenBucket
from streams.server import create_api
from streams.settings import InsecureSettings, Settings, require_secure

STRONG = {"BATON_JWT_SECRET": "j" * 48, "BATON_WHATSAPP_APP_SECRET": "w" * 48, "BATON_WHATSAPP_VERIFY_TOKEN": "v" * 48}
VARIABLES = ("BATON_JWT_SECRET", "BATON_WHATSAPP_APP_SECRET", "BATON_WHATSAPP_VERIFY_TOKEN")


def start(role: str, **env: str) -> subprocess.CompletedProcess:
    """Start a Baton role against an unreachable broker: the secrets check comes before any connection."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
    clean.update(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9", DATABASE_URL="postgresql://127.0.0.1:9/x", COLUMNS="300",
                 **env)
    return subprocess.run([sys.executable, "-m", "streams.cli", role], env=clean, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize("role", ["worker", "projector", "api"])
def test_every_role_refuses_the_public_defaults_on_a_real_broker(role: str) -> None:
    result = start(role, BATON_BROKER_PROFILE="kafka")
    assert result.returncode == 2, result.stderr
    for variable in VARIABLES:
        assert f"{variable} is the public development default" in result.stderr
    assert "secrets.token_urlsafe" in result.stderr


def test_production_env_refuses_even_on_the_embedded_profile_and_names_only_whats_wrong() -> None:
    result = start("api", BATON_ENV="production", **{**STRONG, "BATON_WHATSAPP_APP_SECRET": "short"})
    assert result.returncode == 2
    assert "BATON_WHATSAPP_APP_SECRET is shorter than 32 bytes" in result.stderr
    assert "BATON_JWT_SECRET" not in result.stderr and "VERIFY_TOKEN" not in result.stderr


def test_unset_and_rotated_secrets_are_checked_one_by_one() -> None:
    settings = Settings(env="production", jwt_secrets=SecretStr(f"{'n' * 40},tooshort"),
                        whatsapp_app_secret=SecretStr(""), whatsapp_verify_token=SecretStr("v" * 40))
    assert settings.insecure_secrets() == ["BATON_JWT_SECRETS is shorter than 32 bytes",
                                           "BATON_WHATSAPP_APP_SECRET is not set"]


def test_development_runs_with_the_defaults_and_production_with_strong_secrets() -> None:
    require_secure(Settings())  # baton dev: embedded profile, development env
    require_secure(Settings(broker_profile="kafka", **{k.removeprefix("BATON_").lower(): SecretStr(v)
                                                       for k, v in STRONG.items()}))
    with pytest.raises(InsecureSettings, match="BATON_JWT_SECRET is the public development default"):
        create_api(Settings(broker_profile="kafka"))


def test_bucket_refills_at_its_rate_and_takes_all_or_nothing() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=2)
    assert bucket.take("a", 0.0) is None and bucket.take("a", 0.0) is None
    assert bucket.take("a", 0.0) == pytest.approx(0.5)
    assert bucket.take("a", 0.5) is None  # refilled one token in half a second
    # "b" is full, "a" is empty: neither is charged.
    assert bucket.take_all(["b", "a"], 0.5) == pytest.approx(0.5)
    assert bucket.take("b", 0.5) is None and bucket.take("b", 0.5) is None


def test_tenants_file_carries_a_per_tenant_app_secret(tmp_path) -> None:
    (tmp_path / "tenants.toml").write_text('[tenants.acme]\nphone_number_id = "1"\nwhatsapp_app_secret = "s3cr3t"\n'
                                           '[tenants.globex]\nphone_number_id = "2"\n')
    tenants = load_tenants(tmp_path / "tenants.toml")
    assert tenants.by_id["acme"].whatsapp_app_secret == "s3cr3t"
    assert tenants.by_id["globex"].whatsapp_app_secret is None
