"""Issue 9, access: every endpoint x every principal, with the status each must get.

The table ACCESS below is the specification: one row per (method, path template) registered in the
app, one column per principal. A new endpoint without a row fails `test_the_table_covers_every_route`.
Every cell runs against fresh resources (a fresh customer, order, complaint, product as the endpoint
needs); a refused cell (401/403) must also record nothing: no event, no policy version, no tiering
run, no audit access-log row.

The last tests cover key handling: keys kept only as SHA-256 digests, compared with
hmac.compare_digest against every entry, and never written to a log line (success and error paths).
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import pickle
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from functools import cached_property
from typing import Any

import psycopg
import pytest
import structlog
from fastapi.testclient import TestClient
from psycopg import sql

from crm.api import auth
from crm.infra.audit_chain import HashChainer
from crm.infra.audit_schema import ACCESS_LOG, ensure_schema
from crm.infra.runtime import Runtime
from tests.conftest import KEYS, _client

# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

OK = "2xx"  # allowed: any success status (201, 200, 202 as the endpoint documents)
NO = 403  # authenticated, but this role (or this customer key, on another customer's data) may not
ANON = 401  # no key, or a key nobody configured

PRINCIPALS = ("admin", "agent", "sales", "auditor", "own", "other", "no_key", "unknown_key")
# own   = a `customer:<id>` key acting on its own customer's data
# other = a `customer:<id>` key acting on another customer's data
# (for collection routes with no customer in them, "own" and "other" are the same request)

ACCESS: dict[tuple[str, str], tuple[Any, ...]] = {
    #                                                      admin agent sales audit own   other no_key unknown
    ("GET", "/health/live"):                               (OK,  OK,   OK,   OK,   OK,   OK,   OK,   OK),
    ("GET", "/health"):                                    (OK,  OK,   OK,   OK,   OK,   OK,   OK,   OK),
    # customers (write: admin, sales; erase: admin)
    ("POST", "/v1/customers"):                             (OK,  NO,   OK,   NO,   NO,   NO,   ANON, ANON),
    ("PATCH", "/v1/customers/{customer_id}"):              (OK,  NO,   OK,   NO,   NO,   NO,   ANON, ANON),
    ("POST", "/v1/customers/{customer_id}/visits"):        (OK,  NO,   OK,   NO,   NO,   NO,   ANON, ANON),
    ("POST", "/v1/customers/{customer_id}/tier-override"): (OK,  NO,   OK,   NO,   NO,   NO,   ANON, ANON),
    ("POST", "/v1/customers/{customer_id}/deactivate"):    (OK,  NO,   OK,   NO,   NO,   NO,   ANON, ANON),
    ("POST", "/v1/customers/{customer_id}/reactivate"):    (OK,  NO,   OK,   NO,   NO,   NO,   ANON, ANON),
    ("POST", "/v1/customers/{customer_id}/erase"):         (OK,  NO,   NO,   NO,   NO,   NO,   ANON, ANON),
    # products (admin only)
    ("POST", "/v1/products"):                              (OK,  NO,   NO,   NO,   NO,   NO,   ANON, ANON),
    ("PUT", "/v1/products/{sku}/standard-cost"):           (OK,  NO,   NO,   NO,   NO,   NO,   ANON, ANON),
    # orders (admin, sales)
    ("POST", "/v1/orders"):                                (OK,  NO,   OK,   NO,   NO,   NO,   ANON, ANON),
    ("POST", "/v1/orders/{order_id}/ship"):                (OK,  NO,   OK,   NO,   NO,   NO,   ANON, ANON),
    ("POST", "/v1/orders/{order_id}/invoice"):             (OK,  NO,   OK,   NO,   NO,   NO,   ANON, ANON),
    ("POST", "/v1/orders/{order_id}/payments"):            (OK,  NO,   OK,   NO,   NO,   NO,   ANON, ANON),
    ("POST", "/v1/orders/{order_id}/cancel"):              (OK,  NO,   OK,   NO,   NO,   NO,   ANON, ANON),
    # complaints (admin, agent; a customer files for itself and rates its own)
    ("POST", "/v1/complaints"):                            (OK,  OK,   NO,   NO,   OK,   NO,   ANON, ANON),
    ("POST", "/v1/complaints/{complaint_id}/assign"):      (OK,  OK,   NO,   NO,   NO,   NO,   ANON, ANON),
    ("POST", "/v1/complaints/{complaint_id}/notes"):       (OK,  OK,   NO,   NO,   NO,   NO,   ANON, ANON),
    ("POST", "/v1/complaints/{complaint_id}/escalate"):    (OK,  OK,   NO,   NO,   NO,   NO,   ANON, ANON),
    ("POST", "/v1/complaints/{complaint_id}/await-customer"): (OK, OK,  NO,   NO,   NO,   NO,   ANON, ANON),
    ("POST", "/v1/complaints/{complaint_id}/resume"):      (OK,  OK,   NO,   NO,   NO,   NO,   ANON, ANON),
    ("POST", "/v1/complaints/{complaint_id}/resolve"):     (OK,  OK,   NO,   NO,   NO,   NO,   ANON, ANON),
    ("POST", "/v1/complaints/{complaint_id}/confirm"):     (OK,  OK,   NO,   NO,   NO,   NO,   ANON, ANON),
    ("POST", "/v1/complaints/{complaint_id}/rate"):        (OK,  OK,   NO,   NO,   OK,   NO,   ANON, ANON),
    ("POST", "/v1/complaints/{complaint_id}/reopen"):      (OK,  OK,   NO,   NO,   NO,   NO,   ANON, ANON),
    ("POST", "/v1/complaints/{complaint_id}/close"):       (OK,  OK,   NO,   NO,   NO,   NO,   ANON, ANON),
    # queries: staff read everything; a customer key only its own orders, complaints, complaint pages
    ("GET", "/v1/customers"):                              (OK,  OK,   OK,   OK,   NO,   NO,   ANON, ANON),
    ("GET", "/v1/customers/{customer_id}"):                (OK,  OK,   OK,   OK,   NO,   NO,   ANON, ANON),
    ("GET", "/v1/customers/{customer_id}/tier-history"):   (OK,  OK,   OK,   OK,   NO,   NO,   ANON, ANON),
    ("GET", "/v1/customers/{customer_id}/orders"):         (OK,  OK,   OK,   OK,   OK,   NO,   ANON, ANON),
    ("GET", "/v1/customers/{customer_id}/complaints"):     (OK,  OK,   OK,   OK,   OK,   NO,   ANON, ANON),
    ("GET", "/v1/complaints"):                             (OK,  OK,   OK,   OK,   NO,   NO,   ANON, ANON),
    ("GET", "/v1/complaints/{complaint_id}"):              (OK,  OK,   OK,   OK,   OK,   NO,   ANON, ANON),
    # reports and care (staff)
    ("GET", "/v1/reports/tier-transitions"):               (OK,  OK,   OK,   OK,   NO,   NO,   ANON, ANON),
    ("GET", "/v1/reports/profit-by-tier"):                 (OK,  OK,   OK,   OK,   NO,   NO,   ANON, ANON),
    ("GET", "/v1/reports/products"):                       (OK,  OK,   OK,   OK,   NO,   NO,   ANON, ANON),
    ("GET", "/v1/reports/customers/profit"):               (OK,  OK,   OK,   OK,   NO,   NO,   ANON, ANON),
    ("GET", "/v1/reports/sla"):                            (OK,  OK,   OK,   OK,   NO,   NO,   ANON, ANON),
    ("GET", "/v1/reports/order-drops"):                    (OK,  OK,   OK,   OK,   NO,   NO,   ANON, ANON),
    ("GET", "/v1/care/upcoming"):                          (OK,  OK,   OK,   OK,   NO,   NO,   ANON, ANON),
    ("GET", "/v1/care/visits-due"):                        (OK,  OK,   OK,   OK,   NO,   NO,   ANON, ANON),
    # policies and tiering runs (staff read; admin changes)
    ("GET", "/v1/tiering/policy"):                         (OK,  OK,   OK,   OK,   NO,   NO,   ANON, ANON),
    ("PUT", "/v1/tiering/policy"):                         (OK,  NO,   NO,   NO,   NO,   NO,   ANON, ANON),
    ("POST", "/v1/tiering/runs"):                          (OK,  NO,   NO,   NO,   NO,   NO,   ANON, ANON),
    ("GET", "/v1/tiering/runs/{run_id}"):                  (OK,  OK,   OK,   OK,   NO,   NO,   ANON, ANON),
    ("GET", "/v1/sla/policy"):                             (OK,  OK,   OK,   OK,   NO,   NO,   ANON, ANON),
    ("PUT", "/v1/sla/policy"):                             (OK,  NO,   NO,   NO,   NO,   NO,   ANON, ANON),
    # audit (admin, auditor; the access log: admin only)
    ("GET", "/v1/audit/customers/{customer_id}/history"):  (OK,  NO,   NO,   OK,   NO,   NO,   ANON, ANON),
    ("GET", "/v1/audit/customers/{customer_id}/state"):    (OK,  NO,   NO,   OK,   NO,   NO,   ANON, ANON),
    ("GET", "/v1/audit/verify"):                           (OK,  NO,   NO,   OK,   NO,   NO,   ANON, ANON),
    ("GET", "/v1/audit/checkpoints/latest"):               (OK,  NO,   NO,   OK,   NO,   NO,   ANON, ANON),
    ("GET", "/v1/audit/access-log"):                       (OK,  NO,   NO,   NO,   NO,   NO,   ANON, ANON),
}

CELLS = [(method, path, principal, expected)
         for (method, path), row in ACCESS.items() for principal, expected in zip(PRINCIPALS, row, strict=True)]
SKIPPED_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def registered_routes(app: Any) -> set[tuple[str, str]]:
    """(method, path template) of every route the app serves, the docs routes aside."""
    try:  # FastAPI >= 0.16x keeps included routers as branches; this walks them
        from fastapi.routing import iter_route_contexts

        routes: Iterator[Any] = iter_route_contexts(app.routes)
    except ImportError:  # older FastAPI: app.routes is already flat
        routes = iter(app.routes)
    found = set()
    for route in routes:
        path, methods = getattr(route, "path", None), getattr(route, "methods", None) or set()
        assert path is not None, f"a route without a path: {route!r}"
        if path in SKIPPED_ROUTES:
            continue
        found |= {(method, path) for method in methods if method != "HEAD"}
    return found


def test_the_table_covers_every_route(app) -> None:  # type: ignore[no-untyped-def]
    """Every registered endpoint has a row, and every row is an endpoint: add a row with a new route."""
    registered = registered_routes(app)
    assert registered - ACCESS.keys() == set(), "routes without a row in ACCESS"
    assert ACCESS.keys() - registered == set(), "rows in ACCESS for routes the app does not serve"
    assert all(len(row) == len(PRINCIPALS) for row in ACCESS.values())


# ---------------------------------------------------------------------------------------------
# Building each cell's request on fresh resources
# ---------------------------------------------------------------------------------------------


def ok(response) -> dict:  # type: ignore[no-untyped-def]
    assert 200 <= response.status_code < 300, response.text
    return response.json()


@dataclass
class Call:
    path: str
    json: Any = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class World:
    """What one cell acts on. `subject` is the customer the "own" key belongs to (fresh per cell);
    `other` is the module's other customer, whose key plays "other"."""

    admin: TestClient
    sku: str
    other: str
    run_id: str

    @cached_property
    def subject(self) -> str:
        return ok(self.admin.post("/v1/customers", json={"name": "Matrix Subject", "email": "subject@example.com",
                                                          "birthday": "1980-02-29"}))["id"]

    def order(self, *steps: tuple[str, dict]) -> str:
        order = ok(self.admin.post("/v1/orders", json={"customer_id": self.subject, "lines": [
            {"sku": self.sku, "quantity": 2, "unit_price": "4.00"}]}))["id"]
        for step, body in steps:
            ok(self.admin.post(f"/v1/orders/{order}/{step}", json=body))
        return order

    def complaint(self, *steps: tuple[str, dict]) -> str:
        complaint = ok(self.admin.post("/v1/complaints", json={
            "customer_id": self.subject, "category": "delivery", "description": "arrived late"}))["id"]
        for step, body in steps:
            ok(self.admin.post(f"/v1/complaints/{complaint}/{step}", json=body))
        return complaint

    def product(self) -> str:
        sku = f"AM-{uuid.uuid4().hex[:10]}"
        ok(self.admin.post("/v1/products", json={"sku": sku, "name": "Gadget", "standard_cost": "2.50",
                                                 "list_price": "4.00"}))
        return sku


