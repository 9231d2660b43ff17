"""Cross-cutting API behaviour: keys and roles, idempotency, size limits, errors, health."""

from __future__ import annotations

import uuid

import pytest

PROBLEM = "application/problem+json"


def test_health_needs_no_key_and_reports_the_position(anonymous, admin) -> None:
    written = admin.post("/v1/customers", json={"name": "Health Check Ltd"}).json()["position"]
    health = anonymous.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["position"] >= written
    assert "projections" in health.json() and "kafka_bootstrap" in health.json()


def test_a_request_without_a_key_is_unauthorized(anonymous) -> None:
    response = anonymous.post("/v1/customers", json={"name": "X"})
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Bearer wrong-key-123", "Basic dGVzdA==", "Bearer ", "test-admin-key"])
def test_an_unknown_or_malformed_key_is_unauthorized(anonymous, header) -> None:
    response = anonymous.post("/v1/customers", json={"name": "X"}, headers={"Authorization": header})
    assert response.status_code == 401


@pytest.mark.parametrize("role,status", [("admin", 201), ("sales", 201), ("agent", 403), ("auditor", 403)])
def test_who_may_register_customers(clients, role, status) -> None:
    assert clients[role].post("/v1/customers", json={"name": "Role Test"}).status_code == status


@pytest.mark.parametrize("role,status", [("admin", 201), ("sales", 403), ("agent", 403), ("auditor", 403)])
def test_who_may_register_products(clients, role, status) -> None:
    body = {"sku": f"R-{uuid.uuid4().hex[:8]}", "name": "n", "standard_cost": "1", "list_price": "2"}
    assert clients[role].post("/v1/products", json=body).status_code == status


def test_a_customer_key_may_not_register_customers(customer_client, customer) -> None:
    own = customer_client(customer["id"])
    assert own.post("/v1/customers", json={"name": "Sneaky"}).status_code == 403


