"""Managers' reports, each one set-based SQL over the read models (business time, UTC days)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Literal
from uuid import UUID

from pydantic import BaseModel

from crm.projections import ComplaintsProjection, CustomersProjection, SalesProjection
from crm.queries.base import ReadStore
from crm.queries.customers import EFFECTIVE_TIER, ComplaintBrief

C, S, K = CustomersProjection.schema, SalesProjection.schema, ComplaintsProjection.schema
TIERS = ("A", "B", "C", "D", "unrated")

# The tier a customer held at instant t: the latest override set by t and not yet expired at t,
# else the latest computed tier assigned by t, else 'unrated' (the same rule as Customer.tier_at).
TIER_AT = f"""coalesce(
    (SELECT CASE WHEN o.expires_on IS NULL OR o.expires_on > (%(t)s)::date THEN o.to_tier END
       FROM {C}.tier_history o WHERE o.customer_id = %(c)s AND o.kind = 'override' AND o.at <= %(t)s
       ORDER BY o.at DESC, o.event_id DESC LIMIT 1),
    (SELECT a.to_tier FROM {C}.tier_history a WHERE a.customer_id = %(c)s AND a.kind = 'assigned'
       AND a.at <= %(t)s ORDER BY a.at DESC, a.event_id DESC LIMIT 1),
    'unrated')"""


def tier_at_sql(customer_column: str, time_column: str) -> str:
    return TIER_AT.replace("%(t)s", time_column).replace("%(c)s", customer_column)


class Transition(BaseModel):
    from_tier: str
    to_tier: str
    count: int


class TierTransitions(BaseModel):
    """How many customers moved between each pair of tiers in the period (e.g. B to A)."""

    start: date
    end: date
    total: int
    transitions: list[Transition]


def tier_transitions(reads: ReadStore, start: datetime, end: datetime) -> TierTransitions:
    rows = reads.all(f"""SELECT coalesce(from_tier, 'unrated') AS from_tier, to_tier, count(*) AS count
        FROM {C}.tier_history WHERE at >= %(start)s AND at < %(end)s
          AND to_tier IS DISTINCT FROM from_tier
        GROUP BY 1, 2 ORDER BY 1, 2""", {"start": start, "end": end})
    items = [Transition(**r) for r in rows]
    return TierTransitions(start=start.date(), end=(end - timedelta(days=1)).date(),
                           total=sum(t.count for t in items), transitions=items)


class Amounts(BaseModel):
    revenue: Decimal
    cost: Decimal
    profit: Decimal


class TierProfit(BaseModel):
    tier: str
    this_year: Amounts
    last_year: Amounts
    profit_change: Decimal


class ProfitByTier(BaseModel):
    """Revenue, cost and profit per tier for a year and the year before (cancelled orders excluded)."""

    year: int
    basis: Literal["at_order", "current"]
    tiers: list[TierProfit]


def profit_by_tier(reads: ReadStore, year: int, basis: Literal["at_order", "current"], today: date) -> ProfitByTier:
    tier = (tier_at_sql("l.customer_id", "l.placed_at") if basis == "at_order"
            else f"coalesce((SELECT {EFFECTIVE_TIER} FROM {C}.customers c WHERE c.id = l.customer_id), 'unrated')")
    rows = reads.all(f"""SELECT {tier} AS tier, extract(year FROM l.placed_at AT TIME ZONE 'UTC')::int AS year,
            sum(l.revenue) AS revenue, sum(l.cost) AS cost, sum(l.revenue - l.cost) AS profit
        FROM {S}.order_lines l
        WHERE NOT l.cancelled AND l.placed_at >= %(start)s AND l.placed_at < %(end)s
        GROUP BY 1, 2""", {"start": datetime(year - 1, 1, 1, tzinfo=_utc()), "end": datetime(year + 1, 1, 1, tzinfo=_utc()),
                           "today": today})
    found = {(r["tier"], r["year"]): Amounts(revenue=r["revenue"], cost=r["cost"], profit=r["profit"]) for r in rows}
    zero = Amounts(revenue=Decimal(0), cost=Decimal(0), profit=Decimal(0))
    tiers = []
    for name in TIERS:
        now, before = found.get((name, year), zero), found.get((name, year - 1), zero)
        tiers.append(TierProfit(tier=name, this_year=now, last_year=before, profit_change=now.profit - before.profit))
    return ProfitByTier(year=year, basis=basis, tiers=tiers)


def _utc():  # type: ignore[no-untyped-def]
    from datetime import timezone

    return timezone.utc


class ProductProfit(BaseModel):
    """A product's profitability in the period; `loss` when it sold below its frozen standard cost."""

    sku: str
    name: str | None
    quantity: int
    revenue: Decimal
    cost: Decimal
    profit: Decimal
    margin: Decimal | None
    loss: bool


