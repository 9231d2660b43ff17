"""The managers' reports and care lists on crafted data, each on its own new database, with exact numbers.

Every test starts a whole crm on a fresh database (`fresh_system`) whose API clock is controlled here,
so "today", the default period and the business time of every step are known to the second. Data goes
in through the write API; tier history from tiering runs and SLA breaches (no API yet) through the
domain and the event store. Reads wait for the last write with `X-Min-Position`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from crm.aggregates.complaint import Complaint
from crm.aggregates.customer import Customer
from crm.infra.unit_of_work import EventStoreUnitOfWork
from tests.conftest import Clock

PROBLEM = "application/problem+json"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=timezone.utc)


def iso(*parts: int) -> str:
    return utc(*parts).isoformat()




class Crm:
    """A whole crm on its own database, written through the API (and the domain where there is no API)."""

    def __init__(self, fresh_system: Any, now: datetime) -> None:
        self.clock = Clock(now)
        self.rt, self.api = fresh_system(clock=self.clock)
        self.position = 0

    # writes -----------------------------------------------------------------------------------------
    def _written(self, response: Any, status: int) -> dict:
        assert response.status_code == status, response.text
        body = response.json()
        self.position = max(self.position, body["position"])
        return body

    def post(self, path: str, body: dict | None = None, status: int = 201) -> dict:
        return self._written(self.api.post(path, json=body), status)

    def product(self, sku: str, cost: str, price: str = "10.00", name: str | None = None) -> str:
        self.post("/v1/products", {"sku": sku, "name": name or f"Product {sku}", "standard_cost": cost,
                                   "list_price": price})
        return sku

    def change_cost(self, sku: str, cost: str, effective_from: str) -> None:
        self._written(self.api.put(f"/v1/products/{sku}/standard-cost",
                                   json={"standard_cost": cost, "effective_from": effective_from}), 200)

    def customer(self, name: str, **profile: Any) -> str:
        return self.post("/v1/customers", {"name": name, **profile})["id"]

    def order(self, customer: str, sku: str, quantity: int, unit_price: str, placed_at: str) -> str:
        return self.post("/v1/orders", {"customer_id": customer, "placed_at": placed_at, "lines": [
            {"sku": sku, "quantity": quantity, "unit_price": unit_price}]})["id"]

    def cancel(self, order: str) -> None:
        self.post(f"/v1/orders/{order}/cancel", {"reason": "customer changed their mind"}, status=200)

    def complaint(self, customer: str, filed_at: str | None = None, category: str = "delivery") -> dict:
        body = {"customer_id": customer, "category": category, "description": "something went wrong"}
        if filed_at:
            body["filed_at"] = filed_at
        return self.post("/v1/complaints", body)

    def step(self, complaint: str, step: str, **body: Any) -> None:
        self.post(f"/v1/complaints/{complaint}/{step}", body, status=200)

    def visit(self, customer: str, visited_on: str) -> None:
        self.post(f"/v1/customers/{customer}/visits", {"visited_on": visited_on, "by": "sam"})

    def override(self, customer: str, tier: str, expires_on: str | None = None) -> None:
        self.post(f"/v1/customers/{customer}/tier-override",
                  {"tier": tier, "reason": "key account", "approved_by": "head of sales", "expires_on": expires_on})

    def assign_tier(self, customer: str, tier: str, at: datetime, score: str = "65") -> None:
        """A tiering run's TierAssigned (no API yet), back-dated to `at`."""
        uow = EventStoreUnitOfWork(self.rt.store, "EUR")
        found = uow.get(Customer, UUID(customer))
        found.assign_tier(tier=tier, score=Decimal(score), indicators={}, policy_version=1, reason="run",
                          run_id="r1", occurred_at=at, actor="test")
        self.position = max(self.position, uow.save(found))

    def breach(self, complaint: str, at: datetime) -> None:
        """What the SLA saga records when the due time passes unresolved."""
        uow = EventStoreUnitOfWork(self.rt.store, "EUR")
        found = uow.get(Complaint, UUID(complaint))
        found.record_sla_breach(occurred_at=at, actor="saga")
        self.position = max(self.position, uow.save(found))

    # reads ------------------------------------------------------------------------------------------
    def get(self, path: str, **params: Any) -> Any:
        return self.api.get(path, params=params, headers={"X-Min-Position": str(self.position)})

    def read(self, path: str, **params: Any) -> Any:
        response = self.get(path, **params)
        assert response.status_code == 200, response.text
        return response.json()


def amounts(found: dict) -> tuple[Decimal, Decimal, Decimal]:
    return Decimal(found["revenue"]), Decimal(found["cost"]), Decimal(found["profit"])


def money(*values: str) -> tuple[Decimal, ...]:
    return tuple(Decimal(v) for v in values)


NONE = money("0", "0", "0")


# --- profit by tier ------------------------------------------------------------------------------------


