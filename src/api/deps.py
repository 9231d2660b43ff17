"""What routes receive through Annotated aliases: the caller, If-Match, and the command runner."""

from __future__ import annotations

import re
from typing import Annotated, Awaitable, Callable

from fastapi import Depends, Header, HTTPException, Request, Response

from crm.api.auth import Principal
from crm.api.permissions import PERMISSIONS
from crm.commands.base import Command, Context, Written
from crm.commands.bus import dispatch
from crm.infra.unit_of_work import EventStoreUnitOfWork

_IF_MATCH = re.compile(r'^(?:W/)?"?(\d{1,18})"?$')


async def caller(request: Request) -> Principal:
    """The authenticated caller (the Authenticate middleware checked the key of every /v1 request)."""
    principal = getattr(request.state, "principal", None)
    if principal is None:  # a route outside /v1 asked for a caller: no key was checked
        raise HTTPException(401, "a valid API key is required (Authorization: Bearer <key>)",
                            headers={"WWW-Authenticate": "Bearer"})
    return principal


def ensure_role(principal: Principal, action: str) -> Principal:
    """403 unless the caller's role may do the action (PERMISSIONS, read as it stands)."""
    if principal.role not in PERMISSIONS[action]:
        raise HTTPException(403, f"role '{principal.role}' may not do {action}")
    return principal


def allowed(action: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller, if its role may do the action. Async, as it does no I/O: FastAPI
    would run a plain function in the thread pool, a hop that cost more than the check."""
    PERMISSIONS[action]  # an unknown action fails at import, not per request

    async def check(principal: Annotated[Principal, Depends(caller)]) -> Principal:
        return ensure_role(principal, action)

    return check


async def expected_version(if_match: Annotated[str | None, Header(alias="If-Match")] = None) -> int | None:
    """The version the client last saw (`If-Match: 3` or `"3"`); a mismatch is 409."""
    if if_match is None:
        return None
    found = _IF_MATCH.match(if_match.strip())
    if not found:
        raise HTTPException(400, "If-Match must be an aggregate version, e.g. If-Match: 3")
    return int(found.group(1))


IfMatch = Annotated[int | None, Depends(expected_version)]
CustomersWriter = Annotated[Principal, Depends(allowed("customers.write"))]
CustomersEraser = Annotated[Principal, Depends(allowed("customers.erase"))]
ProductsWriter = Annotated[Principal, Depends(allowed("products.write"))]
OrdersWriter = Annotated[Principal, Depends(allowed("orders.write"))]
ComplaintFiler = Annotated[Principal, Depends(allowed("complaints.file"))]
ComplaintRater = Annotated[Principal, Depends(allowed("complaints.rate"))]
ComplaintHandler = Annotated[Principal, Depends(allowed("complaints.handle"))]


def execute(request: Request, response: Response, command: Command, principal: Principal,
            version: int | None = None) -> Written:
    """Dispatch a command as this caller; the response carries the new version as ETag."""
    runtime = request.app.state.runtime
    uow = EventStoreUnitOfWork(runtime.store, runtime.settings.currency, request.app.state.clock,
                               runtime.policies, runtime.reads)
    ctx = Context(actor=principal.actor, expected_version=version, customer_scope=principal.customer_id)
    result = dispatch(command, uow, ctx)
    response.headers["ETag"] = f'"{result.version}"'
    return result