def product_profitability(reads: ReadStore, start: datetime, end: datetime, loss_only: bool) -> list[ProductProfit]:
    rows = reads.all(f"""SELECT l.sku, p.name, sum(l.quantity)::int AS quantity, sum(l.revenue) AS revenue,
            sum(l.cost) AS cost, sum(l.revenue - l.cost) AS profit,
            CASE WHEN sum(l.revenue) > 0 THEN round(sum(l.revenue - l.cost) / sum(l.revenue), 4) END AS margin,
            sum(l.revenue - l.cost) < 0 AS loss
        FROM {S}.order_lines l LEFT JOIN {S}.products p ON p.sku = l.sku
        WHERE NOT l.cancelled AND l.placed_at >= %(start)s AND l.placed_at < %(end)s
        GROUP BY l.sku, p.name
        HAVING NOT %(loss_only)s OR sum(l.revenue - l.cost) < 0
        ORDER BY profit, l.sku""", {"start": start, "end": end, "loss_only": loss_only})
    return [ProductProfit(**r) for r in rows]


class CustomerProfit(BaseModel):
    rank: int
    customer_id: UUID
    name: str | None
    revenue: Decimal
    cost: Decimal
    profit: Decimal
    share: Decimal | None


class CustomersByProfit(BaseModel):
    """Customers ranked by profit contribution; `share` of the period's total profit (null if ≤ 0)."""

    total_profit: Decimal
    customers: list[CustomerProfit]


def customers_by_profit(reads: ReadStore, start: datetime, end: datetime, limit: int) -> CustomersByProfit:
    rows = reads.all(f"""WITH per AS (
            SELECT customer_id, sum(revenue) AS revenue, sum(cost) AS cost, sum(revenue - cost) AS profit
            FROM {S}.order_lines WHERE NOT cancelled AND placed_at >= %(start)s AND placed_at < %(end)s
            GROUP BY customer_id),
        total AS (SELECT coalesce(sum(profit), 0) AS t FROM per)
        SELECT rank() OVER (ORDER BY per.profit DESC)::int AS rank, per.customer_id, c.name, per.revenue,
               per.cost, per.profit, CASE WHEN total.t > 0 THEN round(per.profit / total.t, 4) END AS share,
               total.t AS total
        FROM per CROSS JOIN total LEFT JOIN {C}.customers c ON c.id = per.customer_id
        ORDER BY per.profit DESC, per.customer_id LIMIT %(limit)s""", {"start": start, "end": end, "limit": limit})
    total = rows[0]["total"] if rows else Decimal(0)
    return CustomersByProfit(total_profit=total, customers=[CustomerProfit(**r) for r in rows])


class SlaGroup(BaseModel):
    """SLA figures for one tier or one assignee in the period."""

    group: str
    filed: int
    resolved: int
    resolved_on_time: int
    on_time_pct: Decimal | None
    breaches: int
    mean_hours_to_resolve: Decimal | None
    mean_rating: Decimal | None
    ratings: int


def sla_report(reads: ReadStore, start: datetime, end: datetime, group_by: Literal["tier", "assignee"]) -> list[SlaGroup]:
    """Filed (by filing time), resolved and on time (by resolution time, grouped by the assignee who
    held it then), breaches (by breach time) and ratings (by rating time), in [start, end)."""
    rows = reads.all(f"""WITH facts AS (
            SELECT tier, assignee, 1 AS filed, 0 AS resolved, 0 AS on_time, 0 AS breach, NULL::numeric AS hours,
                   NULL::numeric AS rating
              FROM {K}.complaints WHERE filed_at >= %(start)s AND filed_at < %(end)s
            UNION ALL
            SELECT tier, assignee, 0, 1, on_time::int, 0,
                   extract(epoch FROM resolved_at - clock_started_at) / 3600, NULL
              FROM {K}.resolutions WHERE resolved_at >= %(start)s AND resolved_at < %(end)s
            UNION ALL
            SELECT c.tier, c.assignee, 0, 0, 0, CASE WHEN s.type = 'SlaBreached' THEN 1 ELSE 0 END, NULL,
                   CASE WHEN s.type = 'Rated' THEN (s.details->>'score')::numeric END
              FROM {K}.complaint_steps s JOIN {K}.complaints c ON c.id = s.complaint_id
             WHERE s.type IN ('SlaBreached', 'Rated') AND s.occurred_at >= %(start)s AND s.occurred_at < %(end)s)
        SELECT CASE WHEN %(by)s = 'tier' THEN coalesce(tier, 'unrated') ELSE coalesce(assignee, 'unassigned') END
                 AS "group",
               sum(filed)::int AS filed, sum(resolved)::int AS resolved, sum(on_time)::int AS resolved_on_time,
               CASE WHEN sum(resolved) > 0 THEN round(100.0 * sum(on_time) / sum(resolved), 1) END AS on_time_pct,
               sum(breach)::int AS breaches, round(avg(hours), 2) AS mean_hours_to_resolve,
               round(avg(rating), 2) AS mean_rating, count(rating)::int AS ratings
        FROM facts GROUP BY 1 ORDER BY 1""", {"start": start, "end": end, "by": group_by})
    return [SlaGroup(**r) for r in rows]


