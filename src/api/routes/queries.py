"""Query routes for customers and complaints (read models only, never the event store)."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from crm.api.auth import Principal
from crm.api.deps import allowed
from crm.api.reads import Codec, Cursor, FilteredCursors, Limit, Reads, Today, ensure_own, only, read_your_writes
from crm.api.routing import LookupRoute
from crm.api.schemas import Printable
from crm.queries import complaints as k
from crm.queries import customers as c
from crm.queries.base import Page

router = APIRouter(prefix="/v1", tags=["queries"], dependencies=[Depends(read_your_writes)],
                   route_class=LookupRoute)
CustomerReader = Annotated[Principal, Depends(allowed("customers.read"))]
ComplaintReader = Annotated[Principal, Depends(allowed("complaints.read"))]
OwnReader = Annotated[Principal, Depends(allowed("own.read"))]
TierFilter = Annotated[str | None, Query(pattern="^(A|B|C|D|unrated)$")]


@router.get("/customers", response_model=Page[c.CustomerSummary],
            dependencies=[Depends(only("tier", "q", "cursor", "limit"))])
def list_customers(reads: Reads, codec: Codec, today: Today, who: CustomerReader, limit: Limit,
                   tier: TierFilter = None, q: Annotated[str | None, Query(max_length=200), Printable] = None,
                   cursor: Cursor = None) -> Page[c.CustomerSummary]:
    """Customers by name; filter by the tier in force today and by a piece of the name."""
    return c.list_customers(reads, FilteredCursors(codec, tier=tier, q=q), today=today, tier=tier, q=q,
                            cursor=cursor, limit=limit)


@router.get("/customers/{customer_id}", response_model=c.Customer360, dependencies=[Depends(only())])
def customer_360(customer_id: UUID, reads: Reads, today: Today, who: CustomerReader) -> c.Customer360:
    """The 360 view: profile, tier and score, revenue and profit, open complaints, visits, next special day."""
    found = c.customer_360(reads, customer_id, today)
    if found is None:
        raise HTTPException(404, f"no customer with id {customer_id}")
    return found


@router.get("/customers/{customer_id}/tier-history", response_model=list[c.TierChange],
            dependencies=[Depends(only())])
def tier_history(customer_id: UUID, reads: Reads, who: CustomerReader) -> list[c.TierChange]:
    """Every tier change: from, to, score, indicators, policy version, reason, when."""
    _exists(reads, customer_id)
    return c.tier_history(reads, customer_id)


@router.get("/customers/{customer_id}/orders", response_model=Page[c.OrderSummary],
            dependencies=[Depends(only("cursor", "limit"))])
def customer_orders(customer_id: UUID, reads: Reads, codec: Codec, who: OwnReader, limit: Limit,
                    cursor: Cursor = None) -> Page[c.OrderSummary]:
    """The customer's orders, newest first (a customer key: its own only)."""
    ensure_own(who, customer_id)
    _exists(reads, customer_id)
    return c.customer_orders(reads, codec, customer_id, cursor=cursor, limit=limit)


@router.get("/customers/{customer_id}/complaints", response_model=Page[c.ComplaintBrief],
            dependencies=[Depends(only("cursor", "limit"))])
def customer_complaints(customer_id: UUID, reads: Reads, codec: Codec, who: OwnReader, limit: Limit,
                        cursor: Cursor = None) -> Page[c.ComplaintBrief]:
    """The customer's complaints, newest first (a customer key: its own only)."""
    ensure_own(who, customer_id)
    _exists(reads, customer_id)
    return c.customer_complaints(reads, codec, customer_id, cursor=cursor, limit=limit)


@router.get("/complaints", response_model=Page[c.ComplaintBrief],
            dependencies=[Depends(only("status", "tier", "assignee", "order", "cursor", "limit"))])
def complaint_queue(reads: Reads, codec: Codec, who: ComplaintReader, limit: Limit,
                    status: Annotated[str | None, Query(pattern="^(open|in_progress|awaiting_customer|resolved|confirmed|closed)$")] = None,
                    tier: TierFilter = None, assignee: Annotated[str | None, Query(max_length=200), Printable] = None,
                    order: Literal["priority", "filed"] = "priority", cursor: Cursor = None) -> Page[c.ComplaintBrief]:
    """The complaint queue; `order=priority`: tier A first, then the earliest due."""
    cursors = FilteredCursors(codec, status=status, tier=tier, assignee=assignee)
    return k.complaint_queue(reads, cursors, status=status, tier=tier, assignee=assignee, order=order,
                             cursor=cursor, limit=limit)


@router.get("/complaints/{complaint_id}", response_model=k.ComplaintDetail, dependencies=[Depends(only())])
def complaint_detail(complaint_id: UUID, request: Request, reads: Reads, who: OwnReader) -> k.ComplaintDetail:
    """A complaint's state and timeline: every step with actor and time, and its SLA marks."""
    found = k.complaint_detail(reads, complaint_id, request.app.state.clock())
    if found is None:
        raise HTTPException(404, f"no complaint with id {complaint_id}")
    if who.role not in ("admin", "agent", "sales", "auditor"):
        ensure_own(who, found.customer_id)
    return found


def _exists(reads: Reads, customer_id: UUID) -> None:
    if not c.customer_exists(reads, customer_id):
        raise HTTPException(404, f"no customer with id {customer_id}")