@pytest.fixture
def tiered_sales(fresh_system: Any) -> Crm:
    """Alice: unrated, then B from 2024-06-01, then A from 2025-03-01; Bob: never rated; Dave: C from
    2024-01-01, D from 2025-01-15. One product at a standard cost of 6.00; today is 2025-06-15."""
    crm = Crm(fresh_system, utc(2025, 6, 15, 12))
    sku = crm.product("WID-1", "6.00")
    alice, bob, dave = crm.customer("Alice"), crm.customer("Bob"), crm.customer("Dave")
    crm.assign_tier(alice, "B", utc(2024, 6, 1))
    crm.assign_tier(alice, "A", utc(2025, 3, 1))
    crm.assign_tier(dave, "C", utc(2024, 1, 1))
    crm.assign_tier(dave, "D", utc(2025, 1, 15))
    crm.order(alice, sku, 1, "10.00", iso(2024, 3, 1, 10))        # unrated, 2024: 10 - 6 = 4
    crm.order(alice, sku, 2, "11.00", "2024-12-31T23:30:00+00:00")  # B, 2024: 22 - 12 = 10
    crm.order(alice, sku, 3, "12.00", "2025-01-01T00:30:00+00:00")  # B, 2025: 36 - 18 = 18
    crm.order(alice, sku, 5, "9.00", iso(2025, 4, 1, 9))          # A, 2025: 45 - 30 = 15
    crm.cancel(crm.order(alice, sku, 100, "10.00", iso(2025, 5, 1)))  # cancelled: never counts
    crm.order(bob, sku, 4, "7.00", iso(2025, 2, 1))               # unrated, 2025: 28 - 24 = 4
    crm.order(bob, sku, 1, "50.00", "2023-12-31T23:59:00+00:00")  # 2023: outside both years
    # An offset across the boundary: 00:30 on 1 January in Berlin is 23:30 on 31 December in UTC.
    crm.order(dave, sku, 2, "8.00", "2025-01-01T00:30:00+01:00")  # C, 2024: 16 - 12 = 4
    return crm


def by_tier(report: dict) -> dict[str, dict]:
    return {row["tier"]: row for row in report["tiers"]}


def test_profit_by_tier_counts_each_order_under_the_tier_held_when_it_was_placed(tiered_sales: Crm) -> None:
    report = tiered_sales.read("/v1/reports/profit-by-tier", year=2025)
    assert report["year"] == 2025 and report["basis"] == "at_order"
    assert [row["tier"] for row in report["tiers"]] == ["A", "B", "C", "D", "unrated"]
    tiers = by_tier(report)
    expected = {  # tier: (this year, last year, profit change)
        "A": (money("45.00", "30.00", "15.00"), NONE, Decimal("15.00")),
        "B": (money("36.00", "18.00", "18.00"), money("22.00", "12.00", "10.00"), Decimal("8.00")),
        "C": (NONE, money("16.00", "12.00", "4.00"), Decimal("-4.00")),
        "D": (NONE, NONE, Decimal("0")),
        "unrated": (money("28.00", "24.00", "4.00"), money("10.00", "6.00", "4.00"), Decimal("0")),
    }
    for tier, (this_year, last_year, change) in expected.items():
        row = tiers[tier]
        assert amounts(row["this_year"]) == this_year, tier
        assert amounts(row["last_year"]) == last_year, tier
        assert Decimal(row["profit_change"]) == change, tier


def test_profit_by_tier_puts_the_year_boundary_at_utc_midnight(tiered_sales: Crm) -> None:
    tiers = by_tier(tiered_sales.read("/v1/reports/profit-by-tier", year=2024))
    # 2024-12-31T23:30Z (B) and Dave's 2025-01-01T00:30+01:00 (C) are 2024; 2025-01-01T00:30Z is not.
    assert amounts(tiers["B"]["this_year"]) == money("22.00", "12.00", "10.00")
    assert amounts(tiers["C"]["this_year"]) == money("16.00", "12.00", "4.00")
    assert amounts(tiers["unrated"]["this_year"]) == money("10.00", "6.00", "4.00")
    # 2023 holds only Bob's order of 31 December 2023, unrated.
    assert amounts(tiers["unrated"]["last_year"]) == money("50.00", "6.00", "44.00")
    assert all(amounts(tiers[t]["last_year"]) == NONE for t in "ABCD")


def test_profit_by_tier_defaults_to_the_year_of_today(tiered_sales: Crm) -> None:
    report = tiered_sales.read("/v1/reports/profit-by-tier")
    assert report["year"] == 2025
    assert amounts(by_tier(report)["A"]["this_year"]) == money("45.00", "30.00", "15.00")