def test_a_repeated_post_with_the_same_key_returns_the_first_response(admin) -> None:
    key = uuid.uuid4().hex
    first = admin.post("/v1/customers", json={"name": "Once Ltd"}, headers={"Idempotency-Key": key})
    second = admin.post("/v1/customers", json={"name": "Once Ltd"}, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers["idempotent-replayed"] == "true"


def test_the_same_idempotency_key_with_another_body_is_a_conflict(admin) -> None:
    key = uuid.uuid4().hex
    assert admin.post("/v1/customers", json={"name": "First"}, headers={"Idempotency-Key": key}).status_code == 201
    other = admin.post("/v1/customers", json={"name": "Second"}, headers={"Idempotency-Key": key})
    assert other.status_code == 409
    assert other.json()["type"] == "urn:crm:problem:idempotency-mismatch"


def test_a_rejected_request_does_not_use_up_its_idempotency_key(admin) -> None:
    key = uuid.uuid4().hex
    assert admin.post("/v1/customers", json={"name": ""}, headers={"Idempotency-Key": key}).status_code == 422
    retry = admin.post("/v1/customers", json={"name": "Fixed"}, headers={"Idempotency-Key": key})
    assert retry.status_code == 201


def test_idempotency_keys_are_scoped_per_api_key(clients) -> None:
    key = uuid.uuid4().hex
    a = clients["admin"].post("/v1/customers", json={"name": "Scoped"}, headers={"Idempotency-Key": key})
    b = clients["sales"].post("/v1/customers", json={"name": "Scoped"}, headers={"Idempotency-Key": key})
    assert a.status_code == b.status_code == 201
    assert a.json()["id"] != b.json()["id"]


def test_an_overlong_idempotency_key_is_a_bad_request(admin) -> None:
    response = admin.post("/v1/customers", json={"name": "X"}, headers={"Idempotency-Key": "k" * 201})
    assert response.status_code == 400


def test_a_body_over_one_megabyte_is_refused_and_records_nothing(admin, anonymous) -> None:
    before = anonymous.get("/health").json()["position"]
    big = {"name": "Big", "industry": "x" * 1_000_001}
    response = admin.post("/v1/customers", json=big)
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM
    assert anonymous.get("/health").json()["position"] == before


def test_a_streamed_body_over_one_megabyte_is_refused(admin) -> None:
    def chunks():
        for _ in range(11):
            yield b"x" * 100_000

    response = admin.post("/v1/customers", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_every_response_carries_a_request_id(admin) -> None:
    response = admin.post("/v1/customers", json={"name": "Traced"}, headers={"X-Request-ID": "trace-me-1"})
    assert response.headers["x-request-id"] == "trace-me-1"


def test_errors_do_not_leak_internals(admin) -> None:
    response = admin.patch(f"/v1/customers/{uuid.uuid4()}", json={"phone": "1"})
    text = response.text.lower()
    assert "traceback" not in text and "select " not in text and "psycopg" not in text


def test_the_openapi_spec_documents_every_write_route(anonymous) -> None:
    paths = anonymous.get("/openapi.json").json()["paths"]
    for path in ["/v1/customers", "/v1/customers/{customer_id}", "/v1/customers/{customer_id}/visits",
                 "/v1/customers/{customer_id}/tier-override", "/v1/products",
                 "/v1/products/{sku}/standard-cost", "/v1/orders", "/v1/orders/{order_id}/ship",
                 "/v1/orders/{order_id}/invoice", "/v1/orders/{order_id}/payments",
                 "/v1/orders/{order_id}/cancel", "/v1/complaints"]:
        assert path in paths, path
    for step in ["assign", "notes", "escalate", "await-customer", "resume", "resolve", "confirm", "rate",
                 "reopen", "close"]:
        assert f"/v1/complaints/{{complaint_id}}/{step}" in paths


def test_the_query_api_looks_up_on_its_own_pool_sized_by_the_settings(runtime, monkeypatch, customer) -> None:
    """CRM_API_LOOKUP_THREADS sizes the lookup limiter of each serving event loop (crm.api.routing);
    every route of the query router runs on it, and a 360 lookup answers through it."""
    from fastapi.testclient import TestClient

    import crm.api.routing
    from crm.api.app import create_app
    from crm.api.routes import queries
    from crm.api.routing import LookupRoute, lookup_limiter
    from tests.conftest import KEYS

    monkeypatch.setattr(runtime, "settings", runtime.settings.model_copy(update={"api_lookup_threads": 2}))
    assert queries.router.routes and all(isinstance(r, LookupRoute) for r in queries.router.routes)

    async def tokens() -> float:
        return lookup_limiter().total_tokens

    used = []
    real = crm.api.routing.run_blocking

    async def spy(endpoint, limiter, args, kwargs):  # type: ignore[no-untyped-def]
        used.append((endpoint.__name__, limiter))
        return await real(endpoint, limiter, args, kwargs)

    monkeypatch.setattr(crm.api.routing, "run_blocking", spy)
    with TestClient(create_app(runtime), headers={"Authorization": f"Bearer {KEYS['admin']}"}) as client:
        assert client.portal.call(tokens) == 2  # type: ignore[union-attr]
        found = client.get(f"/v1/customers/{customer['id']}", headers={"X-Min-Position": str(customer["position"])})
        assert found.status_code == 200 and found.json()["id"] == customer["id"]
        report = client.get("/v1/reports/sla")
        assert report.status_code == 200
    assert [name for name, _ in used] == ["customer_360", "sla"]
    assert used[0][1] is not None and used[0][1].total_tokens == 2  # the 360 view: on the lookup limiter
    assert used[1][1] is None  # a report: on anyio's default


def test_the_routes_sit_in_the_apps_own_table_and_document_the_same_as_included_routers(runtime,
                                                                                        monkeypatch) -> None:
    """crm.api.routing.add_routes puts each router's routes into the app as they are; the API
    they make (paths, methods, dependencies, models, OpenAPI) is what include_router would make."""
    import crm.api.app
    from fastapi.routing import APIRoute

    flat = crm.api.app.create_app(runtime)
    monkeypatch.setattr(crm.api.app, "add_routes", lambda app, router: app.include_router(router))
    included = crm.api.app.create_app(runtime)
    assert sum(isinstance(route, APIRoute) for route in flat.routes) > 50
    assert flat.openapi() == included.openapi()
    lookup = next(r for r in flat.routes if isinstance(r, APIRoute) and r.path == "/v1/customers/{customer_id}"
                  and r.methods == {"GET"})
    assert "X-Min-Position" in {p.alias for d in lookup.dependant.dependencies for p in d.header_params}, \
        "the query router's own dependency (read-your-writes) came with its routes"
