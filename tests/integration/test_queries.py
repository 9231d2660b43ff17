"""The query API: lists, 360 view, queue order, timelines, pagination, access, read-your-writes."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

PROBLEM = "application/problem+json"
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=timezone.utc)


def fresh(fresh_system):  # type: ignore[no-untyped-def]
    return fresh_system(clock=lambda: NOW)


def after(response) -> dict:  # type: ignore[no-untyped-def]
    return {"X-Min-Position": str(response.json()["position"])}


def test_the_360_view_sums_revenue_and_profit_lifetime_and_this_year(fresh_system) -> None:
    rt, admin = fresh(fresh_system)
    admin.post("/v1/products", json={"sku": "G-1", "name": "Gear", "standard_cost": "6", "list_price": "10"})
    cid = admin.post("/v1/customers", json={"name": "Cyberdyne", "birthday": "1975-07-01"}).json()["id"]
    admin.post("/v1/orders", json={"customer_id": cid, "placed_at": "2025-05-01T00:00:00Z",
                                   "lines": [{"sku": "G-1", "quantity": 10, "unit_price": "10"}]})
    admin.post("/v1/orders", json={"customer_id": cid, "placed_at": "2026-02-01T00:00:00Z",
                                   "lines": [{"sku": "G-1", "quantity": 2, "unit_price": "10"}]})
    admin.post(f"/v1/customers/{cid}/visits", json={"visited_on": "2026-03-01", "by": "sam"})
    last = admin.post("/v1/complaints", json={"customer_id": cid, "category": "late", "description": "slow"})
    view = admin.get(f"/v1/customers/{cid}", headers=after(last))
    assert view.status_code == 200
    body = view.json()
    assert body["revenue"] == {"lifetime": "120", "this_year": "20"}
    assert body["profit"] == {"lifetime": "48", "this_year": "8"}
    assert body["orders"] == 2 and body["last_visit"] == "2026-03-01" and body["visits_last_365_days"] == 1
    assert [c["category"] for c in body["open_complaints"]] == ["late"]
    assert body["next_special_day"] == {"label": "birthday", "date": "2026-07-01", "days_ahead": 16}
    assert body["tier"] is None and body["override"] is None


def test_the_360_view_shows_an_override_as_the_tier_in_force(fresh_system) -> None:
    rt, admin = fresh(fresh_system)
    cid = admin.post("/v1/customers", json={"name": "Soylent"}).json()["id"]
    last = admin.post(f"/v1/customers/{cid}/tier-override",
                      json={"tier": "A", "reason": "flagship", "approved_by": "ceo", "expires_on": "2026-12-31"})
    body = admin.get(f"/v1/customers/{cid}", headers=after(last)).json()
    assert body["tier"] == "A" and body["computed_tier"] is None
    assert body["override"] == {"tier": "A", "expires_on": "2026-12-31"}
    history = admin.get(f"/v1/customers/{cid}/tier-history").json()
    assert [(h["kind"], h["from_tier"], h["to_tier"], h["reason"]) for h in history] == [
        ("override", None, "A", "flagship")]


def test_an_unknown_customer_is_not_found_in_every_view(admin) -> None:
    missing = uuid.uuid4()
    for path in [f"/v1/customers/{missing}", f"/v1/customers/{missing}/tier-history",
                 f"/v1/customers/{missing}/orders", f"/v1/customers/{missing}/complaints",
                 f"/v1/complaints/{missing}"]:
        response = admin.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == PROBLEM


def test_the_customer_list_pages_by_name_with_signed_cursors(fresh_system) -> None:
    rt, admin = fresh(fresh_system)
    for name in ["delta", "Alpha", "charlie", "Bravo", "echo"]:
        last = admin.post("/v1/customers", json={"name": name})
    first = admin.get("/v1/customers?limit=2", headers=after(last)).json()
    assert [c["name"] for c in first["items"]] == ["Alpha", "Bravo"]
    second = admin.get(f"/v1/customers?limit=2&cursor={first['next_cursor']}").json()
    assert [c["name"] for c in second["items"]] == ["charlie", "delta"]
    third = admin.get(f"/v1/customers?limit=2&cursor={second['next_cursor']}").json()
    assert [c["name"] for c in third["items"]] == ["echo"] and third["next_cursor"] is None


def test_a_tampered_cursor_is_refused(fresh_system) -> None:
    rt, admin = fresh(fresh_system)
    for name in ["a1", "a2", "a3"]:
        last = admin.post("/v1/customers", json={"name": name})
    cursor = admin.get("/v1/customers?limit=1", headers=after(last)).json()["next_cursor"]
    forged = cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BB")
    response = admin.get(f"/v1/customers?cursor={forged}")
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
    other_listing = admin.get(f"/v1/complaints?cursor={cursor}")
    assert other_listing.status_code == 422


def test_the_customer_list_filters_by_name_and_tier(fresh_system) -> None:
    rt, admin = fresh(fresh_system)
    a = admin.post("/v1/customers", json={"name": "Wayne Enterprises"}).json()["id"]
    admin.post("/v1/customers", json={"name": "Stark Industries"})
    admin.post("/v1/customers", json={"name": "100% Pure_Co"})
    last = admin.post(f"/v1/customers/{a}/tier-override", json={"tier": "A", "reason": "r", "approved_by": "x"})
    assert [c["name"] for c in admin.get("/v1/customers?q=ENTER", headers=after(last)).json()["items"]] == [
        "Wayne Enterprises"]
    assert [c["name"] for c in admin.get("/v1/customers?tier=A").json()["items"]] == ["Wayne Enterprises"]
    assert len(admin.get("/v1/customers?tier=unrated").json()["items"]) == 2
    assert [c["name"] for c in admin.get("/v1/customers?q=%25").json()["items"]] == ["100% Pure_Co"]
    assert admin.get("/v1/customers?q=_").json()["items"][0]["name"] == "100% Pure_Co"


@pytest.mark.parametrize("query", ["tier=E", "limit=0", "limit=abc", "bogus=1", "order=random"])
def test_malformed_or_unknown_list_parameters_are_refused(admin, query) -> None:
    path = "/v1/complaints" if query.startswith("order") else "/v1/customers"
    response = admin.get(f"{path}?{query}")
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM


def test_a_limit_above_500_is_capped(admin) -> None:
    response = admin.get("/v1/customers?limit=100000")
    assert response.status_code == 200 and len(response.json()["items"]) <= 500


def test_the_priority_queue_puts_tier_a_first_then_the_earliest_due(fresh_system) -> None:
    now = [NOW - timedelta(days=5)]  # the tiers are set first; the complaints are filed later
    rt, admin = fresh_system(clock=lambda: now[0])
    ids = {}
    for name, tier in [("gold", "A"), ("silver", "B"), ("plain", None)]:
        ids[name] = admin.post("/v1/customers", json={"name": name}).json()["id"]
        if tier:
            admin.post(f"/v1/customers/{ids[name]}/tier-override", json={"tier": tier, "reason": "r", "approved_by": "x"})
    now[0] = NOW
    filed = {}
    for name, hours_ago in [("plain", 1), ("silver", 30), ("gold", 2), ("gold", 50)]:
        at = (NOW - timedelta(hours=hours_ago)).isoformat()
        last = admin.post("/v1/complaints", json={"customer_id": ids[name], "category": name, "description": "d",
                                                  "filed_at": at})
        filed[(name, hours_ago)] = last.json()
    queue = admin.get("/v1/complaints?order=priority", headers=after(last)).json()["items"]
    assert [(c["category"], c["tier"]) for c in queue] == [("gold", "A"), ("gold", "A"), ("silver", "B"),
                                                           ("plain", None)]
    assert queue[0]["id"] == filed[("gold", 50)]["id"]  # same tier: the earliest due first
    page = admin.get("/v1/complaints?order=priority&limit=3").json()
    rest = admin.get(f"/v1/complaints?order=priority&limit=3&cursor={page['next_cursor']}").json()
    assert [c["id"] for c in page["items"] + rest["items"]] == [c["id"] for c in queue]
    assert [c["category"] for c in admin.get("/v1/complaints?tier=B").json()["items"]] == ["silver"]


def test_the_timeline_shows_every_step_and_the_sla_marks(fresh_system) -> None:
    rt, admin = fresh(fresh_system)
    cid = admin.post("/v1/customers", json={"name": "Tyrell"}).json()["id"]
    kid = admin.post("/v1/complaints", json={"customer_id": cid, "category": "quality", "description": "d",
                                             "filed_at": (NOW - timedelta(days=11)).isoformat()}).json()["id"]
    last = admin.post(f"/v1/complaints/{kid}/assign", json={"assignee": "ann"})
    detail = admin.get(f"/v1/complaints/{kid}", headers=after(last)).json()
    assert [s["type"] for s in detail["timeline"]] == ["Filed", "Assigned"]
    assert detail["timeline"][1]["details"] == {"assignee": "ann"}
    assert detail["sla"]["overdue"] is True and detail["sla"]["breaches"] == 0
    assert detail["sla"]["due_at"] == (NOW - timedelta(days=1)).isoformat().replace("+00:00", "Z")
    assert detail["status"] == "in_progress" and detail["assignee"] == "ann"


def test_a_customer_key_reads_its_own_orders_and_complaints_only(admin, customer, complaint, customer_client) -> None:
    own = customer_client(customer["id"])
    other = admin.post("/v1/customers", json={"name": "Someone Else"}).json()
    headers = {"X-Min-Position": str(other["position"])}
    assert own.get(f"/v1/customers/{customer['id']}/orders", headers=headers).status_code == 200
    mine = own.get(f"/v1/customers/{customer['id']}/complaints").json()["items"]
    assert [c["id"] for c in mine] == [complaint["id"]]
    assert own.get(f"/v1/complaints/{complaint['id']}").status_code == 200
    assert own.get(f"/v1/customers/{other['id']}/orders").status_code == 403
    assert own.get(f"/v1/customers/{customer['id']}").status_code == 403  # the 360 view is internal
    assert own.get("/v1/complaints").status_code == 403
    assert own.get("/v1/reports/sla").status_code == 403


def test_a_customer_key_may_not_read_another_customers_complaint(admin, complaint, customer_client) -> None:
    stranger = admin.post("/v1/customers", json={"name": "Stranger"}).json()
    response = customer_client(stranger["id"]).get(f"/v1/complaints/{complaint['id']}",
                                                   headers={"X-Min-Position": str(stranger["position"])})
    assert response.status_code == 403


@pytest.mark.parametrize("role", ["admin", "sales", "agent", "auditor"])
def test_staff_roles_may_read(clients, role) -> None:
    assert clients[role].get("/v1/customers?limit=1").status_code == 200
    assert clients[role].get("/v1/reports/products").status_code == 200


def test_reads_need_a_key(anonymous) -> None:
    assert anonymous.get("/v1/customers").status_code == 401
    assert anonymous.get("/v1/reports/sla").status_code == 401


def test_a_read_waits_for_its_own_write(admin) -> None:
    made = admin.post("/v1/customers", json={"name": "Read My Write"})
    found = admin.get(f"/v1/customers/{made.json()['id']}", headers=after(made))
    assert found.status_code == 200 and found.json()["name"] == "Read My Write"


def test_a_position_not_processed_in_time_is_503_with_retry_after(fresh_system) -> None:
    rt, admin = fresh_system(with_runners=False)  # nothing follows the log: the write stays unprocessed
    made = admin.post("/v1/customers", json={"name": "Never Projected"})
    response = admin.get("/v1/customers?limit=1", headers=after(made))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.headers["content-type"] == PROBLEM


def test_a_position_beyond_the_last_event_is_refused_at_once(admin, anonymous) -> None:
    head = anonymous.get("/health").json()["position"]
    response = admin.get("/v1/customers?limit=1", headers={"X-Min-Position": str(head + 1_000_000)})
    assert response.status_code == 422 and response.headers["content-type"] == PROBLEM
    assert "beyond the last recorded event" in response.json()["detail"]


def test_health_shows_each_projection_position(admin, anonymous) -> None:
    made = admin.post("/v1/customers", json={"name": "Health Positions"})
    admin.get("/v1/customers?limit=1", headers=after(made))
    projections = anonymous.get("/health").json()["projections"]
    assert set(projections) == {"customers", "sales", "complaints"}
    assert all(position >= made.json()["position"] for position in projections.values())


def test_the_360_views_next_special_day_is_the_one_the_upcoming_days_sql_finds(fresh_system) -> None:
    """The 360 view finds the next special day in Python; the care list in SQL (UPCOMING_DAYS).
    Both must agree on every day of a leap year and the years around it, 29 February included."""
    from datetime import date

    from crm.queries.customers import UPCOMING_DAYS, customer_360

    rt, admin = fresh(fresh_system)
    made = [admin.post("/v1/customers", json=body).json()["id"] for body in (
        {"name": "Leap", "birthday": "2000-02-29", "special_days": [{"label": "eve", "date": "1999-12-31"}]},
        {"name": "Ties", "birthday": "1980-01-01", "special_days": [{"label": "a-day", "date": "1990-01-01"},
                                                                     {"label": "march", "date": "1990-03-01"}]},
        {"name": "Nothing"}, {"name": "Gone", "birthday": "1970-05-05"})]
    last = admin.post(f"/v1/customers/{made[-1]}/deactivate")  # an inactive customer's days are not listed
    assert last.status_code == 200, last.text
    admin.get(f"/v1/customers/{made[-1]}", headers=after(last))  # the read models have caught up
    days = [date(2027, 1, 1) + timedelta(days=n) for n in range(0, 3 * 366, 3)] + \
        [date(2028, 2, 27), date(2028, 2, 28), date(2028, 2, 29), date(2028, 3, 1), date(2027, 2, 28)]
    compared = 0
    for customer_id in made:
        for today in days:
            rows = rt.reads.all(UPCOMING_DAYS + " LIMIT 1", {"today": today, "days": 366,
                                                             "customer": uuid.UUID(customer_id)})
            expected = {k: rows[0][k] for k in ("label", "date", "days_ahead")} if rows else None
            view = customer_360(rt.reads, uuid.UUID(customer_id), today)
            found = view.next_special_day.model_dump() if view.next_special_day else None
            assert found == expected, (customer_id, today)
            compared += expected is not None
    assert compared == 2 * len(days)  # the two with special days always have one within a year