def test_profit_by_tier_on_basis_current_groups_every_order_under_todays_tier(tiered_sales: Crm) -> None:
    report = tiered_sales.read("/v1/reports/profit-by-tier", year=2025, basis="current")
    assert report["basis"] == "current"
    tiers = by_tier(report)
    # Alice is A today: all her orders; Dave is D today; Bob is still unrated.
    assert amounts(tiers["A"]["this_year"]) == money("81.00", "48.00", "33.00")
    assert amounts(tiers["A"]["last_year"]) == money("32.00", "18.00", "14.00")
    assert Decimal(tiers["A"]["profit_change"]) == Decimal("19.00")
    assert amounts(tiers["B"]["this_year"]) == NONE and amounts(tiers["B"]["last_year"]) == NONE
    assert amounts(tiers["C"]["this_year"]) == NONE and amounts(tiers["C"]["last_year"]) == NONE
    assert amounts(tiers["D"]["this_year"]) == NONE
    assert amounts(tiers["D"]["last_year"]) == money("16.00", "12.00", "4.00")
    assert amounts(tiers["unrated"]["this_year"]) == money("28.00", "24.00", "4.00")
    assert amounts(tiers["unrated"]["last_year"]) == NONE


def test_profit_by_tier_honours_an_override_until_it_expires(fresh_system: Any) -> None:
    crm = Crm(fresh_system, utc(2024, 12, 1, 9))
    sku = crm.product("OVR-1", "1.00")
    eve = crm.customer("Eve")
    crm.assign_tier(eve, "C", utc(2024, 1, 1))
    crm.override(eve, "A", expires_on="2025-01-01")  # set 2024-12-01, in force through 31 December
    crm.clock.set(2025, 6, 15, 12)
    crm.order(eve, sku, 1, "3.00", "2024-12-31T23:30:00+00:00")  # A (override in force): 3 - 1 = 2
    crm.order(eve, sku, 1, "5.00", "2025-01-01T00:30:00+00:00")  # C (override expired): 5 - 1 = 4
    crm.order(eve, sku, 1, "2.00", "2024-11-30T12:00:00+00:00")  # C (before the override): 2 - 1 = 1
    tiers = by_tier(crm.read("/v1/reports/profit-by-tier", year=2025))
    assert amounts(tiers["A"]["last_year"]) == money("3.00", "1.00", "2.00")
    assert amounts(tiers["A"]["this_year"]) == NONE
    assert amounts(tiers["C"]["this_year"]) == money("5.00", "1.00", "4.00")
    assert amounts(tiers["C"]["last_year"]) == money("2.00", "1.00", "1.00")


# --- products ------------------------------------------------------------------------------------------


@pytest.fixture
def product_sales(fresh_system: Any) -> Crm:
    """Today 2025-06-15. WID costs 4.00, then 5.00 from 1 March (announced after two 2025 orders);
    LOSS sells below its cost; EVEN sells at its cost."""
    crm = Crm(fresh_system, utc(2025, 6, 15, 12))
    buyer = crm.customer("Buyer")
    crm.product("WID", "4.00", "6.00", name="Widget")
    crm.product("LOSS", "10.00", "12.00", name="Loss leader")
    crm.product("EVEN", "5.00", "5.00", name="Break-even")
    crm.order(buyer, "WID", 1, "6.00", "2024-12-31T23:30:00+00:00")   # before the period
    crm.order(buyer, "WID", 10, "6.00", "2025-01-01T00:30:00+00:00")  # 60.00 at 4.00 -> 40.00
    crm.order(buyer, "WID", 5, "6.00", iso(2025, 3, 20, 10))          # 30.00 at 4.00 (frozen) -> 20.00
    crm.change_cost("WID", "5.00", "2025-03-01")                       # announced after those orders
    crm.order(buyer, "WID", 4, "6.50", iso(2025, 4, 10, 10))          # 26.00 at 5.00 -> 20.00
    crm.order(buyer, "LOSS", 3, "9.00", iso(2025, 5, 5, 10))          # 27.00 at 10.00 -> 30.00
    crm.cancel(crm.order(buyer, "LOSS", 100, "1.00", iso(2025, 5, 6)))  # cancelled: not counted
    crm.order(buyer, "EVEN", 2, "5.00", iso(2025, 2, 2))              # 10.00 at 5.00 -> 10.00
    return crm


def test_products_report_keeps_the_cost_each_order_froze_when_the_standard_cost_changed(product_sales: Crm) -> None:
    rows = product_sales.read("/v1/reports/products")
    assert [row["sku"] for row in rows] == ["LOSS", "EVEN", "WID"]  # worst first
    widget = rows[2]
    assert widget["name"] == "Widget" and widget["quantity"] == 19
    assert amounts(widget) == money("116.00", "80.00", "36.00")
    assert widget["margin"] == "0.3103" and widget["loss"] is False


