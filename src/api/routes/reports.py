"""Report and care routes: managers' questions answered in one call."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from crm.api.auth import Principal
from crm.api.deps import allowed
from crm.api.reads import Reads, Today, only, read_your_writes
from crm.api.routing import OneHopRoute
from crm.api.schemas import FIRST_DAY, LAST_DAY, MAX_PAGE_REQUEST
from crm.queries import care, reports
from crm.queries.base import period

router = APIRouter(prefix="/v1", tags=["reports"], dependencies=[Depends(read_your_writes)],
                   route_class=OneHopRoute)
Reader = Annotated[Principal, Depends(allowed("reports.read"))]
From = Annotated[date | None, Query(alias="from", ge=FIRST_DAY, le=LAST_DAY,
                                    description="first day (UTC), default 1 January; 1900-01-01 .. 2100-12-31")]
To = Annotated[date | None, Query(alias="to", ge=FIRST_DAY, le=LAST_DAY,
                                  description="last day (UTC, inclusive), default today; 1900-01-01 .. 2100-12-31")]


def _period(start: date | None, end: date | None, today: date):  # type: ignore[no-untyped-def]
    try:
        return period(start, end, today)
    except ValueError as error:
        raise HTTPException(422, str(error)) from error


@router.get("/reports/tier-transitions", response_model=reports.TierTransitions,
            dependencies=[Depends(only("from", "to"))])
def tier_transitions(reads: Reads, today: Today, who: Reader, start: From = None, end: To = None) -> reports.TierTransitions:
    """How many customers moved between each pair of tiers in the period (e.g. how many B rose to A)."""
    return reports.tier_transitions(reads, *_period(start, end, today))


@router.get("/reports/profit-by-tier", response_model=reports.ProfitByTier,
            dependencies=[Depends(only("year", "basis"))])
def profit_by_tier(reads: Reads, today: Today, who: Reader,
                   year: Annotated[int | None, Query(ge=FIRST_DAY.year, le=LAST_DAY.year)] = None,
                   basis: Literal["at_order", "current"] = "at_order") -> reports.ProfitByTier:
    """Revenue, cost, profit per tier for the year and the year before; an order counts under the tier
    its customer held when it was placed (`basis=current`: today's tier)."""
    return reports.profit_by_tier(reads, year or today.year, basis, today)


@router.get("/reports/products", response_model=list[reports.ProductProfit],
            dependencies=[Depends(only("from", "to", "loss_only"))])
def products(reads: Reads, today: Today, who: Reader, start: From = None, end: To = None,
             loss_only: bool = False) -> list[reports.ProductProfit]:
    """Product profitability in the period, worst first; `loss: true` where profit < 0."""
    return reports.product_profitability(reads, *_period(start, end, today), loss_only)


@router.get("/reports/customers/profit", response_model=reports.CustomersByProfit,
            dependencies=[Depends(only("from", "to", "limit"))])
def customers_profit(reads: Reads, today: Today, who: Reader, start: From = None, end: To = None,
                     limit: Annotated[int, Query(ge=1, le=MAX_PAGE_REQUEST, description="capped at 500")] = 100
                     ) -> reports.CustomersByProfit:
    """Customers ranked by profit contribution, with their share of the total."""
    return reports.customers_by_profit(reads, *_period(start, end, today), min(limit, 500))


@router.get("/reports/sla", response_model=list[reports.SlaGroup],
            dependencies=[Depends(only("from", "to", "group_by"))])
def sla(reads: Reads, today: Today, who: Reader, start: From = None, end: To = None,
        group_by: Literal["tier", "assignee"] = "tier") -> list[reports.SlaGroup]:
    """Filed, resolved, on time %, breaches, mean time to resolve, mean rating, per tier or assignee."""
    return reports.sla_report(reads, *_period(start, end, today), group_by)


@router.get("/reports/order-drops", response_model=reports.OrderDrops,
            dependencies=[Depends(only("window_days", "min_drop"))])
def order_drops(reads: Reads, today: Today, who: Reader,
                window_days: Annotated[int, Query(ge=1, le=365)] = 90,
                min_drop: Annotated[Decimal, Query(gt=0, le=1, max_digits=5, decimal_places=4)] = Decimal("0.3")
                ) -> reports.OrderDrops:
    """Customers whose ordered amount in the last N days fell by at least `min_drop` against the same
    N days a year earlier, with the complaints they filed in the recent window."""
    return reports.order_drops(reads, today, window_days, min_drop)


@router.get("/care/upcoming", response_model=list[care.UpcomingDay], dependencies=[Depends(only("days"))])
def upcoming(reads: Reads, today: Today, who: Reader,
             days: Annotated[int, Query(ge=0, le=366)] = 30) -> list[care.UpcomingDay]:
    """Birthdays and special days in the next N days (year-agnostic)."""
    return care.upcoming_days(reads, today, days)


@router.get("/care/visits-due", response_model=list[care.VisitDue], dependencies=[Depends(only())])
def visits_due(request: Request, reads: Reads, today: Today, who: Reader) -> list[care.VisitDue]:
    """Active customers with fewer visits in the last 365 days than their tier's visits per year
    (the service rule of the tiering policy in force)."""
    from crm.api.routes.tiering import current_policy

    return care.visits_due(reads, today, dict(current_policy(request).visits_per_year))