TODAY = date.today()
INVOICE = ("invoice", {"due_on": (TODAY + timedelta(days=30)).isoformat()})
RESOLVE = ("resolve", {"resolution": "replaced the parcel", "by": "dana"})
C = "/v1/complaints/{}"

# For each endpoint: the request a role that may would send, built on fresh resources.
REQUESTS: dict[tuple[str, str], Callable[[World], Call]] = {
    ("GET", "/health/live"): lambda w: Call("/health/live"),
    ("GET", "/health"): lambda w: Call("/health"),
    ("POST", "/v1/customers"): lambda w: Call("/v1/customers", {"name": "Matrix New Ltd"}),
    ("PATCH", "/v1/customers/{customer_id}"): lambda w: Call(f"/v1/customers/{w.subject}", {"region": "South"}),
    ("POST", "/v1/customers/{customer_id}/visits"): lambda w: Call(
        f"/v1/customers/{w.subject}/visits", {"visited_on": (TODAY - timedelta(days=1)).isoformat(), "by": "sam"}),
    ("POST", "/v1/customers/{customer_id}/tier-override"): lambda w: Call(
        f"/v1/customers/{w.subject}/tier-override", {"tier": "B", "reason": "key account", "approved_by": "lead"}),
    ("POST", "/v1/customers/{customer_id}/deactivate"): lambda w: Call(
        f"/v1/customers/{w.subject}/deactivate", {"reason": "moved away"}),
    ("POST", "/v1/customers/{customer_id}/reactivate"): lambda w: (
        ok(w.admin.post(f"/v1/customers/{w.subject}/deactivate", json={})),
        Call(f"/v1/customers/{w.subject}/reactivate"))[1],
    ("POST", "/v1/customers/{customer_id}/erase"): lambda w: Call(
        f"/v1/customers/{w.subject}/erase", {"reason": "GDPR art. 17 request"}),
    ("POST", "/v1/products"): lambda w: Call("/v1/products", {
        "sku": f"AM-{uuid.uuid4().hex[:10]}", "name": "Gizmo", "standard_cost": "1.00", "list_price": "2.00"}),
    ("PUT", "/v1/products/{sku}/standard-cost"): lambda w: Call(
        f"/v1/products/{w.product()}/standard-cost", {"standard_cost": "2.75"}),
    ("POST", "/v1/orders"): lambda w: Call("/v1/orders", {"customer_id": w.subject, "lines": [
        {"sku": w.sku, "quantity": 1, "unit_price": "4.00"}]}),
    ("POST", "/v1/orders/{order_id}/ship"): lambda w: Call(f"/v1/orders/{w.order()}/ship", {}),
    ("POST", "/v1/orders/{order_id}/invoice"): lambda w: Call(f"/v1/orders/{w.order()}/invoice", INVOICE[1]),
    ("POST", "/v1/orders/{order_id}/payments"): lambda w: Call(
        f"/v1/orders/{w.order(INVOICE)}/payments", {"amount": "1.00"}),
    ("POST", "/v1/orders/{order_id}/cancel"): lambda w: Call(
        f"/v1/orders/{w.order()}/cancel", {"reason": "changed plans"}),
    ("POST", "/v1/complaints"): lambda w: Call("/v1/complaints", {
        "customer_id": w.subject, "category": "quality", "description": "scratched"}),
    ("POST", "/v1/complaints/{complaint_id}/assign"): lambda w: Call(
        C.format(w.complaint()) + "/assign", {"assignee": "dana"}),
    ("POST", "/v1/complaints/{complaint_id}/notes"): lambda w: Call(
        C.format(w.complaint()) + "/notes", {"text": "called the carrier", "by": "dana"}),
    ("POST", "/v1/complaints/{complaint_id}/escalate"): lambda w: Call(
        C.format(w.complaint()) + "/escalate", {"reason": "angry"}),
    ("POST", "/v1/complaints/{complaint_id}/await-customer"): lambda w: Call(
        C.format(w.complaint()) + "/await-customer", {"reason": "photos asked"}),
    ("POST", "/v1/complaints/{complaint_id}/resume"): lambda w: Call(
        C.format(w.complaint(("await-customer", {}))) + "/resume", {}),
    ("POST", "/v1/complaints/{complaint_id}/resolve"): lambda w: Call(
        C.format(w.complaint()) + "/resolve", RESOLVE[1]),
    ("POST", "/v1/complaints/{complaint_id}/confirm"): lambda w: Call(
        C.format(w.complaint(RESOLVE)) + "/confirm", {"by": "lead"}),
    ("POST", "/v1/complaints/{complaint_id}/rate"): lambda w: Call(
        C.format(w.complaint(RESOLVE)) + "/rate", {"score": 4, "comment": "fine"}),
    ("POST", "/v1/complaints/{complaint_id}/reopen"): lambda w: Call(
        C.format(w.complaint(RESOLVE)) + "/reopen", {"reason": "broke again"}),
    ("POST", "/v1/complaints/{complaint_id}/close"): lambda w: Call(
        C.format(w.complaint(RESOLVE)) + "/close", {}),
    ("GET", "/v1/customers"): lambda w: Call("/v1/customers", params={"limit": 1}),
    ("GET", "/v1/customers/{customer_id}"): lambda w: Call(f"/v1/customers/{w.subject}"),
    ("GET", "/v1/customers/{customer_id}/tier-history"): lambda w: Call(f"/v1/customers/{w.subject}/tier-history"),
    ("GET", "/v1/customers/{customer_id}/orders"): lambda w: (
        w.order(), Call(f"/v1/customers/{w.subject}/orders"))[1],
    ("GET", "/v1/customers/{customer_id}/complaints"): lambda w: (
        w.complaint(), Call(f"/v1/customers/{w.subject}/complaints"))[1],
    ("GET", "/v1/complaints"): lambda w: Call("/v1/complaints", params={"limit": 1}),
    ("GET", "/v1/complaints/{complaint_id}"): lambda w: Call(C.format(w.complaint())),
    ("GET", "/v1/reports/tier-transitions"): lambda w: Call("/v1/reports/tier-transitions"),
    ("GET", "/v1/reports/profit-by-tier"): lambda w: Call("/v1/reports/profit-by-tier"),
    ("GET", "/v1/reports/products"): lambda w: Call("/v1/reports/products"),
    ("GET", "/v1/reports/customers/profit"): lambda w: Call("/v1/reports/customers/profit", params={"limit": 5}),
    ("GET", "/v1/reports/sla"): lambda w: Call("/v1/reports/sla"),
    ("GET", "/v1/reports/order-drops"): lambda w: Call("/v1/reports/order-drops"),
    ("GET", "/v1/care/upcoming"): lambda w: Call("/v1/care/upcoming"),
    ("GET", "/v1/care/visits-due"): lambda w: Call("/v1/care/visits-due"),
    ("GET", "/v1/tiering/policy"): lambda w: Call("/v1/tiering/policy"),
    # re-stating values in force: a new version, the same rules (other tests see no difference)
    ("PUT", "/v1/tiering/policy"): lambda w: Call("/v1/tiering/policy", {
        "window_days": ok(w.admin.get("/v1/tiering/policy"))["window_days"]}),
    ("POST", "/v1/tiering/runs"): lambda w: Call("/v1/tiering/runs", {}),
    ("GET", "/v1/tiering/runs/{run_id}"): lambda w: Call(f"/v1/tiering/runs/{w.run_id}"),
    ("GET", "/v1/sla/policy"): lambda w: Call("/v1/sla/policy"),
    ("PUT", "/v1/sla/policy"): lambda w: Call("/v1/sla/policy", {
        "warn_ratio": ok(w.admin.get("/v1/sla/policy"))["warn_ratio"]}),
    ("GET", "/v1/audit/customers/{customer_id}/history"): lambda w: Call(
        f"/v1/audit/customers/{w.subject}/history"),
    ("GET", "/v1/audit/customers/{customer_id}/state"): lambda w: Call(
        f"/v1/audit/customers/{w.subject}/state", params={"as_of": (datetime.now(timezone.utc)
                                                                    + timedelta(seconds=1)).isoformat()}),
    ("GET", "/v1/audit/verify"): lambda w: Call("/v1/audit/verify"),
    ("GET", "/v1/audit/checkpoints/latest"): lambda w: Call("/v1/audit/checkpoints/latest"),
    ("GET", "/v1/audit/access-log"): lambda w: Call("/v1/audit/access-log", params={"limit": 5}),
}