def test_products_report_flags_a_product_sold_below_cost_and_not_one_at_break_even(product_sales: Crm) -> None:
    loss, even = product_sales.read("/v1/reports/products")[:2]
    assert loss["quantity"] == 3 and amounts(loss) == money("27.00", "30.00", "-3.00")
    assert loss["margin"] == "-0.1111" and loss["loss"] is True
    assert amounts(even) == money("10.00", "10.00", "0.00")
    assert even["margin"] == "0.0000" and even["loss"] is False


def test_products_report_with_loss_only_returns_only_the_loss_making_product(product_sales: Crm) -> None:
    rows = product_sales.read("/v1/reports/products", loss_only="true")
    assert [(row["sku"], row["loss"], row["profit"]) for row in rows] == [("LOSS", True, "-3.00")]


def test_products_report_period_is_whole_utc_days_both_inclusive(product_sales: Crm) -> None:
    rows = product_sales.read("/v1/reports/products", **{"from": "2024-12-31", "to": "2025-03-20"})
    widget = next(row for row in rows if row["sku"] == "WID")
    # 31 December 2024 (1 x 6.00 at 4.00), 1 January and 20 March; the 4.00 cost everywhere.
    assert widget["quantity"] == 16
    assert amounts(widget) == money("96.00", "64.00", "32.00")
    assert widget["margin"] == "0.3333"
    assert [row["sku"] for row in rows] == ["EVEN", "WID"]


# --- customers by profit ------------------------------------------------------------------------------


def test_customers_profit_ranks_customers_with_their_exact_share_of_the_total(fresh_system: Any) -> None:
    crm = Crm(fresh_system, utc(2025, 6, 15, 12))
    sku = crm.product("CP-1", "2.00")
    xena, yann, zoe = crm.customer("Xena"), crm.customer("Yann"), crm.customer("Zoe")
    crm.order(yann, sku, 5, "3.50", iso(2025, 3, 1))               # 17.50 - 10.00 = 7.50
    crm.order(yann, sku, 100, "5.00", "2024-12-31T23:30:00+00:00")  # last year: outside the period
    crm.order(zoe, sku, 1, "4.50", iso(2025, 4, 1))                # 4.50 - 2.00 = 2.50
    crm.cancel(crm.order(zoe, sku, 50, "10.00", iso(2025, 4, 2)))   # cancelled
    crm.order(xena, sku, 10, "5.00", iso(2025, 5, 1))              # 50.00 - 20.00 = 30.00
    report = crm.read("/v1/reports/customers/profit")
    assert Decimal(report["total_profit"]) == Decimal("40.00")
    rows = [(r["rank"], r["customer_id"], r["name"], *amounts(r), r["share"]) for r in report["customers"]]
    assert rows == [
        (1, xena, "Xena", *money("50.00", "20.00", "30.00"), "0.7500"),
        (2, yann, "Yann", *money("17.50", "10.00", "7.50"), "0.1875"),
        (3, zoe, "Zoe", *money("4.50", "2.00", "2.50"), "0.0625"),
    ]
    top = crm.read("/v1/reports/customers/profit", limit=1)
    assert Decimal(top["total_profit"]) == Decimal("40.00")
    assert [(r["name"], r["share"]) for r in top["customers"]] == [("Xena", "0.7500")]
    last_year = crm.read("/v1/reports/customers/profit", **{"from": "2024-01-01", "to": "2024-12-31"})
    assert [(r["name"], r["profit"], r["share"]) for r in last_year["customers"]] == [("Yann", "300.00", "1.0000")]


# --- order drops ---------------------------------------------------------------------------------------


