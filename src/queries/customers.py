"""Customer queries: the list, the 360 view, tier history, a customer's orders and complaints."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from pydantic import BaseModel

from crm.projections import ComplaintsProjection, CustomersProjection, SalesProjection
from crm.queries.base import CursorCodec, Page, ReadStore, page

C, S, K = CustomersProjection.schema, SalesProjection.schema, ComplaintsProjection.schema
EFFECTIVE_TIER = ("CASE WHEN c.override_tier IS NOT NULL AND (c.override_expires_on IS NULL "
                  "OR c.override_expires_on > %(today)s) THEN c.override_tier ELSE c.tier END")
OPEN_STATUSES = ("open", "in_progress", "awaiting_customer")


class CustomerSummary(BaseModel):
    """A customer in a list."""

    id: UUID
    name: str
    email: str | None
    region: str | None
    industry: str | None
    owner: str | None
    tier: str | None
    active: bool


def list_customers(reads: ReadStore, codec: CursorCodec, *, today: date, tier: str | None, q: str | None,
                   cursor: str | None, limit: int) -> Page[CustomerSummary]:
    """Customers by name; `tier` filters on the tier in force today ('unrated': none), `q` on the name."""
    after = codec.decode("customers", cursor) if cursor else None
    rows = reads.all(f"""SELECT * FROM (SELECT c.id, c.name, lower(c.name) AS sort_name, c.email, c.region,
            c.industry, c.owner, {EFFECTIVE_TIER} AS tier, c.active FROM {C}.customers c) c
        WHERE (%(tier)s::text IS NULL OR coalesce(c.tier, 'unrated') = %(tier)s)
          AND (%(q)s::text IS NULL OR c.sort_name LIKE '%%' || %(q)s || '%%')
          AND (%(after_name)s::text IS NULL OR (c.sort_name, c.id) > (%(after_name)s, %(after_id)s::uuid))
        ORDER BY c.sort_name, c.id LIMIT %(limit)s""",
                     {"today": today, "tier": tier, "q": _like(q), "limit": limit + 1,
                      "after_name": after[0] if after else None, "after_id": after[1] if after else None})
    rows, next_cursor = page(rows, limit, codec, "customers", ("sort_name", "id"))
    return Page[CustomerSummary](items=[CustomerSummary(**r) for r in rows], next_cursor=next_cursor)


def _like(q: str | None) -> str | None:
    """A case-insensitive substring, with LIKE's own wildcards taken literally."""
    if not q:
        return None
    return q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class Money(BaseModel):
    lifetime: Decimal
    this_year: Decimal


class ComplaintBrief(BaseModel):
    """A complaint in a list."""

    id: UUID
    category: str
    status: str
    tier: str | None
    sku: str | None
    filed_at: datetime
    due_at: datetime
    assignee: str | None


class SpecialDay(BaseModel):
    label: str
    date: date
    days_ahead: int


class Override(BaseModel):
    tier: str
    expires_on: date | None


class Customer360(BaseModel):
    """Everything about one customer on one page."""

    id: UUID
    version: int
    name: str
    email: str | None
    phone: str | None
    industry: str | None
    region: str | None
    owner: str | None
    birthday: date | None
    special_days: list[dict[str, Any]]
    active: bool
    erased: bool
    registered_at: datetime
    tier: str | None
    computed_tier: str | None
    score: Decimal | None
    override: Override | None
    revenue: Money
    profit: Money
    orders: int
    open_complaints: list[ComplaintBrief]
    last_visit: date | None
    visits_last_365_days: int
    next_special_day: SpecialDay | None


def customer_360(reads: ReadStore, customer_id: UUID, today: date) -> Customer360 | None:
    row = reads.one(f"""SELECT c.*, {EFFECTIVE_TIER} AS effective_tier FROM {C}.customers c WHERE c.id = %(id)s""",
                    {"id": customer_id, "today": today})
    if row is None:
        return None
    params = {"id": customer_id, "year_start": date(today.year, 1, 1), "since": today - timedelta(days=365)}
    money = reads.one(f"""SELECT coalesce(sum(revenue), 0) AS rl, coalesce(sum(revenue - cost), 0) AS pl,
            coalesce(sum(revenue) FILTER (WHERE placed_at >= %(year_start)s), 0) AS ry,
            coalesce(sum(revenue - cost) FILTER (WHERE placed_at >= %(year_start)s), 0) AS py,
            count(DISTINCT order_id) AS orders
        FROM {S}.order_lines WHERE customer_id = %(id)s AND NOT cancelled""", params)
    visits = reads.one(f"""SELECT max(visited_on) AS last, count(*) FILTER (WHERE visited_on > %(since)s) AS n
        FROM {C}.visits WHERE customer_id = %(id)s""", params)
    assert money is not None and visits is not None
    override = Override(tier=row["override_tier"], expires_on=row["override_expires_on"]) \
        if row["effective_tier"] == row["override_tier"] and row["override_tier"] else None
    return Customer360(
        **{k: row[k] for k in ("id", "version", "name", "email", "phone", "industry", "region", "owner",
                               "birthday", "special_days", "active", "erased", "registered_at", "score")},
        tier=row["effective_tier"], computed_tier=row["tier"], override=override,
        revenue=Money(lifetime=money["rl"], this_year=money["ry"]),
        profit=Money(lifetime=money["pl"], this_year=money["py"]), orders=money["orders"],
        open_complaints=customer_complaints_open(reads, customer_id), last_visit=visits["last"],
        visits_last_365_days=visits["n"], next_special_day=_next_special_day(reads, customer_id, today))