def test_every_row_has_a_request() -> None:
    assert REQUESTS.keys() == ACCESS.keys()


# ---------------------------------------------------------------------------------------------
# Fixtures: the module's product, other customer, a finished tiering run, a checkpoint
# ---------------------------------------------------------------------------------------------


def wait_for_run(admin: TestClient, run_id: str) -> dict:
    deadline = time.monotonic() + 60
    while True:
        run = ok(admin.get(f"/v1/tiering/runs/{run_id}"))
        if run["status"] != "running":
            assert run["status"] == "succeeded", run
            return run
        assert time.monotonic() < deadline, f"tiering run {run_id} did not finish"
        time.sleep(0.05)


@dataclass
class Module:
    runtime: Runtime
    admin: TestClient
    clients: dict[str, TestClient]
    sku: str
    other: str
    other_key: str
    run_id: str


@pytest.fixture(scope="module")
def matrix(runtime: Runtime, admin: TestClient, clients: dict[str, TestClient]) -> Module:
    sku = f"AM-{uuid.uuid4().hex[:10]}"
    ok(admin.post("/v1/products", json={"sku": sku, "name": "Widget", "standard_cost": "2.50", "list_price": "4.00"}))
    other = ok(admin.post("/v1/customers", json={"name": "Someone Else Ltd"}))["id"]
    ok(admin.post("/v1/complaints", json={"customer_id": other, "category": "x", "description": "theirs"}))
    # a finished tiering run to read, and a checkpoint so /audit/checkpoints/latest has one to give
    run = ok(admin.post("/v1/tiering/runs", json={}))["run_id"]
    wait_for_run(admin, run)
    chainer = HashChainer(runtime.store, runtime.database_url, checkpoint_every=1)  # every chained event a checkpoint
    try:
        chainer.catch_up()
    finally:
        chainer.close()
    return Module(runtime, admin, clients, sku, other, f"matrix-other-{uuid.uuid4().hex}", run)