def test_order_drops_lists_customers_down_at_least_min_drop_with_their_recent_complaints(fresh_system: Any) -> None:
    crm = Crm(fresh_system, utc(2025, 6, 15, 12))
    sku = crm.product("OD-1", "1.00")
    faller, exact, slight, newcomer = (crm.customer(n) for n in ("Faller", "Exact", "Slight", "Newcomer"))
    crm.assign_tier(faller, "B", utc(2024, 1, 1))
    # Windows for 30 days up to 2025-06-15: recent [2025-05-17, 2025-06-15], previous [2024-05-17, 2024-06-15].
    crm.order(faller, sku, 1, "200.00", iso(2024, 5, 20))
    crm.order(faller, sku, 1, "50.00", "2024-06-15T23:00:00+00:00")     # last day of the previous window
    crm.order(faller, sku, 1, "1000.00", "2024-05-16T23:59:00+00:00")   # the day before it: not counted
    crm.cancel(crm.order(faller, sku, 1, "500.00", iso(2024, 6, 1)))     # cancelled: not counted
    crm.order(faller, sku, 1, "100.00", iso(2025, 5, 20))
    in_window = crm.complaint(faller, filed_at=iso(2025, 6, 1, 9), category="quality")
    crm.complaint(faller, filed_at=iso(2025, 4, 1, 9), category="billing")  # before the recent window
    crm.order(exact, sku, 1, "100.00", iso(2024, 6, 1))
    crm.order(exact, sku, 1, "70.00", "2025-05-17T00:00:00+00:00")      # first instant of the recent window
    crm.order(slight, sku, 1, "100.00", iso(2024, 6, 1))
    crm.order(slight, sku, 1, "80.00", iso(2025, 6, 1))
    crm.order(newcomer, sku, 1, "50.00", iso(2025, 6, 1))
    report = crm.read("/v1/reports/order-drops", window_days=30, min_drop="0.3")
    assert (report["recent_from"], report["recent_to"]) == ("2025-05-17", "2025-06-15")
    assert (report["previous_from"], report["previous_to"]) == ("2024-05-17", "2024-06-15")
    assert Decimal(report["min_drop"]) == Decimal("0.3")
    found = [(c["name"], Decimal(c["previous_amount"]), Decimal(c["recent_amount"]), c["drop"])
             for c in report["customers"]]
    assert found == [("Faller", Decimal("250.00"), Decimal("100.00"), "0.6000"),
                     ("Exact", Decimal("100.00"), Decimal("70.00"), "0.3000")]
    faller_row, exact_row = report["customers"]
    assert (faller_row["customer_id"], faller_row["tier"]) == (faller, "B")
    assert [(k["id"], k["category"], k["tier"], k["filed_at"]) for k in faller_row["complaints"]] == [
        (in_window["id"], "quality", "B", "2025-06-01T09:00:00Z")]
    assert (exact_row["customer_id"], exact_row["tier"], exact_row["complaints"]) == (exact, None, [])


def test_order_drops_min_drop_raises_the_bar(fresh_system: Any) -> None:
    crm = Crm(fresh_system, utc(2025, 6, 15, 12))
    sku = crm.product("OD-2", "1.00")
    gone, halved = crm.customer("Gone"), crm.customer("Halved")
    crm.order(gone, sku, 1, "40.00", iso(2024, 6, 10))      # no recent orders at all: drop 1
    crm.order(halved, sku, 1, "90.00", iso(2024, 6, 10))
    crm.order(halved, sku, 1, "45.00", iso(2025, 6, 10))
    strict = crm.read("/v1/reports/order-drops", window_days=7, min_drop="0.75")
    assert [(c["name"], Decimal(c["recent_amount"]), c["drop"]) for c in strict["customers"]] == [
        ("Gone", Decimal("0"), "1.0000")]
    default = crm.read("/v1/reports/order-drops", window_days=7)  # min_drop defaults to 0.3
    assert [(c["name"], c["drop"]) for c in default["customers"]] == [("Gone", "1.0000"), ("Halved", "0.5000")]


def test_order_drops_compares_with_the_same_calendar_days_a_year_earlier_across_a_leap_day(fresh_system: Any) -> None:
    crm = Crm(fresh_system, utc(2024, 3, 31, 12))
    sku = crm.product("OD-3", "1.00")
    march = crm.customer("March")
    crm.order(march, sku, 1, "100.00", iso(2023, 3, 1, 10))  # 1 March a year earlier: in the same window
    report = crm.read("/v1/reports/order-drops", window_days=31)
    assert (report["recent_from"], report["recent_to"]) == ("2024-03-01", "2024-03-31")
    assert (report["previous_from"], report["previous_to"]) == ("2023-03-01", "2023-03-31")
    assert [(c["name"], c["drop"]) for c in report["customers"]] == [("March", "1.0000")]


# --- SLA -----------------------------------------------------------------------------------------------


@pytest.fixture
def sla_history(fresh_system: Any) -> Crm:
    """June 2025: tier A (3 days) and B (5 days) complaints handled by ann and bob, one unrated.

    A k1: filed 06-02 00:00, ann, resolved 06-03 00:00 (24 h, on time), rated 5
    A k2: filed 06-05 00:00, bob, breached 06-08 00:00, resolved 06-09 00:00 (96 h, late), rated 2
    A k3: filed 06-20 00:00, open and unassigned
    B k4: filed 06-10 00:00, ann, resolved 06-12 12:00 (60 h, on time), rated 4
    B k5: filed 05-30 00:00 (before the period), bob, resolved 06-02 03:00 (75 h, on time)
    unrated k6: filed 06-15 00:00, open and unassigned
    """
    crm = Crm(fresh_system, utc(2025, 5, 30))
    a, b, u = crm.customer("Acme"), crm.customer("Bolt"), crm.customer("Unrated Ltd")
    crm.assign_tier(a, "A", utc(2025, 1, 1))
    crm.assign_tier(b, "B", utc(2025, 1, 1))

    def at(*parts: int) -> None:
        crm.clock.set(2025, *parts)

    k5 = crm.complaint(b)
    assert (k5["tier"], k5["due_at"]) == ("B", "2025-06-04T00:00:00Z")  # the tier at filing: 5 days
    k5 = k5["id"]
    crm.step(k5, "assign", assignee="bob")
    at(6, 2)
    k1 = crm.complaint(a)["id"]
    at(6, 2, 3)
    crm.step(k5, "resolve", resolution="refunded", by="bob")
    at(6, 2, 6)
    crm.step(k1, "assign", assignee="ann")
    at(6, 3)
    crm.step(k1, "resolve", resolution="replaced", by="ann")
    at(6, 3, 12)
    crm.step(k1, "rate", score=5)
    at(6, 5)
    k2 = crm.complaint(a)["id"]
    at(6, 5, 1)
    crm.step(k2, "assign", assignee="bob")
    crm.breach(k2, utc(2025, 6, 8))
    at(6, 9)
    crm.step(k2, "resolve", resolution="apologised", by="bob")
    at(6, 9, 6)
    crm.step(k2, "rate", score=2)
    at(6, 10)
    k4 = crm.complaint(b)["id"]
    at(6, 10, 2)
    crm.step(k4, "assign", assignee="ann")
    at(6, 12, 12)
    crm.step(k4, "resolve", resolution="repaired", by="ann")
    at(6, 13)
    crm.step(k4, "rate", score=4)
    at(6, 15)
    crm.complaint(u)
    at(6, 20)
    crm.complaint(a)
    at(6, 30, 12)
    return crm


