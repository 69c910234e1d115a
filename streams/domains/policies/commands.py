"""Policy write side: `PATCH /v1/policies/{domain}` adopts a tenant's policy with one domain's section changed,
and `adopt_section`, what it and `baton policy adopt` share."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, Request
from pydantic import BaseModel, ValidationError

from schemas import Envelope
from streams.ingest import publish
from streams.operations import Operator
from streams.policies import PolicyBook, adoption
from streams.registry import Domain, load_domains


class PolicyChange(BaseModel):
    """What an adoption changed: the scope, the hashes before and after, and the section now in force."""

    scope: str
    domain: str
    adopted: bool
    policy: str | None
    previous: str | None
    section: dict[str, Any]


class PolicyRefused(ValueError):
    """A section that is not a valid policy of its domain; the message names the field."""


def policy_domains() -> dict[str, Domain]:
    return {d.name: d for d in load_domains() if d.policy is not None}


def adopt_section(book: PolicyBook, scope: str, domain: Domain, changes: dict[str, Any], *,
                  actor: str) -> tuple[Envelope | None, dict[str, Any]]:
    """The adoption of `scope`'s policy with `changes` applied to one domain's section (the other fields and
    sections as in force there), and that section; PolicyRefused names a bad or unknown field."""
    assert domain.policy is not None
    sections = book.sections(scope)
    merged = {**sections.get(domain.name, {}), **changes}
    try:
        section = domain.policy.model.model_validate(merged).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise PolicyRefused(f"{domain.name}.{where}: {first['msg']}") from None
    return adoption(book, scope, {**sections, domain.name: section}, reason="command", actor=actor), section


def command_router() -> APIRouter:
    """PATCH /v1/policies/{domain} (service tokens)."""
    router = APIRouter(tags=["policies"], responses={401: {"description": "Missing or invalid bearer token"},
                                                     403: {"description": "Not a service token"}})

    @router.patch("/v1/policies/{domain}", response_model=PolicyChange, summary="Change the tenant's policy")
    async def change_policy(
        request: Request,
        caller: Operator,
        domain: Annotated[str, Path(description="The domain whose section changes.")],
        changes: Annotated[dict[str, Any], Body(description="Fields of the domain's section to change.")],
    ) -> PolicyChange:
        """Adopt the caller's tenant's policy with these fields of one domain's section changed (the rest as in
        force); events published from now on are stamped with it and decided under it. Unchanged: nothing is
        published."""
        known = policy_domains()
        if domain not in known:
            raise HTTPException(404, f"domain: {domain!r} has no policy; known: {sorted(known)}")
        publisher = request.app.state.publisher
        book = await publisher.policies.refresh()
        try:
            envelope, section = adopt_section(book, caller.tenant_id, known[domain], changes,
                                              actor=f"service:{caller.subject}")
        except PolicyRefused as exc:
            raise HTTPException(422, str(exc)) from None
        if envelope is not None:
            await publish(publisher, [envelope])
            await publisher.policies.refresh()
        return PolicyChange(scope=caller.tenant_id, domain=domain, adopted=envelope is not None,
                            policy=book.current.get(caller.tenant_id), previous=envelope.payload.previous  # type: ignore[attr-defined]
                            if envelope is not None else None, section=section)

    return router