def keyed_client(runtime: Runtime, keys: dict[str, str]) -> TestClient:
    """A client of an app over the same runtime with extra keys (as conftest's customer_client)."""
    from crm.api.app import create_app

    (key,) = keys
    keyed = Runtime(**{**runtime.__dict__, "api_keys": {**runtime.api_keys, **keys}})
    return _client(create_app(keyed), key)


def snapshot(runtime: Runtime) -> dict[str, Any]:
    """Everything a request could record: events, policy versions, tiering runs, audit reads."""
    ensure_schema(runtime.pool)
    with runtime.pool.connection() as conn:
        policies = dict(conn.execute("SELECT kind, max(version) FROM crm_policies GROUP BY kind").fetchall())
        (runs,) = conn.execute("SELECT count(*) FROM crm_tiering_runs").fetchone()
        (audit_reads,) = conn.execute(
            sql.SQL("SELECT coalesce(max(id), 0) FROM {}").format(ACCESS_LOG)).fetchone()
    return {"position": runtime.store.position(), "policies": policies, "tiering_runs": runs,
            "audit_reads": audit_reads}


def principal_client(m: Module, world: World, principal: str) -> TestClient:
    if principal in ("admin", "agent", "sales", "auditor"):
        return m.clients[principal]
    if principal == "own":
        return keyed_client(m.runtime, {f"matrix-own-{uuid.uuid4().hex}": f"customer:{world.subject}"})
    if principal == "other":
        return keyed_client(m.runtime, {m.other_key: f"customer:{m.other}"})
    if principal == "no_key":
        return TestClient(m.admin.app, raise_server_exceptions=False)
    assert principal == "unknown_key"
    return _client(m.admin.app, f"matrix-unknown-{uuid.uuid4().hex}")