JUNE = {"from": "2025-06-01", "to": "2025-06-30"}
SLA_FIELDS = ("group", "filed", "resolved", "resolved_on_time", "on_time_pct", "breaches",
              "mean_hours_to_resolve", "mean_rating", "ratings")


def sla_rows(rows: list[dict]) -> list[tuple]:
    return [tuple(row[f] for f in SLA_FIELDS) for row in rows]


def test_sla_by_tier_counts_filed_resolved_on_time_breaches_time_and_rating(sla_history: Crm) -> None:
    rows = sla_history.read("/v1/reports/sla", group_by="tier", **JUNE)
    assert sla_rows(rows) == [
        ("A", 3, 2, 1, "50.0", 1, "60.00", "3.50", 2),
        ("B", 1, 2, 2, "100.0", 0, "67.50", "4.00", 1),
        ("unrated", 1, 0, 0, None, 0, None, None, 0),
    ]


def test_sla_by_assignee_counts_each_resolution_under_the_one_who_held_it(sla_history: Crm) -> None:
    rows = sla_history.read("/v1/reports/sla", group_by="assignee", **JUNE)
    assert sla_rows(rows) == [
        ("ann", 2, 2, 2, "100.0", 0, "42.00", "4.50", 2),
        ("bob", 1, 2, 1, "50.0", 1, "85.50", "2.00", 1),
        ("unassigned", 2, 0, 0, None, 0, None, None, 0),
    ]


def test_sla_period_counts_each_fact_on_its_own_day(sla_history: Crm) -> None:
    # 1-3 June: k1 filed and resolved and rated, k5 resolved (filed in May); the breach is on 8 June.
    rows = sla_history.read("/v1/reports/sla", group_by="tier", **{"from": "2025-06-01", "to": "2025-06-03"})
    assert sla_rows(rows) == [
        ("A", 1, 1, 1, "100.0", 0, "24.00", "5.00", 1),
        ("B", 0, 1, 1, "100.0", 0, "75.00", None, 0),
    ]


# --- care ----------------------------------------------------------------------------------------------


def test_upcoming_days_run_across_the_year_end(fresh_system: Any) -> None:
    crm = Crm(fresh_system, utc(2025, 12, 28, 9))
    jan = crm.customer("January Baby", birthday="1990-01-02")
    crm.customer("Anniversary Co", special_days=[{"label": "founding", "date": "2010-12-28"}])
    crm.customer("Edge Inc", birthday="1985-01-04")       # exactly 7 days ahead: included
    crm.customer("Later Ltd", birthday="1985-01-05")      # 8 days ahead: not yet
    gone = crm.customer("Gone GmbH", birthday="1970-01-01")
    crm.post(f"/v1/customers/{gone}/deactivate", status=200)  # deactivated: no care
    rows = crm.read("/v1/care/upcoming", days=7)
    assert [(r["customer_name"], r["label"], r["date"], r["days_ahead"]) for r in rows] == [
        ("Anniversary Co", "founding", "2025-12-28", 0),
        ("January Baby", "birthday", "2026-01-02", 5),
        ("Edge Inc", "birthday", "2026-01-04", 7),
    ]
    assert rows[1]["customer_id"] == jan


