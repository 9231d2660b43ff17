"""Audit routes: history and past state from the event store itself, the tamper check, the access log.

Every audit read is recorded (who, what, when) before it is answered; admins read that log.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Callable, Iterable, Iterator, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import AfterValidator, BaseModel

from crm.api.auth import Principal
from crm.api.deps import caller, ensure_role
from crm.api.reads import only
from crm.api.routing import OneHopRoute
from crm.api.schemas import FIRST_INSTANT, LAST_INSTANT
from crm.infra import audit

router = APIRouter(prefix="/v1/audit", tags=["audit"], route_class=OneHopRoute)
NDJSON = "application/x-ndjson"
LINES_PER_CHUNK = 2_000


def audited(action: str) -> Callable[..., Principal]:
    """The caller may do `action`; the read is then written to the access log."""

    def check(request: Request, principal: Annotated[Principal, Depends(caller)]) -> Principal:
        ensure_role(principal, action)  # looked up per request, so the permission table is read as it stands
        audit.log_access(request.app.state.runtime.pool, actor=principal.actor, role=principal.role,
                         method=request.method, path=request.url.path, query=request.url.query)
        return principal

    return check


AuditReader = Annotated[Principal, Depends(audited("audit.read"))]
AuditAdmin = Annotated[Principal, Depends(audited("audit.admin"))]


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("as_of needs a UTC offset, e.g. 2024-05-01T12:00:00Z")
    return value


AsOf = Annotated[datetime, Query(description="an instant with a UTC offset, 1900 .. 2100", ge=FIRST_INSTANT,
                                 le=LAST_INSTANT), AfterValidator(_aware)]


class HistoryEvent(BaseModel):
    """One stored event as the audit shows it."""

    position: int
    aggregate_type: str
    aggregate_id: UUID
    version: int
    type: str
    occurred_at: datetime | None
    recorded_at: datetime
    data: dict[str, Any]
    hash: str | None  # null until the chainer has reached the event


class CustomerAsOf(BaseModel):
    """The customer as the system knew it at `as_of`, replayed from its events."""

    id: UUID
    as_of: datetime
    basis: Literal["recorded", "occurred"]
    version: int
    last_recorded_at: datetime
    profile: dict[str, Any]
    active: bool
    erased: bool
    tier: str | None
    computed_tier: str | None
    score: Decimal | None
    override: dict[str, Any] | None
    visits: list[dict[str, Any]]


class VerifyResult(BaseModel):
    """The tamper check: ok, events checked, the first position where the chain breaks."""

    ok: bool
    events_checked: int
    first_broken_position: int | None
    chained_position: int
    from_position: int
    problem: str | None


class AccessLogEntry(BaseModel):
    """One audit read: who, what, when."""

    id: int
    at: datetime
    actor: str
    role: str
    method: str
    path: str
    query: str


@router.get("/customers/{customer_id}/history", response_model=list[HistoryEvent],
            responses={200: {"content": {NDJSON: {"schema": {"type": "string"}}}}},
            dependencies=[Depends(only("format"))])
def customer_history(customer_id: UUID, request: Request, who: AuditReader,
                     format_: Annotated[Literal["json", "jsonl"] | None, Query(alias="format")] = None,
                     accept: Annotated[str | None, Header(max_length=1000)] = None) -> Response:
    """Every event of the customer, its orders and its complaints, in global order, with its chain hash.

    JSON Lines (streamed) with `Accept: application/x-ndjson` or `?format=jsonl`, else a JSON array."""
    runtime = request.app.state.runtime
    if not audit.customer_registered(runtime.store, runtime.pool, customer_id):
        raise HTTPException(404, f"no customer with id {customer_id}")
    entries = audit.history(runtime.store, runtime.pool, customer_id)
    if format_ == "jsonl" or (format_ is None and NDJSON in (accept or "")):
        return StreamingResponse(_chunks(entries), media_type=NDJSON)
    return Response(b"[" + b",".join(entries) + b"]", media_type="application/json")


def _chunks(entries: Iterable[bytes]) -> Iterator[bytes]:
    lines = []
    for entry in entries:
        lines.append(entry)
        if len(lines) == LINES_PER_CHUNK:
            yield b"\n".join(lines) + b"\n"
            lines = []
    if lines:
        yield b"\n".join(lines) + b"\n"


@router.get("/customers/{customer_id}/state", response_model=CustomerAsOf,
            dependencies=[Depends(only("as_of", "basis"))])
def customer_state(customer_id: UUID, as_of: AsOf, request: Request, who: AuditReader,
                   basis: Literal["recorded", "occurred"] = "recorded") -> CustomerAsOf:
    """The customer (tier included) as it stood at `as_of`, rebuilt from the event store.

    `basis=recorded` (default): events stored by then; `basis=occurred`: events whose business
    time is by then (back-dated imports included). 404 if the customer did not exist yet."""
    runtime = request.app.state.runtime
    customer = audit.customer_as_of(runtime.store, customer_id, as_of, basis)
    if customer is None:
        raise HTTPException(404, f"no customer with id {customer_id} as of {as_of.isoformat()}")
    return CustomerAsOf(
        id=customer.id, as_of=as_of, basis=basis, version=customer.version,
        last_recorded_at=customer.modified_on, profile=customer.profile, active=customer.active,
        erased=customer.erased, tier=customer.tier_at(as_of), computed_tier=customer.tier, score=customer.score,
        override=customer.override, visits=customer.visits)


@router.get("/verify", response_model=VerifyResult, dependencies=[Depends(only())])
def verify_chain(request: Request, who: AuditReader) -> VerifyResult:
    """Recompute the hash chain over the stored events and compare it with the recorded hashes."""
    runtime = request.app.state.runtime
    return VerifyResult(**audit.verify(runtime.store, runtime.pool).as_dict())


@router.get("/checkpoints/latest", dependencies=[Depends(only())],
            responses={404: {"description": "no checkpoint has been taken yet"}})
def latest_checkpoint(request: Request, who: AuditReader) -> dict[str, Any]:
    """The newest chain checkpoint (position and hash): keep it off this system, verify from it later."""
    document = audit.export_checkpoint(request.app.state.runtime.pool)
    if document is None:
        raise HTTPException(404, "no checkpoint yet: one is written every 1,000 chained events")
    return document


@router.get("/access-log", response_model=list[AccessLogEntry], dependencies=[Depends(only("limit"))])
def access_log(request: Request, who: AuditAdmin,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    """Who read what under /v1/audit, and when (admins only), newest first."""
    return audit.access_log(request.app.state.runtime.pool, limit)