def customer_complaints_open(reads: ReadStore, customer_id: UUID) -> list[ComplaintBrief]:
    rows = reads.all(f"""SELECT id, category, status, tier, sku, filed_at, due_at, assignee FROM {K}.complaints
        WHERE customer_id = %(id)s AND status = ANY(%(open)s) ORDER BY due_at""",
                     {"id": customer_id, "open": list(OPEN_STATUSES)})
    return [ComplaintBrief(**r) for r in rows]


def _next_special_day(reads: ReadStore, customer_id: UUID, today: date) -> SpecialDay | None:
    from crm.queries.care import upcoming_days

    days = upcoming_days(reads, today, 366, customer_id=customer_id)
    return SpecialDay(label=days[0].label, date=days[0].date, days_ahead=days[0].days_ahead) if days else None


class TierChange(BaseModel):
    """One tier change: computed by a run (`assigned`) or set by hand (`override`)."""

    at: datetime
    recorded_at: datetime
    kind: str
    from_tier: str | None
    to_tier: str
    score: Decimal | None
    indicators: dict[str, Any] | None
    policy_version: int | None
    reason: str
    approved_by: str | None
    expires_on: date | None
    run_id: str | None


def tier_history(reads: ReadStore, customer_id: UUID) -> list[TierChange]:
    rows = reads.all(f"""SELECT * FROM {C}.tier_history WHERE customer_id = %(id)s ORDER BY at, event_id""",
                     {"id": customer_id})
    return [TierChange(**r) for r in rows]


def customer_exists(reads: ReadStore, customer_id: UUID) -> bool:
    return reads.one(f"SELECT 1 AS x FROM {C}.customers WHERE id = %(id)s", {"id": customer_id}) is not None


class OrderSummary(BaseModel):
    """An order in a list, with its forecast profit and payment state."""

    id: UUID
    version: int
    placed_at: datetime
    status: str
    currency: str
    revenue: Decimal
    forecast_profit: Decimal
    forecast_margin: Decimal | None
    line_count: int
    invoice_amount: Decimal | None
    paid: Decimal
    due_on: date | None


def customer_orders(reads: ReadStore, codec: CursorCodec, customer_id: UUID, *, cursor: str | None,
                    limit: int) -> Page[OrderSummary]:
    """The customer's orders, newest first."""
    after = codec.decode(f"orders:{customer_id}", cursor) if cursor else None
    rows = reads.all(f"""SELECT * FROM {S}.orders WHERE customer_id = %(id)s
          AND (%(at)s::timestamptz IS NULL OR (placed_at, id) < (%(at)s::timestamptz, %(after)s::uuid))
        ORDER BY placed_at DESC, id DESC LIMIT %(limit)s""",
                     {"id": customer_id, "limit": limit + 1, "at": after[0] if after else None,
                      "after": after[1] if after else None})
    rows, next_cursor = page(rows, limit, codec, f"orders:{customer_id}", ("placed_at", "id"))
    return Page[OrderSummary](items=[OrderSummary(**r) for r in rows], next_cursor=next_cursor)


def customer_complaints(reads: ReadStore, codec: CursorCodec, customer_id: UUID, *, cursor: str | None,
                        limit: int) -> Page[ComplaintBrief]:
    """The customer's complaints, newest first."""
    after = codec.decode(f"complaints:{customer_id}", cursor) if cursor else None
    rows = reads.all(f"""SELECT id, category, status, tier, sku, filed_at, due_at, assignee FROM {K}.complaints
        WHERE customer_id = %(id)s
          AND (%(at)s::timestamptz IS NULL OR (filed_at, id) < (%(at)s::timestamptz, %(after)s::uuid))
        ORDER BY filed_at DESC, id DESC LIMIT %(limit)s""",
                     {"id": customer_id, "limit": limit + 1, "at": after[0] if after else None,
                      "after": after[1] if after else None})
    rows, next_cursor = page(rows, limit, codec, f"complaints:{customer_id}", ("filed_at", "id"))
    return Page[ComplaintBrief](items=[ComplaintBrief(**r) for r in rows], next_cursor=next_cursor)