class OrderDrop(BaseModel):
    """A customer whose ordered amount fell against the same window a year earlier."""

    customer_id: UUID
    name: str | None
    tier: str | None
    previous_amount: Decimal
    recent_amount: Decimal
    drop: Decimal
    complaints: list[ComplaintBrief]


class OrderDrops(BaseModel):
    """Recent window [recent_from, recent_to] against [previous_from, previous_to], a year earlier."""

    recent_from: date
    recent_to: date
    previous_from: date
    previous_to: date
    min_drop: Decimal
    customers: list[OrderDrop]


def year_earlier(day: date) -> date:
    """The same calendar day a year earlier (29 February becomes 28 February)."""
    try:
        return day.replace(year=day.year - 1)
    except ValueError:
        return day.replace(year=day.year - 1, day=28)


def order_drops(reads: ReadStore, today: date, window_days: int, min_drop: Decimal) -> OrderDrops:
    """The recent window is the last N days up to today; the previous one is the same calendar
    days a year earlier."""
    first_day = today - timedelta(days=window_days - 1)
    day_start = lambda d: datetime.combine(d, datetime.min.time(), _utc())  # noqa: E731
    recent_start, recent_end = day_start(first_day), day_start(today + timedelta(days=1))
    previous_start = day_start(year_earlier(first_day))
    previous_end = day_start(year_earlier(today) + timedelta(days=1))
    params = {"rs": recent_start, "re": recent_end, "ps": previous_start, "pe": previous_end, "min": min_drop,
              "today": today}
    rows = reads.all(f"""WITH amounts AS (
            SELECT customer_id,
                   coalesce(sum(revenue) FILTER (WHERE placed_at >= %(rs)s AND placed_at < %(re)s), 0) AS recent,
                   coalesce(sum(revenue) FILTER (WHERE placed_at >= %(ps)s AND placed_at < %(pe)s), 0) AS previous
            FROM {S}.orders WHERE status <> 'cancelled'
              AND ((placed_at >= %(rs)s AND placed_at < %(re)s) OR (placed_at >= %(ps)s AND placed_at < %(pe)s))
            GROUP BY customer_id)
        SELECT a.customer_id, c.name, {EFFECTIVE_TIER} AS tier, a.previous AS previous_amount,
               a.recent AS recent_amount, round((a.previous - a.recent) / a.previous, 4) AS drop
        FROM amounts a LEFT JOIN {C}.customers c ON c.id = a.customer_id
        WHERE a.previous > 0 AND (a.previous - a.recent) / a.previous >= %(min)s
        ORDER BY drop DESC, a.previous DESC""", params)
    complaints = _complaints_in(reads, [r["customer_id"] for r in rows], recent_start, recent_end)
    return OrderDrops(recent_from=recent_start.date(), recent_to=today, previous_from=previous_start.date(),
                      previous_to=(previous_end - timedelta(days=1)).date(), min_drop=min_drop,
                      customers=[OrderDrop(**r, complaints=complaints.get(r["customer_id"], [])) for r in rows])


def _complaints_in(reads: ReadStore, customers: list[UUID], start: datetime, end: datetime) -> dict[UUID, list[ComplaintBrief]]:
    if not customers:
        return {}
    rows = reads.all(f"""SELECT customer_id, id, category, status, tier, sku, filed_at, due_at, assignee
        FROM {K}.complaints WHERE customer_id = ANY(%(ids)s) AND filed_at >= %(start)s AND filed_at < %(end)s
        ORDER BY filed_at""", {"ids": customers, "start": start, "end": end})
    found: dict[UUID, list[ComplaintBrief]] = {}
    for row in rows:
        found.setdefault(row.pop("customer_id"), []).append(ComplaintBrief(**row))
    return found
