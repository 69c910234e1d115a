"""Bearer JWTs (HS256) naming the caller's tenant; every API derives the tenant from here."""

from __future__ import annotations

import time
from typing import Annotated

import jwt
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from streams.settings import Settings

_bearer = HTTPBearer(auto_error=False)


def issue_token(settings: Settings, tenant_id: str, ttl_s: int = 30 * 24 * 3600) -> str:
    """A signed token for one tenant."""
    now = int(time.time())
    claims = {"sub": f"tenant:{tenant_id}", "tenant_id": tenant_id, "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")


def tenant_from_token(settings: Settings, token: str) -> str:
    """The tenant a valid token names; jwt.InvalidTokenError otherwise."""
    claims = jwt.decode(
        token, settings.jwt_secret.get_secret_value(), algorithms=["HS256"], options={"require": ["exp"]}
    )
    tenant_id = claims.get("tenant_id")
    if not isinstance(tenant_id, str) or not tenant_id:
        raise jwt.InvalidTokenError("token names no tenant_id")
    return tenant_id


def require_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """FastAPI dependency: the caller's tenant, or 401. Settings come from app.state.settings."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    try:
        return tenant_from_token(request.app.state.settings, credentials.credentials)
    except jwt.InvalidTokenError as exc:
        raise HTTPException(401, f"invalid token: {exc}", headers={"WWW-Authenticate": "Bearer"}) from None


Tenant = Annotated[str, Depends(require_tenant)]