@pytest.mark.parametrize(("method", "path", "principal", "expected"), CELLS,
                         ids=[f"{method} {path}-{principal}" for method, path, principal, _ in CELLS])
def test_access(matrix: Module, method: str, path: str, principal: str, expected: Any) -> None:
    world = World(matrix.admin, matrix.sku, matrix.other, matrix.run_id)
    call = REQUESTS[(method, path)](world)
    client = principal_client(matrix, world, principal)
    # queries read read models: let them catch up with this cell's setup first
    headers = {"X-Min-Position": str(matrix.runtime.store.position())} if method == "GET" else {}
    before = snapshot(matrix.runtime)
    response = client.request(method, call.path, json=call.json, params=call.params, headers=headers)
    if expected == OK:
        assert 200 <= response.status_code < 300, f"{principal} may: got {response.status_code} {response.text}"
        if (method, path) == ("POST", "/v1/tiering/runs"):
            wait_for_run(matrix.admin, response.json()["run_id"])  # its TierAssigned events land before the next cell
        return
    assert response.status_code == expected, f"{principal}: got {response.status_code} {response.text}"
    assert response.headers["content-type"] == "application/problem+json"
    if expected == ANON:
        assert response.headers.get("www-authenticate") == "Bearer"
    assert snapshot(matrix.runtime) == before, "a refused request recorded something"


