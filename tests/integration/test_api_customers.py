"""The customer and product write API against a real PostgreSQL."""

from __future__ import annotations

import uuid

import pytest

PROBLEM = "application/problem+json"


def test_registering_a_customer_returns_id_version_and_position(admin) -> None:
    response = admin.post("/v1/customers", json={
        "name": "Initech", "email": "it@initech.example", "phone": "+1 555", "industry": "software",
        "region": "West", "birthday": "1975-06-01", "owner": "sam",
        "special_days": [{"label": "founding", "date": "1999-03-04"}]})
    assert response.status_code == 201
    body = response.json()
    assert uuid.UUID(body["id"]) and body["version"] == 1 and body["position"] > 0
    assert response.headers["location"] == f"/v1/customers/{body['id']}"
    assert response.headers["etag"] == '"1"'


def test_positions_grow_with_every_write(admin) -> None:
    first = admin.post("/v1/customers", json={"name": "A"}).json()["position"]
    second = admin.post("/v1/customers", json={"name": "B"}).json()["position"]
    assert second > first


@pytest.mark.parametrize("body", [
    {},                                             # name missing
    {"name": ""},                                   # too short
    {"name": "x" * 201},                            # too long
    {"name": "Ok", "email": "not-an-email"},
    {"name": "Ok", "birthday": "1980-13-01"},
    {"name": "Ok", "special_days": [{"label": "x"}]},
    {"name": "Ok", "special_days": [{"label": "x", "date": "2001-01-01"}] * 21},
    {"name": "Ok", "unexpected": 1},
])
def test_a_bad_customer_is_refused_with_a_problem(admin, body) -> None:
    response = admin.post("/v1/customers", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["status"] == 422 and response.json()["errors"]


def test_a_body_that_is_not_json_is_refused(admin) -> None:
    response = admin.post("/v1/customers", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM


def test_patching_a_customer_changes_only_the_fields_sent(admin, customer) -> None:
    response = admin.patch(f"/v1/customers/{customer['id']}", json={"phone": "+49 30 1234"})
    assert response.status_code == 200
    assert response.json()["version"] == 2


def test_a_patch_that_changes_nothing_records_nothing(admin, customer) -> None:
    response = admin.patch(f"/v1/customers/{customer['id']}", json={"region": "North"})
    assert response.status_code == 200
    assert response.json()["version"] == customer["version"]


def test_patching_the_name_to_null_is_refused(admin, customer) -> None:
    response = admin.patch(f"/v1/customers/{customer['id']}", json={"name": None})
    assert response.status_code == 422


def test_patching_with_a_stale_version_is_a_conflict_and_changes_nothing(admin, customer) -> None:
    cid = customer["id"]
    assert admin.patch(f"/v1/customers/{cid}", json={"phone": "1"}, headers={"If-Match": "1"}).status_code == 200
    stale = admin.patch(f"/v1/customers/{cid}", json={"phone": "2"}, headers={"If-Match": "1"})
    assert stale.status_code == 409
    assert stale.json()["type"] == "urn:crm:problem:version-conflict"
    fresh = admin.patch(f"/v1/customers/{cid}", json={"phone": "3"}, headers={"If-Match": '"2"'})
    assert fresh.status_code == 200 and fresh.json()["version"] == 3


def test_a_malformed_if_match_is_a_bad_request(admin, customer) -> None:
    response = admin.patch(f"/v1/customers/{customer['id']}", json={"phone": "1"}, headers={"If-Match": "abc"})
    assert response.status_code == 400


def test_patching_an_unknown_customer_is_not_found(admin) -> None:
    response = admin.patch(f"/v1/customers/{uuid.uuid4()}", json={"phone": "1"})
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM


def test_a_product_id_is_not_a_customer(admin, product) -> None:
    response = admin.patch(f"/v1/customers/{product['id']}", json={"phone": "1"})
    assert response.status_code == 404


def test_a_visit_is_recorded(admin, customer) -> None:
    response = admin.post(f"/v1/customers/{customer['id']}/visits",
                          json={"visited_on": "2026-01-15", "by": "sam", "notes": "quarterly review"})
    assert response.status_code == 201 and response.json()["version"] == 2


def test_a_visit_in_the_future_is_refused(admin, customer) -> None:
    response = admin.post(f"/v1/customers/{customer['id']}/visits", json={"visited_on": "2999-01-01", "by": "sam"})
    assert response.status_code == 422


def test_a_visit_without_a_visitor_is_refused(admin, customer) -> None:
    response = admin.post(f"/v1/customers/{customer['id']}/visits", json={"visited_on": "2026-01-15"})
    assert response.status_code == 422


def test_a_deactivated_customer_gets_no_visits_until_reactivated(admin, customer) -> None:
    cid = customer["id"]
    assert admin.post(f"/v1/customers/{cid}/deactivate", json={"reason": "closed shop"}).status_code == 200
    refused = admin.post(f"/v1/customers/{cid}/visits", json={"visited_on": "2026-01-15", "by": "sam"})
    assert refused.status_code == 409
    assert admin.post(f"/v1/customers/{cid}/deactivate", json={}).status_code == 409
    assert admin.post(f"/v1/customers/{cid}/reactivate").status_code == 200
    assert admin.post(f"/v1/customers/{cid}/reactivate").status_code == 409
    ok = admin.post(f"/v1/customers/{cid}/visits", json={"visited_on": "2026-01-15", "by": "sam"})
    assert ok.status_code == 201


def test_a_tier_override_is_recorded_with_reason_and_approver(admin, customer) -> None:
    response = admin.post(f"/v1/customers/{customer['id']}/tier-override",
                          json={"tier": "A", "reason": "strategic account", "approved_by": "cfo",
                                "expires_on": "2099-12-31"})
    assert response.status_code == 201 and response.json()["version"] == 2


@pytest.mark.parametrize("body", [
    {"tier": "E", "reason": "r", "approved_by": "cfo"},
    {"tier": "A", "approved_by": "cfo"},
    {"tier": "A", "reason": "r"},
    {"tier": "A", "reason": "", "approved_by": "cfo"},
    {"tier": "A", "reason": "r", "approved_by": "cfo", "expires_on": "2001-01-01"},
])
def test_a_bad_tier_override_is_refused(admin, customer, body) -> None:
    response = admin.post(f"/v1/customers/{customer['id']}/tier-override", json=body)
    assert response.status_code == 422


def test_registering_a_product_derives_its_id_from_the_sku(admin, sku) -> None:
    from crm.aggregates.product import product_id

    response = admin.post("/v1/products", json={"sku": sku, "name": "Gear", "standard_cost": "1.25",
                                                "list_price": "2"})
    assert response.status_code == 201
    assert response.json()["id"] == str(product_id(sku)) and response.json()["sku"] == sku


def test_a_sku_registers_only_once(admin, product) -> None:
    again = admin.post("/v1/products", json={"sku": product["sku"], "name": "Other", "standard_cost": "1",
                                             "list_price": "2"})
    assert again.status_code == 409


@pytest.mark.parametrize("body", [
    {"sku": "OK-1", "name": "n", "standard_cost": "-1", "list_price": "2"},
    {"sku": "OK-1", "name": "n", "standard_cost": "1", "list_price": "-0.01"},
    {"sku": "OK-1", "name": "n", "standard_cost": "1.00001", "list_price": "2"},
    {"sku": "OK-1", "name": "n", "standard_cost": "NaN", "list_price": "2"},
    {"sku": "bad sku!", "name": "n", "standard_cost": "1", "list_price": "2"},
    {"sku": "OK-1", "standard_cost": "1", "list_price": "2"},
])
def test_a_bad_product_is_refused(admin, body) -> None:
    assert admin.post("/v1/products", json=body).status_code == 422


def test_changing_the_standard_cost_returns_the_new_version(admin, product) -> None:
    response = admin.put(f"/v1/products/{product['sku']}/standard-cost",
                         json={"standard_cost": "3.10", "effective_from": "2026-01-01"})
    assert response.status_code == 200 and response.json()["version"] == 2


def test_changing_the_cost_of_an_unknown_sku_is_not_found(admin) -> None:
    response = admin.put("/v1/products/NOPE-404/standard-cost", json={"standard_cost": "3"})
    assert response.status_code == 404


def test_a_cost_change_with_a_stale_version_is_a_conflict(admin, product) -> None:
    response = admin.put(f"/v1/products/{product['sku']}/standard-cost", json={"standard_cost": "3"},
                         headers={"If-Match": "5"})
    assert response.status_code == 409


def test_placing_an_order_freezes_the_cost_in_force_that_day(admin, customer, product) -> None:
    sku = product["sku"]
    line = {"sku": sku, "quantity": 2, "unit_price": "4.00"}
    early = admin.post("/v1/orders", json={"customer_id": customer["id"], "lines": [line],
                                           "placed_at": "2025-06-01T10:00:00+02:00"})
    assert admin.put(f"/v1/products/{sku}/standard-cost",
                     json={"standard_cost": "3.50", "effective_from": "2025-07-01"}).status_code == 200
    late = admin.post("/v1/orders", json={"customer_id": customer["id"], "lines": [line]})
    assert early.json()["forecast_profit"] == "3.00"   # 2 × (4.00 − 2.50), the old cost
    assert late.json()["forecast_profit"] == "1.00"    # 2 × (4.00 − 3.50), the new cost
