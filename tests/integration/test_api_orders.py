"""Write API for orders: placing, shipping, invoicing, payments and cancelling, over HTTP on PostgreSQL."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from uuid import uuid4

import pytest
from fastapi.testclient import TestClient

PROBLEM = "application/problem+json"
STEPS = ("ship", "invoice", "payments", "cancel")


# --- helpers ------------------------------------------------------------------------------------

def assert_problem(response, status: int) -> dict:
    """The response is an RFC 9457 problem document with the given status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == status
    assert body["title"] and body["detail"]
    return body


def today() -> date:
    return datetime.now(timezone.utc).date()


def valid_body(step: str) -> dict:
    """A body each step accepts on an order in the right state."""
    return {"ship": {}, "invoice": {"due_on": (today() + timedelta(days=30)).isoformat()},
            "payments": {"amount": "1.00"}, "cancel": {"reason": "customer changed their mind"}}[step]


def place(client: TestClient, customer_id: str, lines: list[dict], **extra):
    return client.post("/v1/orders", json={"customer_id": customer_id, "lines": lines, **extra})


def line(sku: str, quantity=3, unit_price="4.00") -> dict:
    return {"sku": sku, "quantity": quantity, "unit_price": unit_price}


def step(client: TestClient, order_id: str, name: str, body: dict | None = None, if_match: int | str | None = None):
    headers = {} if if_match is None else {"If-Match": str(if_match)}
    return client.post(f"/v1/orders/{order_id}/{name}", json=valid_body(name) if body is None else body,
                       headers=headers)