# ---------------------------------------------------------------------------------------------
# Key handling: stored hashed, compared in constant time, never logged
# ---------------------------------------------------------------------------------------------


def _values(obj: Any, seen: set[int] | None = None) -> Iterator[Any]:
    """Every str/bytes reachable from obj's attributes and containers."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, (str, bytes, bytearray)):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _values(k, seen)
            yield from _values(v, seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for item in obj:
            yield from _values(item, seen)
    elif hasattr(obj, "__dict__") or hasattr(obj, "__slots__"):
        attrs = dict(getattr(obj, "__dict__", {}))
        attrs.update({s: getattr(obj, s) for s in getattr(obj, "__slots__", ()) if hasattr(obj, s)})
        yield from _values(attrs, seen)


def test_the_key_ring_holds_digests_not_keys(app, runtime: Runtime) -> None:  # type: ignore[no-untyped-def]
    ring = app.state.keyring
    assert len(ring) == len(runtime.api_keys) == len(KEYS)
    held = list(_values(ring))
    blob = pickle.dumps(ring)
    for key in runtime.api_keys:
        assert key.encode() not in blob, "a plaintext key is kept in the key ring"
        assert not any(key in (v.decode("latin-1") if isinstance(v, (bytes, bytearray)) else v) for v in held)
        sha = hashlib.sha256(key.encode())
        assert sha.digest() in held or sha.hexdigest() in held, "each key is held as its SHA-256 digest"
    # the runtime keeps the configured keys for the ring's construction only: never in its repr
    assert not any(key in repr(runtime) or key in repr(runtime.settings) for key in runtime.api_keys)


def test_a_lookup_compares_digests_in_constant_time_against_every_entry(
        app, anonymous: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    calls: list[tuple[Any, Any]] = []
    real = auth.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    entries = len(app.state.keyring)
    for key, status in ((KEYS["admin"], 200), (KEYS["auditor"], 200), ("matrix-not-a-key-123", 401)):
        calls.clear()
        response = anonymous.get("/v1/tiering/policy", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == status
        # every entry is compared, found or not, first entry or last: timing tells nothing
        assert len(calls) == entries, (key, len(calls))
        presented = hashlib.sha256(key.encode()).digest()
        assert all(b == presented and len(a) == len(b) == 32 for a, b in calls), "digests are compared, not keys"
        assert not any(key.encode() in (a, b) or key in (a, b) for a, b in calls)


def test_keys_leave_no_plaintext_in_stored_records(admin: TestClient, runtime: Runtime) -> None:
    """Events name the actor by role and key fingerprint; idempotency rows by a digest; audit reads too."""
    key = KEYS["admin"]
    idem = uuid.uuid4().hex
    created = ok(admin.post("/v1/customers", json={"name": "Stored Hashed Ltd"}, headers={"Idempotency-Key": idem}))
    ok(admin.get(f"/v1/audit/customers/{created['id']}/history"))
    fingerprint = "admin:" + hashlib.sha256(key.encode()).hexdigest()[:8]
    with runtime.pool.connection() as conn:
        (state,) = conn.execute("SELECT state FROM crm_events WHERE originator_id = %s AND originator_version = 1",
                                (uuid.UUID(created["id"]),)).fetchone()
        (principal,) = conn.execute("SELECT principal FROM crm_idempotency_keys WHERE key = %s", (idem,)).fetchone()
        actors = [r[0] for r in conn.execute(
            sql.SQL("SELECT actor FROM {} ORDER BY id DESC LIMIT 5").format(ACCESS_LOG))]
    assert key.encode() not in bytes(state) and fingerprint.encode() in bytes(state)
    assert key not in principal and principal == hashlib.sha256(f"Bearer {key}".encode()).hexdigest()
    assert fingerprint in actors and not any(key in a for a in actors)


CLIENT_SIDE = {"httpx", "httpcore"}  # the test client's own request lines, not the application's


class _Rendered(logging.Handler):
    """Renders every record as production does (structlog's JSON) into a buffer, raw fields too."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        from crm.infra.logging import _SHARED

        self.setFormatter(structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED, processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                                                   structlog.processors.JSONRenderer()]))
        self.buffer = io.StringIO()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in CLIENT_SIDE:
            return
        raw = {k: v for k, v in record.__dict__.items() if k not in ("_logger",)}
        self.buffer.write(self.format(record) + "\n" + repr(raw) + "\n")