def test_upcoming_keeps_a_29_february_birthday_on_28_february_in_a_year_without_one(fresh_system: Any) -> None:
    crm = Crm(fresh_system, utc(2025, 2, 20, 9))
    crm.customer("Leapling", birthday="1980-02-29")
    crm.customer("March First", birthday="2000-03-01")
    rows = crm.read("/v1/care/upcoming", days=10)
    assert [(r["customer_name"], r["date"], r["days_ahead"]) for r in rows] == [
        ("Leapling", "2025-02-28", 8), ("March First", "2025-03-01", 9)]
    crm.clock.set(2024, 2, 20, 9)  # a leap year: on the day itself, once
    rows = crm.read("/v1/care/upcoming", days=10)
    assert [(r["customer_name"], r["date"], r["days_ahead"]) for r in rows] == [
        ("Leapling", "2024-02-29", 9), ("March First", "2024-03-01", 10)]


def test_visits_due_lists_customers_below_their_tiers_quota_over_the_last_365_days(fresh_system: Any) -> None:
    crm = Crm(fresh_system, utc(2025, 1, 10, 9))
    lapsed = crm.customer("Lapsed")  # computed C; an override to A that expired on 1 June
    crm.assign_tier(lapsed, "C", utc(2024, 1, 1))
    crm.override(lapsed, "A", expires_on="2025-06-01")
    crm.clock.set(2025, 6, 15, 12)
    anna, busy, bert = crm.customer("Anna"), crm.customer("Busy"), crm.customer("Bert")
    dora, nobody, full = crm.customer("Dora"), crm.customer("Nobody"), crm.customer("Full")
    for customer, tier in ((anna, "A"), (busy, "B"), (bert, "B"), (dora, "D"), (full, "A")):
        crm.override(customer, tier)
    crm.visit(anna, "2025-03-01")
    crm.visit(anna, "2024-05-01")   # more than 365 days ago: does not count
    for day in ("2024-07-01", "2024-10-01", "2025-01-01", "2025-06-15"):
        crm.visit(full, day)
    crm.visit(busy, "2024-06-16")   # 364 days ago: the first day of the last 365
    crm.visit(busy, "2025-02-01")
    crm.visit(bert, "2024-06-15")   # 365 days ago: one day too early
    retired = crm.customer("Retired")
    crm.override(retired, "A")
    crm.post(f"/v1/customers/{retired}/deactivate", status=200)  # deactivated: no visits due
    rows = crm.read("/v1/care/visits-due")
    found = [(r["customer_name"], r["tier"], r["visits_per_year"], r["visits_last_365_days"],
              r["visits_missing"], r["last_visit"]) for r in rows]
    assert found == [
        ("Anna", "A", 4, 1, 3, "2025-03-01"),
        ("Bert", "B", 2, 0, 2, "2024-06-15"),
        ("Lapsed", "C", 1, 0, 1, None),
    ]
    assert rows[0]["customer_id"] == anna
    assert not {nobody, dora, retired} & {r["customer_id"] for r in rows}


# --- tier transitions ----------------------------------------------------------------------------------


def test_tier_transitions_count_each_pair_of_tiers_in_the_period(fresh_system: Any) -> None:
    crm = Crm(fresh_system, utc(2025, 6, 15, 12))
    t1, t2, t3, t4, t5 = (crm.customer(f"T{n}") for n in range(1, 6))
    crm.assign_tier(t1, "B", utc(2024, 10, 1))                     # unrated -> B, before the period
    crm.assign_tier(t1, "A", utc(2025, 2, 1))                      # B -> A
    crm.assign_tier(t2, "B", utc(2024, 12, 31, 23, 59))             # before the period
    crm.assign_tier(t2, "A", utc(2025, 3, 31, 23))                  # B -> A on the last day
    crm.assign_tier(t3, "C", utc(2025, 1, 1))                      # unrated -> C at the first instant
    crm.assign_tier(t4, "A", utc(2025, 4, 1))                      # after the period
    crm.assign_tier(t5, "B", utc(2024, 6, 1))
    crm.assign_tier(t5, "B", utc(2025, 2, 10))                     # B again: no transition
    report = crm.read("/v1/reports/tier-transitions", **{"from": "2025-01-01", "to": "2025-03-31"})
    assert (report["start"], report["end"], report["total"]) == ("2025-01-01", "2025-03-31", 3)
    assert report["transitions"] == [{"from_tier": "B", "to_tier": "A", "count": 2},
                                     {"from_tier": "unrated", "to_tier": "C", "count": 1}]
    whole = crm.read("/v1/reports/tier-transitions", **{"from": "2024-01-01"})  # to: today
    assert whole["total"] == 7
    assert {(t["from_tier"], t["to_tier"]): t["count"] for t in whole["transitions"]} == {
        ("B", "A"): 2, ("unrated", "A"): 1, ("unrated", "B"): 3, ("unrated", "C"): 1}


