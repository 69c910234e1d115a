"""Bearer JWTs (HS256) naming the caller's tenant (and subject); every API derives the tenant from here.

Tokens carry `iss` and `aud` (checked), a `kid` naming the secret that signed them (rotation: every secret of
BATON_JWT_SECRETS verifies, the first signs), `sub` (a learner, or `tenant:<id>`) and, for services, `scope`.
Scopes: none (the tenant or a user), `service` (acts for its own tenant: operations, any learner by X-User-ID) and
`agent` (what Baton hands a learning agent it calls: reads the learning routes of the one learner it names, GET
only; every other route answers 403). No token spans tenants.
"""

from __future__ import annotations

import hashlib
import time
from typing import Annotated, NamedTuple

import jwt
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from streams.errors import StreamsError
from streams.ratelimit import TokenBucket, rate_limited
from streams.settings import Settings

ISSUER = "baton"
AUDIENCE = "baton-api"
LEEWAY_S = 30
SERVICE_SCOPE = "service"
AGENT_SCOPE = "agent"

_bearer = HTTPBearer(auto_error=False)


class Caller(NamedTuple):
    """Who is calling: the tenant, the subject within it, and whether the token is a service's or an agent's."""

    tenant_id: str
    subject: str
    service: bool
    agent: bool = False


class TokenRejected(StreamsError):
    """A token that grants nothing; the message says why without repeating the token."""


def key_id(secret: str) -> str:
    """The `kid` of a secret: a short digest, so a token names its key without revealing it."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def issue_token(settings: Settings, tenant_id: str, ttl_s: int = 30 * 24 * 3600, *, subject: str | None = None,
                service: bool = False, agent: bool = False) -> str:
    """A token for one tenant (and subject), signed with the first configured secret; `agent`: see the module doc."""
    if service and agent:
        raise ValueError("a token is a service's or an agent's, not both")
    now = int(time.time())
    claims: dict[str, object] = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject or f"tenant:{tenant_id}",
                                 "tenant_id": tenant_id, "iat": now, "exp": now + ttl_s}
    if service:
        claims["scope"] = SERVICE_SCOPE
    if agent:
        claims["scope"] = AGENT_SCOPE
    secret = settings.jwt_keys[0]
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": key_id(secret)})


def caller_from_token(settings: Settings, token: str) -> Caller:
    """The caller a valid token names; TokenRejected (with the reason) otherwise."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.InvalidTokenError:  # DecodeError, and a header PyJWT refuses (e.g. a `kid` that is not a string)
        raise TokenRejected("malformed token") from None
    keys = settings.jwt_keys
    if kid is not None:
        keys = [k for k in keys if key_id(k) == kid]
        if not keys:
            raise TokenRejected("signed with a key that is not (or no longer) accepted")
    if not keys:
        raise TokenRejected("no JWT secret is configured")
    for i, key in enumerate(keys):
        try:
            claims = jwt.decode(token, key, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER,
                                leeway=LEEWAY_S, options={"require": ["exp", "iat", "iss", "aud", "sub"]})
            break
        except jwt.InvalidSignatureError:
            if i == len(keys) - 1:
                raise TokenRejected("bad signature") from None
        except jwt.ExpiredSignatureError:
            raise TokenRejected("token expired") from None
        except jwt.ImmatureSignatureError:
            raise TokenRejected("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected(f"wrong audience (expected {AUDIENCE!r})") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected(f"wrong issuer (expected {ISSUER!r})") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRejected(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidTokenError as exc:
            raise TokenRejected(f"invalid token: {type(exc).__name__}") from None
    tenant_id, subject = claims.get("tenant_id"), claims.get("sub")
    if not isinstance(tenant_id, str) or not tenant_id:
        raise TokenRejected("token names no tenant_id")
    if not isinstance(subject, str) or not subject:
        raise TokenRejected("token names no subject")
    scope = claims.get("scope")
    return Caller(tenant_id, subject, scope == SERVICE_SCOPE, scope == AGENT_SCOPE)


class EdgeLimits:
    """The per-tenant buckets of one API process: writes (ingest) and reads (queries) apart."""

    def __init__(self, settings: Settings) -> None:
        self.ingest = TokenBucket(settings.ingest_rate_per_s, settings.ingest_burst)
        self.query = TokenBucket(settings.query_rate_per_s, settings.query_burst)


def edge_limits(request: Request) -> EdgeLimits:
    """The app's edge buckets, made on first use."""
    state = request.app.state
    if getattr(state, "edge_limits", None) is None:
        state.edge_limits = EdgeLimits(state.settings)
    return state.edge_limits


def require_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """FastAPI dependency: the authenticated caller (401 otherwise), within its tenant's rate limit (429); an agent
    token is refused (403): only the routes that take `AgentOrCallerDep` accept one."""
    caller = _authenticated(request, credentials)
    if caller.agent:
        raise HTTPException(403, "an agent token only reads the learning routes of its learner")
    return caller


def require_caller_or_agent(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """FastAPI dependency: as require_caller, but an agent token is accepted for reads (GET, HEAD)."""
    caller = _authenticated(request, credentials)
    if caller.agent and request.method not in ("GET", "HEAD"):
        raise HTTPException(403, "an agent token only reads (GET) the learning routes of its learner")
    return caller


def _authenticated(request: Request, credentials: HTTPAuthorizationCredentials | None) -> Caller:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    try:
        caller = caller_from_token(request.app.state.settings, credentials.credentials)
    except TokenRejected as exc:
        raise HTTPException(401, f"invalid token: {exc}", headers={"WWW-Authenticate": "Bearer"}) from None
    limits = edge_limits(request)
    reads = request.method in ("GET", "HEAD")
    bucket = limits.query if reads else limits.ingest
    wait = bucket.take(caller.tenant_id, time.monotonic())
    if wait is not None:
        raise rate_limited(f"tenant {caller.tenant_id!r} ({'queries' if reads else 'ingest'})", wait)
    return caller


CallerDep = Annotated[Caller, Depends(require_caller)]
AgentOrCallerDep = Annotated[Caller, Depends(require_caller_or_agent)]


def require_tenant(caller: CallerDep) -> str:
    """FastAPI dependency: the caller's tenant."""
    return caller.tenant_id


Tenant = Annotated[str, Depends(require_tenant)]