def test_keys_never_reach_the_logs(runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
                                   capfd: pytest.CaptureFixture[str]) -> None:
    from crm.api.app import create_app

    app = create_app(runtime)  # its own app: the simulated outage below trips only this app's database gate
    customer_key = f"matrix-log-customer-{uuid.uuid4().hex}"
    unknown = f"matrix-log-unknown-{uuid.uuid4().hex}"
    secrets_ = [*KEYS.values(), customer_key, unknown]
    handler = _Rendered()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        anonymous = TestClient(app, raise_server_exceptions=False)
        bearer = {role: {"Authorization": f"Bearer {key}"} for role, key in KEYS.items()}
        statuses = []

        def send(method: str, path: str, client: TestClient = anonymous, **kw: Any) -> None:
            statuses.append(client.request(method, path, **kw).status_code)

        customer = ok(anonymous.post("/v1/customers", json={"name": "Log Watch Ltd"}, headers=bearer["admin"]))["id"]
        own = keyed_client(runtime, {customer_key: f"customer:{customer}"})
        for role in KEYS:  # success paths, every role
            send("GET", "/v1/tiering/policy", headers=bearer[role])
        send("GET", f"/v1/customers/{customer}/complaints", own)  # customer key, allowed
        send("GET", "/v1/complaints", own)  # customer key, 403
        send("POST", "/v1/customers", json={"name": "No"}, headers=bearer["agent"])  # 403
        send("POST", "/v1/customers", json={"name": ""}, headers=bearer["admin"])  # 422
        send("PATCH", f"/v1/customers/{uuid.uuid4()}", json={"phone": "1"}, headers=bearer["sales"])  # 404
        idem = {**bearer["admin"], "Idempotency-Key": uuid.uuid4().hex}
        send("POST", "/v1/customers", json={"name": "One"}, headers=idem)
        send("POST", "/v1/customers", json={"name": "Two"}, headers=idem)  # 409
        send("POST", "/v1/customers", json={"name": "X"}, headers={**bearer["admin"], "Idempotency-Key": "k" * 201})
        for header in (f"Bearer {unknown}", f"Basic {base64.b64encode(KEYS['admin'].encode()).decode()}",
                       KEYS["admin"], f"Token {KEYS['sales']}", f"Bearer {KEYS['admin']} trailing", "Bearer ",
                       f"Bearer {KEYS['admin'][:-1]}"):
            send("GET", "/v1/customers", headers={"Authorization": header})  # 401
        send("GET", "/v1/customers", params={"api_key": KEYS["admin"]})  # a key in the query string: 401
        send("GET", "/v1/customers", params={"api_key": KEYS["admin"]}, headers=bearer["admin"])  # 422
        send("GET", "/v1/audit/verify", headers=bearer["agent"])  # audit, 403
        send("GET", "/v1/audit/access-log", headers=bearer["admin"])

        def failing(exc: Exception) -> Callable[..., Any]:
            def dispatch(*_: Any, **__: Any) -> Any:
                raise exc
            return dispatch

        monkeypatch.setattr("crm.api.deps.dispatch", failing(RuntimeError("boom")))
        send("POST", "/v1/customers", json={"name": "Crash"}, headers=bearer["admin"])  # 500, logged with traceback
        monkeypatch.setattr("crm.api.deps.dispatch", failing(psycopg.OperationalError("database went away")))
        send("POST", "/v1/customers", json={"name": "Crash"}, headers=bearer["sales"])  # 503, logged
        send("GET", "/v1/customers", headers=bearer["auditor"])  # 503 at once while the gate is down
        send("POST", f"/v1/complaints/{uuid.uuid4()}/rate", own, json={"score": 3})  # 503 for a customer key
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    out, err = capfd.readouterr()
    printed = "\n".join(line for line in (out + err).splitlines() if '"logger": "httpx"' not in line)
    logged = handler.buffer.getvalue()
    # the capture works: it saw the access lines of the error paths and the failures
    for status in (200, 401, 403, 404, 409, 422, 500, 503):
        assert status in statuses
        assert f'"status": {status}' in logged, status
    assert "request.failed" in logged and "database.unavailable" in logged and "RuntimeError" in logged
    for secret in secrets_:
        assert secret not in logged, f"a key reached the logs: {secret}"
        assert secret not in printed, f"a key reached stdout/stderr: {secret}"
        assert base64.b64encode(secret.encode()).decode() not in logged