def test_tier_transitions_include_an_override_from_the_tier_then_in_force(fresh_system: Any) -> None:
    crm = Crm(fresh_system, utc(2025, 6, 15, 12))
    kim = crm.customer("Kim")
    crm.assign_tier(kim, "C", utc(2025, 1, 10))
    crm.override(kim, "A")  # 15 June: C -> A by hand
    report = crm.read("/v1/reports/tier-transitions", **{"from": "2025-06-15", "to": "2025-06-15"})
    assert report["total"] == 1
    assert report["transitions"] == [{"from_tier": "C", "to_tier": "A", "count": 1}]
    january = crm.read("/v1/reports/tier-transitions", **{"from": "2025-01-01", "to": "2025-01-31"})
    assert january["transitions"] == [{"from_tier": "unrated", "to_tier": "C", "count": 1}]


# --- validation and access -----------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "params"), [
    ("/v1/reports/products", {"lossonly": "true"}),                              # unknown parameter
    ("/v1/reports/profit-by-tier", {"year": "2025", "tier": "A"}),               # unknown parameter
    ("/v1/reports/sla", {"from": "2025-02-01", "to": "2025-01-31"}),             # to before from
    ("/v1/reports/customers/profit", {"from": "2025-07-01"}),                    # from after today
    ("/v1/reports/sla", {"group_by": "region"}),                                 # bad group_by
    ("/v1/reports/profit-by-tier", {"basis": "tomorrow"}),
    ("/v1/reports/order-drops", {"min_drop": "1.5"}),
    ("/v1/reports/order-drops", {"window_days": "0"}),
    ("/v1/reports/tier-transitions", {"from": "2025-13-01"}),
    ("/v1/care/upcoming", {"days": "-1"}),
    ("/v1/care/visits-due", {"tier": "A"}),
])
def test_a_bad_report_query_is_refused_with_a_422_problem(fresh_system: Any, path: str, params: dict) -> None:
    crm = Crm(fresh_system, utc(2025, 6, 15, 12))
    response = crm.api.get(path, params=params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["status"] == 422


def test_an_unknown_query_parameter_is_named_in_the_problem(fresh_system: Any) -> None:
    crm = Crm(fresh_system, utc(2025, 6, 15, 12))
    response = crm.api.get("/v1/reports/products", params={"lossonly": "true", "from": "2025-01-01"})
    assert response.status_code == 422
    assert response.json()["detail"] == "unknown query parameters: lossonly"
    response = crm.api.get("/v1/reports/sla", params={"from": "2025-02-01", "to": "2025-01-31"})
    assert response.json()["detail"] == "'to' must not be before 'from'"


def test_reports_need_a_known_key_and_a_reading_role(fresh_system: Any) -> None:
    from fastapi.testclient import TestClient

    from crm.api.app import create_app
    from crm.infra.runtime import Runtime

    crm = Crm(fresh_system, utc(2025, 6, 15, 12))
    someone = crm.customer("Someone")
    keys = {f"key-{role}": role for role in ("admin", "sales", "agent", "auditor")}
    keys["key-customer"] = f"customer:{someone}"
    app = create_app(Runtime(**{**crm.rt.__dict__, "api_keys": keys}), clock=crm.clock)

    def client(key: str | None) -> TestClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return TestClient(app, headers=headers, raise_server_exceptions=False)

    for key in ("not-a-key", None):
        response = client(key).get("/v1/reports/sla")
        assert response.status_code == 401, key
        assert response.headers["content-type"] == PROBLEM
        assert response.headers["www-authenticate"] == "Bearer"
    for role in ("admin", "sales", "agent", "auditor"):
        response = client(f"key-{role}").get("/v1/reports/customers/profit")
        assert response.status_code == 200, role
        assert response.json() == {"total_profit": "0", "customers": []}
    for path in ("/v1/reports/profit-by-tier", "/v1/care/visits-due", "/v1/reports/order-drops"):
        response = client("key-customer").get(path)
        assert response.status_code == 403, path
        assert response.headers["content-type"] == PROBLEM


def test_upcoming_lists_each_day_once_on_its_next_occurrence_even_over_a_whole_year(fresh_system: Any) -> None:
    crm = Crm(fresh_system, utc(2025, 6, 10, 9))
    crm.customer("Today Born", birthday="1990-06-10")  # today, and again 365 days later
    rows = crm.read("/v1/care/upcoming", days=366)
    assert [(r["customer_name"], r["date"], r["days_ahead"]) for r in rows] == [("Today Born", "2025-06-10", 0)]


def test_a_period_given_only_by_its_end_starts_on_1_january_of_that_year(fresh_system: Any) -> None:
    crm = Crm(fresh_system, utc(2026, 6, 10, 9))
    sku = crm.product("OLD-1", "1.00")
    who = crm.customer("Archive Ltd")
    crm.order(who, sku, 2, "3.00", iso(2024, 3, 1))
    crm.order(who, sku, 1, "3.00", iso(2023, 12, 31))  # the year before: outside
    rows = crm.read("/v1/reports/products", to="2024-12-31")
    assert [(r["sku"], r["quantity"], r["profit"]) for r in rows] == [("OLD-1", 2, "4.00")]
