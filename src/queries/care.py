"""Care: special days coming up (year-agnostic) and customers below their tier's visit quota."""

from __future__ import annotations

from datetime import date, timedelta
from uuid import UUID

from pydantic import BaseModel

from crm.aggregates.service_rules import DEFAULT_VISITS_PER_YEAR
from crm.projections import CustomersProjection
from crm.queries.customers import EFFECTIVE_TIER, UPCOMING_DAYS

C = CustomersProjection.schema


class UpcomingDay(BaseModel):
    """A birthday or special day within the window, on its next occurrence."""

    customer_id: UUID
    customer_name: str
    label: str
    date: date
    days_ahead: int


def upcoming_days(reads, today: date, days: int, customer_id: UUID | None = None) -> list[UpcomingDay]:  # type: ignore[no-untyped-def]
    """Days in [today, today + days], each on its next occurrence only; 29 February is kept on
    28 February in other years."""
    rows = reads.all(UPCOMING_DAYS, {"today": today, "days": days, "customer": customer_id})
    return [UpcomingDay(**r) for r in rows]


class VisitDue(BaseModel):
    """A customer with fewer visits in the last 365 days than its tier's service rule asks."""

    customer_id: UUID
    customer_name: str
    tier: str
    visits_per_year: int
    visits_last_365_days: int
    visits_missing: int
    last_visit: date | None


def visits_due(reads, today: date, visits_per_year: dict[str, int] | None = None) -> list[VisitDue]:  # type: ignore[no-untyped-def]
    quota = visits_per_year or dict(DEFAULT_VISITS_PER_YEAR)
    rows = reads.all(f"""WITH c AS (SELECT c.id, c.name, {EFFECTIVE_TIER} AS tier FROM {C}.customers c WHERE c.active),
        q AS (SELECT key AS tier, value::int AS quota FROM jsonb_each_text(%(quota)s::jsonb)),
        v AS (SELECT customer_id, count(*) FILTER (WHERE visited_on > %(since)s) AS n, max(visited_on) AS last
              FROM {C}.visits GROUP BY customer_id)
        SELECT c.id AS customer_id, c.name AS customer_name, c.tier, q.quota AS visits_per_year,
               coalesce(v.n, 0) AS visits_last_365_days, q.quota - coalesce(v.n, 0) AS visits_missing,
               v.last AS last_visit
        FROM c JOIN q ON q.tier = c.tier LEFT JOIN v ON v.customer_id = c.id
        WHERE coalesce(v.n, 0) < q.quota ORDER BY c.tier, q.quota - coalesce(v.n, 0) DESC, c.name""",
                     {"today": today, "since": today - timedelta(days=365), "quota": _json(quota)})
    return [VisitDue(**r) for r in rows]


def _json(value: dict[str, int]) -> str:
    import json

    return json.dumps(value)