# ---------------------------------------------------------------------------------------------
# 401 first: a caller without a valid key learns nothing but "authenticate"
# ---------------------------------------------------------------------------------------------

ANONYMOUS_PROBES = {
    "invalid body fields": ("POST", "/v1/customers", {"json": {"name": ""}}),
    "bad If-Match": ("POST", "/v1/orders/00000000-0000-0000-0000-000000000001/ship",
                     {"json": {}, "headers": {"If-Match": "x"}}),
    "unknown id": ("GET", "/v1/complaints/00000000-0000-0000-0000-000000000001", {}),
    "another customer's id": ("GET", "/v1/customers/00000000-0000-0000-0000-000000000001/orders", {}),
    "malformed JSON body": ("POST", "/v1/customers",
                            {"content": b"{not json", "headers": {"content-type": "application/json"}}),
    "unknown query parameter": ("GET", "/v1/customers", {"params": {"colour": "red"}}),
    "X-Min-Position ahead of the log": ("GET", "/v1/reports/sla", {"headers": {"X-Min-Position": "999999999"}}),
}
@pytest.mark.parametrize("probe", ANONYMOUS_PROBES)
@pytest.mark.parametrize("who", ["no_key", "unknown_key"])
def test_an_unauthenticated_caller_gets_401_before_any_other_check(
        app, who: str, probe: str) -> None:  # type: ignore[no-untyped-def]
    """Contract: 401 for no or unknown key. Such a caller should learn nothing else (nor make us wait)."""
    method, path, kwargs = ANONYMOUS_PROBES[probe]
    client = TestClient(app, raise_server_exceptions=False) if who == "no_key" else _client(app, "matrix-unknown-1234")
    response = client.request(method, path, **kwargs)
    assert response.status_code == 401, response.text


def test_a_revoked_key_gets_no_idempotent_replay(runtime: Runtime) -> None:
    from crm.api.app import create_app

    key = f"matrix-revoked-{uuid.uuid4().hex}"
    before = keyed_client(runtime, {key: "sales"})
    request = {"json": {"name": "Replay Ltd"}, "headers": {"Idempotency-Key": uuid.uuid4().hex}}
    assert before.post("/v1/customers", **request).status_code == 201
    after = _client(create_app(runtime), key)  # the same process without that key: it was revoked
    assert after.get("/v1/customers", params={"limit": 1}).status_code == 401
    assert after.post("/v1/customers", **request).status_code == 401


def test_a_customer_key_with_if_match_on_another_customers_complaint_is_403(matrix: Module) -> None:
    world = World(matrix.admin, matrix.sku, matrix.other, matrix.run_id)
    complaint = world.complaint(RESOLVE)
    other = keyed_client(matrix.runtime, {matrix.other_key: f"customer:{matrix.other}"})
    before = snapshot(matrix.runtime)
    response = other.post(f"/v1/complaints/{complaint}/rate", json={"score": 1}, headers={"If-Match": "99"})
    assert snapshot(matrix.runtime) == before
    assert response.status_code == 403, response.text