def ok(response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert response.headers["ETag"] == f'"{body["version"]}"'
    return body


def invoiced(admin: TestClient, order: dict) -> dict:
    return ok(step(admin, order["id"], "invoice"))


# --- placing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["admin", "sales"])
def test_placing_an_order_answers_201_with_its_forecast_profit_and_margin_as_strings(clients, customer, product,
                                                                                      role):
    response = place(clients[role], customer["id"], [line(product["sku"])])

    body = ok(response, 201)
    assert body["id"] and body["version"] == 1
    assert isinstance(body["position"], int) and body["position"] > 0
    assert body["forecast_profit"] == "4.50"
    assert body["forecast_margin"] == "0.3750"
    assert body["currency"] == "EUR"
    assert body["warnings"] == []
    assert response.headers["Location"] == f"/v1/orders/{body['id']}"

    second = ok(place(clients[role], customer["id"], [line(product["sku"])]), 201)
    assert second["id"] != body["id"] and second["position"] > body["position"]


def test_an_order_with_several_lines_forecasts_the_sum_of_their_profits(admin, customer, product):
    other = f"{product['sku']}-B"
    assert admin.post("/v1/products", json={"sku": other, "name": "Gadget", "standard_cost": "10.00",
                                            "list_price": "12.00"}).status_code == 201

    body = ok(place(admin, customer["id"], [line(product["sku"]), line(other, 2, "9.00")]), 201)

    # revenue 12.00 + 18.00 = 30.00; cost 7.50 + 20.00 = 27.50; the second line loses money
    assert Decimal(body["forecast_profit"]) == Decimal("2.50")
    assert body["forecast_margin"] == "0.0833"


def test_a_back_dated_order_is_accepted_and_freezes_the_cost_in_force_on_its_day(admin, customer, product):
    changed = admin.put(f"/v1/products/{product['sku']}/standard-cost",
                        json={"standard_cost": "3.00", "effective_from": today().isoformat()})
    assert changed.status_code == 200, changed.text
    last_month = (datetime.now(timezone.utc) - timedelta(days=30)).isoformat()

    back_dated = ok(place(admin, customer["id"], [line(product["sku"])], placed_at=last_month), 201)
    current = ok(place(admin, customer["id"], [line(product["sku"])]), 201)

    assert back_dated["forecast_profit"] == "4.50"  # 3 x (4.00 - 2.50), the cost of last month
    assert current["forecast_profit"] == "3.00"     # 3 x (4.00 - 3.00), today's cost


def test_an_order_keeps_its_frozen_profit_when_the_cost_changes_later(admin, customer, product):
    order = ok(place(admin, customer["id"], [line(product["sku"])]), 201)
    changed = admin.put(f"/v1/products/{product['sku']}/standard-cost", json={"standard_cost": "3.90"})
    assert changed.status_code == 200, changed.text

    # The order can still be taken through its steps; its invoiced amount is the placed revenue.
    invoice = invoiced(admin, order)
    paid = ok(step(admin, order["id"], "payments", {"amount": "12.00"}))
    assert invoice["status"] == "invoiced"
    assert paid["status"] == "paid" and Decimal(paid["outstanding"]) == 0


# --- placing: bad input -------------------------------------------------------------------------

BAD_LINES = {
    "quantity zero": lambda sku: [line(sku, quantity=0)],
    "quantity as a string": lambda sku: [line(sku, quantity="3")],
    "fractional quantity": lambda sku: [line(sku, quantity=2.5)],
    "negative quantity": lambda sku: [line(sku, quantity=-1)],
    "negative unit price": lambda sku: [line(sku, unit_price="-4.00")],
    "unit price with five decimal places": lambda sku: [line(sku, unit_price="4.00001")],
    "unit price that is not a number": lambda sku: [line(sku, unit_price="four")],
    "no lines": lambda sku: [],
    "501 lines": lambda sku: [line(sku, quantity=1)] * 501,
    "line without sku": lambda sku: [{"quantity": 3, "unit_price": "4.00"}],
    "line without quantity": lambda sku: [{"sku": sku, "unit_price": "4.00"}],
    "line without unit price": lambda sku: [{"sku": sku, "quantity": 3}],
    "line with an unknown field": lambda sku: [{**line(sku), "discount": "1.00"}],
}


@pytest.mark.parametrize("lines", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_an_order_with_a_bad_line_is_refused_as_invalid_input(admin, customer, product, lines):
    response = place(admin, customer["id"], lines(product["sku"]))

    assert_problem(response, 422)


@pytest.mark.parametrize("missing", ["customer_id", "lines"])
def test_an_order_without_a_required_field_is_refused_as_invalid_input(admin, customer, product, missing):
    body = {"customer_id": customer["id"], "lines": [line(product["sku"])]}
    del body[missing]

    problem = assert_problem(admin.post("/v1/orders", json=body), 422)
    assert any(missing in error["loc"] for error in problem["errors"])


def test_an_order_for_an_unknown_sku_is_refused_as_invalid_input(admin, customer, product):
    response = place(admin, customer["id"], [line(product["sku"]), line(f"NOPE-{uuid4().hex[:8]}")])

    assert "sku" in assert_problem(response, 422)["detail"]


def test_an_order_for_an_unknown_customer_is_refused_as_invalid_input(admin, product):
    response = place(admin, str(uuid4()), [line(product["sku"])])

    assert "customer" in assert_problem(response, 422)["detail"]


def test_an_order_placed_in_the_future_is_refused_as_invalid_input(admin, customer, product):
    tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()

    response = place(admin, customer["id"], [line(product["sku"])], placed_at=tomorrow)

    assert "placed_at" in assert_problem(response, 422)["detail"]


def test_an_order_placed_at_a_time_without_utc_offset_is_refused_as_invalid_input(admin, customer, product):
    response = place(admin, customer["id"], [line(product["sku"])], placed_at="2025-01-10T09:00:00")

    assert_problem(response, 422)


def test_a_deactivated_customer_cannot_place_an_order(admin, customer, product):
    deactivated = admin.post(f"/v1/customers/{customer['id']}/deactivate", json={})
    assert deactivated.status_code == 200, deactivated.text

    response = place(admin, customer["id"], [line(product["sku"])])

    assert_problem(response, 409)


# --- steps: success -----------------------------------------------------------------------------

def test_shipping_an_order_answers_200_with_the_next_version_and_status(admin, order):
    response = step(admin, order["id"], "ship", {"shipped_at": datetime.now(timezone.utc).isoformat()})

    body = ok(response)
    assert body["id"] == order["id"]
    assert body["version"] == order["version"] + 1
    assert body["position"] > order["position"]
    assert body["status"] == "shipped"


def test_invoicing_an_order_answers_200_with_status_invoiced(admin, order):
    body = ok(step(admin, order["id"], "invoice", if_match=order["version"]))

    assert body["version"] == 2 and body["status"] == "invoiced"
    assert body["position"] > order["position"]


def test_a_partial_payment_leaves_the_rest_outstanding_and_a_final_one_settles(admin, order):
    invoice = invoiced(admin, order)

    partial = ok(step(admin, order["id"], "payments", {"amount": "5.00"}))
    final = ok(step(admin, order["id"], "payments", {"amount": "7.00"}, if_match=partial["version"]))

    assert partial["status"] == "invoiced" and partial["outstanding"] == "7.00"
    assert final["status"] == "paid" and Decimal(final["outstanding"]) == 0
    assert invoice["version"] < partial["version"] < final["version"]
    assert invoice["position"] < partial["position"] < final["position"]


def test_cancelling_a_shipped_order_answers_200_with_status_cancelled(admin, order):
    shipped = ok(step(admin, order["id"], "ship"))

    body = ok(step(admin, order["id"], "cancel", if_match=shipped["version"]))

    assert body["status"] == "cancelled" and body["version"] == 3
    assert body["position"] > shipped["position"]


def test_a_whole_order_goes_placed_shipped_invoiced_paid_with_increasing_positions(clients, order):
    sales = clients["sales"]
    positions, versions = [order["position"]], [order["version"]]
    for name, body, status in [("ship", {}, "shipped"), ("invoice", None, "invoiced"),
                               ("payments", {"amount": "12.00"}, "paid")]:
        result = ok(step(sales, order["id"], name, body, if_match=versions[-1]))
        assert result["status"] == status
        positions.append(result["position"])
        versions.append(result["version"])

    assert versions == [1, 2, 3, 4]
    assert positions == sorted(positions) and len(set(positions)) == 4


def test_if_match_accepts_a_quoted_version_as_sent_back_in_etag(admin, order):
    shipped = step(admin, order["id"], "ship")

    body = ok(step(admin, order["id"], "invoice", if_match=shipped.headers["ETag"]))

    assert body["version"] == 3


def test_if_match_that_is_not_a_version_is_a_bad_request(admin, order):
    response = step(admin, order["id"], "ship", if_match="yesterday")

    assert_problem(response, 400)


# --- steps: bad input ---------------------------------------------------------------------------

BAD_STEPS = {
    "invoice without due_on": ("invoice", {}),
    "invoice due before its date": ("invoice", {"due_on": (today() - timedelta(days=1)).isoformat()}),
    "invoiced in the future": ("invoice", {"due_on": (today() + timedelta(days=30)).isoformat(),
                                           "invoiced_at": (datetime.now(timezone.utc) + timedelta(days=2)).isoformat()}),
    "ship in the future": ("ship", {"shipped_at": (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()}),
    "ship without utc offset": ("ship", {"shipped_at": "2025-01-10T09:00:00"}),
    "payment without amount": ("payments", {}),
    "payment of zero": ("payments", {"amount": "0"}),
    "negative payment": ("payments", {"amount": "-1.00"}),
    "payment with five decimal places": ("payments", {"amount": "1.00001"}),
    "cancel without reason": ("cancel", {}),
    "cancel with empty reason": ("cancel", {"reason": ""}),
}


@pytest.mark.parametrize(("name", "body"), BAD_STEPS.values(), ids=BAD_STEPS.keys())
def test_an_order_step_with_bad_input_is_refused_and_changes_nothing(admin, order, name, body):
    if name == "payments":
        invoiced(admin, order)
    before, then = (2, "payments") if name == "payments" else (1, "cancel")

    assert_problem(step(admin, order["id"], name, body), 422)

    # The next valid step still finds the order at the version it had before.
    assert ok(step(admin, order["id"], then, if_match=before))["version"] == before + 1


# --- access -------------------------------------------------------------------------------------

def all_endpoints(order_id: str) -> list[tuple[str, dict]]:
    return [("/v1/orders", {"customer_id": str(uuid4()), "lines": [line("SKU-1")]})] + [
        (f"/v1/orders/{order_id}/{name}", valid_body(name)) for name in STEPS]


@pytest.mark.parametrize("endpoint", range(5), ids=["place", *STEPS])
@pytest.mark.parametrize("key", [None, "not-a-key-anyone-has"], ids=["no key", "unknown key"])
def test_order_endpoints_refuse_callers_without_a_valid_key(anonymous, order, endpoint, key):
    path, body = all_endpoints(order["id"])[endpoint]
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}

    response = anonymous.post(path, json=body, headers=headers)

    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("endpoint", range(5), ids=["place", *STEPS])
@pytest.mark.parametrize("role", ["agent", "auditor"])
def test_roles_without_orders_write_are_forbidden_every_order_endpoint(clients, admin, customer, product, order,
                                                                       role, endpoint):
    path, body = all_endpoints(order["id"])[endpoint]
    if endpoint == 0:
        body = {"customer_id": customer["id"], "lines": [line(product["sku"])]}

    assert_problem(clients[role].post(path, json=body), 403)

    # Nothing happened: the order is still at version 1.
    assert ok(step(admin, order["id"], "ship", if_match=1))["version"] == 2


def test_a_customer_key_cannot_place_orders_even_for_its_own_customer(customer_client, customer, product):
    own = customer_client(customer["id"])

    assert_problem(place(own, customer["id"], [line(product["sku"])]), 403)


@pytest.mark.parametrize("name", STEPS)
def test_a_step_on_an_unknown_order_is_not_found(admin, name):
    response = step(admin, str(uuid4()), name)

    assert_problem(response, 404)


def test_a_step_on_an_id_that_names_no_order_is_refused(admin, customer):
    assert_problem(step(admin, customer["id"], "ship"), 404)  # a customer's id is not an order's
    assert_problem(step(admin, "not-a-uuid", "ship"), 422)


# --- conflicts ----------------------------------------------------------------------------------

def test_a_stale_if_match_is_a_conflict_and_changes_nothing(admin, order):
    ok(step(admin, order["id"], "ship"))  # now at version 2

    problem = assert_problem(step(admin, order["id"], "invoice", if_match=1), 409)
    assert "version" in problem["detail"]

    assert ok(step(admin, order["id"], "invoice", if_match=2))["version"] == 3


def test_shipping_an_order_twice_is_a_conflict(admin, order):
    shipped = ok(step(admin, order["id"], "ship"))

    assert_problem(step(admin, order["id"], "ship"), 409)

    assert ok(step(admin, order["id"], "invoice", if_match=shipped["version"]))["version"] == 3


def test_cancelling_an_invoiced_order_is_a_conflict(admin, order):
    invoice = invoiced(admin, order)

    assert_problem(step(admin, order["id"], "cancel"), 409)

    paid = ok(step(admin, order["id"], "payments", {"amount": "12.00"}, if_match=invoice["version"]))
    assert paid["status"] == "paid"


def test_a_payment_before_the_invoice_is_a_conflict(admin, order):
    assert_problem(step(admin, order["id"], "payments", {"amount": "1.00"}), 409)

    assert ok(step(admin, order["id"], "invoice", if_match=1))["version"] == 2


def test_overpaying_an_invoice_is_a_conflict_and_records_nothing(admin, order):
    invoice = invoiced(admin, order)
    partial = ok(step(admin, order["id"], "payments", {"amount": "10.00"}))

    problem = assert_problem(step(admin, order["id"], "payments", {"amount": "2.01"}), 409)
    assert "2.00" in problem["detail"]

    rest = ok(step(admin, order["id"], "payments", {"amount": "2.00"}, if_match=partial["version"]))
    assert rest["version"] == invoice["version"] + 2 and rest["status"] == "paid"
    # Once paid in full, even a cent more is refused.
    assert_problem(step(admin, order["id"], "payments", {"amount": "0.01"}), 409)


@pytest.mark.parametrize("name", ["ship", "invoice", "payments", "cancel"])
def test_no_step_is_allowed_on_a_cancelled_order(admin, order, name):
    ok(step(admin, order["id"], "cancel"))

    assert_problem(step(admin, order["id"], name), 409)


def test_shipping_needs_no_body(admin, order) -> None:
    response = admin.post(f"/v1/orders/{order['id']}/ship")
    assert response.status_code == 200 and response.json()["status"] == "shipped"


def test_order_times_sent_with_an_offset_are_stored_in_utc(admin, customer, product, runtime) -> None:
    from uuid import UUID

    placed = admin.post("/v1/orders", json={"customer_id": customer["id"], "placed_at": "2025-03-01T01:30:00+02:00",
                                            "lines": [{"sku": product["sku"], "quantity": 1, "unit_price": "4"}]})
    order = runtime.store.repository.get(UUID(placed.json()["id"]))
    assert order.placed_at.utcoffset().total_seconds() == 0
    assert order.placed_at.isoformat() == "2025-02-28T23:30:00+00:00"
