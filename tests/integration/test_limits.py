"""Issue #9, "Limits": every bound on a request value, just inside (accepted) and just outside
(422 naming the field, nothing recorded); the 1 MB body limit; tamper-proof cursors; and no
error body that shows a traceback, SQL or the class names of internals."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest

PROBLEM = "application/problem+json"
BIG = "999999999999.9999"  # the largest money value (< 10^12, 4 places)
OLD = "1900-01-01T00:00:00Z"  # the earliest instant


def position(anonymous) -> int:  # type: ignore[no-untyped-def]
    return anonymous.get("/health").json()["position"]


def after(response) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"X-Min-Position": str(response.json()["position"])}


def ok(response):  # type: ignore[no-untyped-def]
    assert 200 <= response.status_code < 300, response.text
    return response.json()


def email(length: int) -> str:
    """A valid address of exactly `length` characters (local part 64, labels of at most 63)."""
    left = length - 65 - len(".example")
    labels = []
    while left > 0:
        take = min(63, left)
        if left - take == 1:  # room for a dot but no label after it
            take -= 1
        labels.append("d" * take)
        left -= take
        if left:
            left -= 1  # the dot before the next label
    address = "a" * 64 + "@" + ".".join(labels) + ".example"
    assert len(address) == length, (len(address), length)
    return address


# ---- the world a case acts on ---------------------------------------------------------------

class World:
    """Fresh aggregates for one case, made on demand."""

    def __init__(self, admin) -> None:  # type: ignore[no-untyped-def]
        self.admin = admin
        self._made: dict[str, Any] = {}

    def _once(self, name: str, make: Callable[[], Any]) -> Any:
        if name not in self._made:
            self._made[name] = make()
        return self._made[name]

    def prepare(self, case: str) -> None:
        self.customer, self.sku
        if case.startswith(("order.shipped", "order.invoice", "order.cancel")):
            self.order
        if case.startswith("order.payment"):
            self.invoiced_big_order
        if case.startswith(("complaint.rate", "complaint.reopen")):
            self.resolved_complaint
        elif case.startswith("complaint."):
            self.complaint

    @property
    def customer(self) -> str:
        return self._once("customer", lambda: ok(self.admin.post("/v1/customers", json={"name": "Limits Ltd"}))["id"])

    @property
    def sku(self) -> str:
        def make() -> str:
            sku = f"L-{uuid.uuid4().hex[:10]}"
            ok(self.admin.post("/v1/products", json={"sku": sku, "name": "Part", "standard_cost": "1",
                                                      "list_price": BIG}))
            return sku
        return self._once("sku", make)

    def _order(self, price: str, placed_at: str | None = None) -> str:
        body: dict[str, Any] = {"customer_id": self.customer, "lines": [{"sku": self.sku, "quantity": 1,
                                                                           "unit_price": price}]}
        if placed_at:
            body["placed_at"] = placed_at
        return ok(self.admin.post("/v1/orders", json=body))["id"]

    @property
    def order(self) -> str:
        """Placed at the earliest instant, so every later step may be dated then too."""
        return self._once("order", lambda: self._order("4.00", OLD))

    @property
    def invoiced_big_order(self) -> str:
        def make() -> str:
            oid = self._order(BIG)
            ok(self.admin.post(f"/v1/orders/{oid}/ship"))
            ok(self.admin.post(f"/v1/orders/{oid}/invoice", json={"due_on": "2100-12-31"}))
            return oid
        return self._once("big", make)

    @property
    def complaint(self) -> str:
        return self._once("complaint", lambda: ok(self.admin.post("/v1/complaints", json={
            "customer_id": self.customer, "category": "delivery", "description": "late"}))["id"])

    @property
    def resolved_complaint(self) -> str:
        def make() -> str:
            kid = self.complaint
            ok(self.admin.post(f"/v1/complaints/{kid}/resolve", json={"resolution": "sent again", "by": "ann"}))
            return kid
        return self._once("resolved", make)


@dataclass
class Bound:
    """One bound: `send(world, value)` makes the request; `loc` is the field's errors[].loc."""

    id: str
    send: Callable[[World, Any], Any]
    loc: list[str]
    inside: list[Any]
    outside: list[Any]
    marks: list[Any] = field(default_factory=list)


def post(path: str, body: Callable[[World, Any], dict[str, Any]]) -> Callable[[World, Any], Any]:
    return lambda w, v: w.admin.post(path.format(w=w), json=body(w, v))


def new_customer(**extra: Any) -> Callable[[World, Any], Any]:
    return lambda w, v: w.admin.post("/v1/customers", json={"name": "Bounded", **{k: f(v) for k, f in extra.items()}})


def text_bound(name: str, send: Callable[[World, Any], Any], loc: list[str], max_len: int) -> Bound:
    return Bound(name, send, loc, ["x" * max_len], ["x" * (max_len + 1), "bad\x00nul", "bell\x07"])


def line(w: World, **over: Any) -> dict[str, Any]:
    return {"sku": w.sku, "quantity": 1, "unit_price": "1.00", **over}


def order_with(**over: Any) -> Callable[[World, Any], Any]:
    return lambda w, v: w.admin.post("/v1/orders", json={"customer_id": w.customer, "lines": [line(w, **{
        k: v for k in over})]})


def product_with(key: str) -> Callable[[World, Any], Any]:
    return lambda w, v: w.admin.post("/v1/products", json={
        "sku": f"P-{uuid.uuid4().hex[:10]}", "name": "n", "standard_cost": "1", "list_price": "2", key: v})


def step(name: str, body: Callable[[Any], dict[str, Any]], target: str = "complaint") -> Callable[[World, Any], Any]:
    return lambda w, v: w.admin.post(f"/v1/complaints/{getattr(w, target)}/{name}", json=body(v))


MONEY_OUT = ["1000000000000", "0.00001", "NaN", "Infinity", "-0.0001"]

BOUNDS = [
    # customers
    text_bound("customer.name", lambda w, v: w.admin.post("/v1/customers", json={"name": v}), ["body", "name"], 200),
    text_bound("customer.phone", new_customer(phone=lambda v: v), ["body", "phone"], 40),
    text_bound("customer.industry", new_customer(industry=lambda v: v), ["body", "industry"], 100),
    text_bound("customer.region", new_customer(region=lambda v: v), ["body", "region"], 100),
    text_bound("customer.owner", new_customer(owner=lambda v: v), ["body", "owner"], 200),
    Bound("customer.email", new_customer(email=lambda v: v), ["body", "email"], [email(254)], [email(255)]),
    Bound("customer.birthday", new_customer(birthday=lambda v: v), ["body", "birthday"],
          ["1900-01-01", "2100-12-31"], ["1899-12-31", "2101-01-01", "0001-01-01", "9999-12-31"]),
    Bound("customer.special_days.date", new_customer(special_days=lambda v: [{"label": "founded", "date": v}]),
          ["body", "special_days", "0", "date"], ["1800-01-01", "2100-12-31"], ["1799-12-31", "2101-01-01"]),
    text_bound("customer.special_days.label", new_customer(special_days=lambda v: [{"label": v, "date": "2000-01-01"}]),
               ["body", "special_days", "0", "label"], 100),
    Bound("customer.special_days.count", new_customer(special_days=lambda n: [
        {"label": f"day {i}", "date": "2000-01-01"} for i in range(n)]), ["body", "special_days"], [20], [21]),
    text_bound("customer.patch.name", lambda w, v: w.admin.patch(f"/v1/customers/{w.customer}", json={"name": v}),
               ["body", "name"], 200),
    Bound("visit.visited_on", post("/v1/customers/{w.customer}/visits", lambda w, v: {"visited_on": v, "by": "ann"}),
          ["body", "visited_on"], ["1900-01-01"], ["1899-12-31", "2101-01-01"]),
    text_bound("visit.by", post("/v1/customers/{w.customer}/visits", lambda w, v: {"visited_on": "2020-01-01", "by": v}),
               ["body", "by"], 200),
    text_bound("visit.notes", post("/v1/customers/{w.customer}/visits",
                                   lambda w, v: {"visited_on": "2020-01-01", "by": "ann", "notes": v}), ["body", "notes"], 4000),
    text_bound("override.reason", post("/v1/customers/{w.customer}/tier-override",
                                       lambda w, v: {"tier": "A", "reason": v, "approved_by": "boss"}), ["body", "reason"], 500),
    text_bound("override.approved_by", post("/v1/customers/{w.customer}/tier-override",
                                            lambda w, v: {"tier": "A", "reason": "r", "approved_by": v}), ["body", "approved_by"], 200),
    Bound("override.expires_on", post("/v1/customers/{w.customer}/tier-override",
                                      lambda w, v: {"tier": "A", "reason": "r", "approved_by": "b", "expires_on": v}),
          ["body", "expires_on"], ["2100-12-31"], ["2101-01-01"]),
    text_bound("deactivate.reason", post("/v1/customers/{w.customer}/deactivate", lambda w, v: {"reason": v}),
               ["body", "reason"], 500),
    text_bound("erase.reason", post("/v1/customers/{w.customer}/erase", lambda w, v: {"reason": v}), ["body", "reason"], 500),
    # products
    Bound("product.sku", lambda w, v: w.admin.post("/v1/products", json={
        "sku": v + uuid.uuid4().hex[:4], "name": "n", "standard_cost": "1", "list_price": "2"}),
        ["body", "sku"], ["S" * 60], ["S" * 61, "S\x00"]),
    text_bound("product.name", product_with("name"), ["body", "name"], 200),
    text_bound("product.supplier", product_with("supplier"), ["body", "supplier"], 200),
    Bound("product.standard_cost", product_with("standard_cost"), ["body", "standard_cost"], [BIG, "0"], MONEY_OUT),
    Bound("product.list_price", product_with("list_price"), ["body", "list_price"], [BIG, "0.0001"], MONEY_OUT),
    Bound("product.cost_change", lambda w, v: w.admin.put(f"/v1/products/{w.sku}/standard-cost",
                                                          json={"standard_cost": v}),
          ["body", "standard_cost"], [BIG], MONEY_OUT),
    Bound("product.effective_from", lambda w, v: w.admin.put(f"/v1/products/{w.sku}/standard-cost",
                                                             json={"standard_cost": "3", "effective_from": v}),
          ["body", "effective_from"], ["1900-01-01", "2100-12-31"], ["1899-12-31", "2101-01-01"]),
    # orders
    Bound("order.lines", lambda w, n: w.admin.post("/v1/orders", json={"customer_id": w.customer,
                                                                        "lines": [line(w)] * n}),
          ["body", "lines"], [500], [501, 0]),
    Bound("order.quantity", order_with(quantity=1), ["body", "lines", "0", "quantity"], [1_000_000, 1],
          [1_000_001, 0, 10**30, 1.5]),
    Bound("order.unit_price", order_with(unit_price=1), ["body", "lines", "0", "unit_price"], [BIG], MONEY_OUT),
    Bound("order.placed_at", lambda w, v: w.admin.post("/v1/orders", json={
        "customer_id": w.customer, "lines": [line(w)], "placed_at": v}), ["body", "placed_at"],
        [OLD, "1900-01-01T05:00:00+05:00"],
        ["1899-12-31T23:59:59Z", "1900-01-01T00:30:00+01:00", "0001-01-01T00:00:00+05:00", "2101-01-01T00:00:00Z",
         "2020-01-01T00:00:00"]),
    Bound("order.shipped_at", lambda w, v: w.admin.post(f"/v1/orders/{w.order}/ship", json={"shipped_at": v}),
          ["body", "shipped_at"], [OLD], ["1899-12-31T23:59:59Z", "2101-01-01T00:00:00Z"]),
    Bound("order.invoice.due_on", post("/v1/orders/{w.order}/invoice", lambda w, v: {"due_on": v}),
          ["body", "due_on"], ["2100-12-31"], ["2101-01-01", "1899-12-31", "9999-12-31"]),
    Bound("order.invoice.invoiced_at", post("/v1/orders/{w.order}/invoice",
                                            lambda w, v: {"due_on": "2000-01-01", "invoiced_at": v}),
          ["body", "invoiced_at"], [OLD], ["1899-12-31T23:59:59Z"]),
    Bound("order.payment.amount", post("/v1/orders/{w.invoiced_big_order}/payments", lambda w, v: {"amount": v}),
          ["body", "amount"], [BIG], MONEY_OUT + ["0"]),
    Bound("order.payment.received_at", post("/v1/orders/{w.invoiced_big_order}/payments",
                                            lambda w, v: {"amount": "1", "received_at": v}),
          ["body", "received_at"], ["2000-01-01T00:00:00Z"], ["1899-12-31T23:59:59Z", "2101-01-01T00:00:00Z"]),
    text_bound("order.cancel.reason", post("/v1/orders/{w.order}/cancel", lambda w, v: {"reason": v}),
               ["body", "reason"], 500),
    # complaints
    text_bound("complaint.category", lambda w, v: w.admin.post("/v1/complaints", json={
        "customer_id": w.customer, "category": v, "description": "d"}), ["body", "category"], 100),
    text_bound("complaint.description", lambda w, v: w.admin.post("/v1/complaints", json={
        "customer_id": w.customer, "category": "c", "description": v}), ["body", "description"], 10_000),
    text_bound("complaint.channel", lambda w, v: w.admin.post("/v1/complaints", json={
        "customer_id": w.customer, "category": "c", "description": "d", "channel": v}), ["body", "channel"], 50),
    Bound("complaint.filed_at", lambda w, v: w.admin.post("/v1/complaints", json={
        "customer_id": w.customer, "category": "c", "description": "d", "filed_at": v}), ["body", "filed_at"],
        [OLD], ["1899-12-31T23:59:59Z", "2101-01-01T00:00:00Z", "0001-01-01T00:00:00+05:00"]),
    text_bound("complaint.assign.assignee", step("assign", lambda v: {"assignee": v}), ["body", "assignee"], 200),
    text_bound("complaint.notes.text", step("notes", lambda v: {"text": v, "by": "ann"}), ["body", "text"], 10_000),
    text_bound("complaint.notes.by", step("notes", lambda v: {"text": "t", "by": v}), ["body", "by"], 200),
    text_bound("complaint.escalate.reason", step("escalate", lambda v: {"reason": v}), ["body", "reason"], 500),
    text_bound("complaint.resolve.resolution", step("resolve", lambda v: {"resolution": v, "by": "ann"}),
               ["body", "resolution"], 10_000),
    text_bound("complaint.resolve.root_cause", step("resolve", lambda v: {"resolution": "r", "root_cause": v, "by": "a"}),
               ["body", "root_cause"], 2_000),
    Bound("complaint.rate.score", step("rate", lambda v: {"score": v}, "resolved_complaint"), ["body", "score"],
          [5, 1], [6, 0, 10**30, "5", 4.5]),
    text_bound("complaint.rate.comment", step("rate", lambda v: {"score": 4, "comment": v}, "resolved_complaint"),
               ["body", "comment"], 2_000),
    text_bound("complaint.reopen.reason", step("reopen", lambda v: {"reason": v}, "resolved_complaint"),
               ["body", "reason"], 2_000),
]


@pytest.mark.parametrize("bound", BOUNDS, ids=[b.id for b in BOUNDS])
def test_a_value_just_outside_its_bound_is_refused_and_changes_nothing(admin, anonymous, bound: Bound) -> None:
    world = World(admin)
    world.prepare(bound.id)  # what the case acts on exists before the position is taken
    for value in bound.outside:
        before = position(anonymous)
        response = bound.send(world, value)
        assert response.status_code == 422, (repr(value)[:80], response.text[:300])
        assert response.headers["content-type"] == PROBLEM
        locs = [error["loc"] for error in response.json().get("errors", [])]
        assert bound.loc in locs, (repr(value)[:80], locs)
        assert position(anonymous) == before, repr(value)[:80]


@pytest.mark.parametrize("bound", BOUNDS, ids=[b.id for b in BOUNDS])
def test_a_value_just_inside_its_bound_is_accepted(admin, bound: Bound) -> None:
    for value in bound.inside:
        response = bound.send(World(admin), value)
        assert 200 <= response.status_code < 300, (repr(value)[:80], response.text[:300])


# ---- query parameters and headers --------------------------------------------------------------

QUERY_BOUNDS = [
    # path, parameter, inside values, outside values
    ("/v1/customers", "limit", ["1000000", "1"], ["1000001", "0", "9" * 40]),
    ("/v1/customers", "q", ["x" * 200], ["x" * 201, "a\x00b"]),
    ("/v1/complaints", "assignee", ["x" * 200], ["x" * 201, "a\x00b"]),
    ("/v1/customers", "cursor", [], ["A" * 2001]),
    ("/v1/reports/tier-transitions", "from", ["1900-01-01"], ["1899-12-31", "0001-01-01"]),
    ("/v1/reports/tier-transitions", "to", ["2100-12-31"], ["2101-01-01", "9999-12-31"]),
    ("/v1/reports/products", "to", ["2100-12-31"], ["2101-01-01", "9999-12-31"]),
    ("/v1/reports/sla", "from", ["1900-01-01"], ["1899-12-31"]),
    ("/v1/reports/customers/profit", "limit", ["1000000"], ["1000001", "0"]),
    ("/v1/reports/profit-by-tier", "year", ["1900", "2100"], ["1899", "2101", "9" * 30]),
    ("/v1/reports/order-drops", "window_days", ["365"], ["366", "0"]),
    ("/v1/reports/order-drops", "min_drop", ["1", "0.0001"], ["1.0001", "0.00001", "NaN", "Infinity"]),
    ("/v1/care/upcoming", "days", ["366"], ["367", "-1"]),
]


@pytest.mark.parametrize("path,name,inside,outside", QUERY_BOUNDS, ids=[f"{p}?{n}" for p, n, *_ in QUERY_BOUNDS])
def test_query_parameters_are_bounded(admin, path: str, name: str, inside: list[str], outside: list[str]) -> None:
    for value in inside:
        response = admin.get(path, params={name: value})
        assert response.status_code == 200, (name, value, response.text[:300])
    for value in outside:
        response = admin.get(path, params={name: value})
        assert response.status_code == 422, (name, value[:40], response.text[:300])
        assert ["query", name] in [e["loc"] for e in response.json()["errors"]], response.text[:300]


def test_the_audit_as_of_is_a_sane_instant(admin, customer) -> None:
    path = f"/v1/audit/customers/{customer['id']}/state"
    assert admin.get(path, params={"as_of": "2100-12-31T23:59:59Z"}).status_code == 200
    assert admin.get(path, params={"as_of": OLD}).status_code == 404  # valid, but before the customer existed
    for value in ["1899-12-31T23:59:59Z", "2101-01-01T00:00:00Z", "0001-01-01T00:00:00+05:00",
                  "9999-12-31T23:59:59-05:00"]:
        response = admin.get(path, params={"as_of": value})
        assert response.status_code == 422 and ["query", "as_of"] in [e["loc"] for e in response.json()["errors"]]


def test_x_min_position_is_bounded(admin, anonymous) -> None:
    now = position(anonymous)
    assert admin.get("/v1/customers", headers={"X-Min-Position": str(now)}).status_code == 200
    beyond = admin.get("/v1/customers", headers={"X-Min-Position": str(2**63 - 1)})
    assert beyond.status_code == 422 and "errors" not in beyond.json()  # valid, but no write has got there
    for value in [str(2**63), "-1", "9" * 40, "abc"]:
        response = admin.get("/v1/customers", headers={"X-Min-Position": value})
        assert response.status_code == 422
        assert [loc[-1].lower() for loc in (e["loc"] for e in response.json()["errors"])] == ["x-min-position"]


def test_if_match_and_idempotency_key_are_bounded(admin, anonymous, customer) -> None:
    path = f"/v1/customers/{customer['id']}/visits"
    body = {"visited_on": "2020-01-01", "by": "ann"}
    before = position(anonymous)
    for value in ["9" * 19, "x", "9" * 10_000]:
        assert admin.post(path, json=body, headers={"If-Match": value}).status_code == 400
    assert admin.post(path, json=body, headers={"Idempotency-Key": "k" * 201}).status_code == 400
    assert position(anonymous) == before
    assert admin.post(path, json=body, headers={"If-Match": "999999999999999999"}).status_code == 409
    assert admin.post(path, json=body, headers={"If-Match": "1", "Idempotency-Key": "k" * 200}).status_code == 201


# ---- the policies (restored afterwards: other tests share this system) -----------------------

@pytest.fixture
def restore_policies(admin):  # type: ignore[no-untyped-def]
    sla, tiering = admin.get("/v1/sla/policy").json(), admin.get("/v1/tiering/policy").json()
    yield
    for policy in (sla, tiering):
        policy.pop("version")
    ok(admin.put("/v1/sla/policy", json=sla))
    ok(admin.put("/v1/tiering/policy", json=tiering))


CAL = {"weekdays": [0, 1, 2, 3, 4], "opens": "09:00", "closes": "17:00"}
POLICY_BOUNDS = [
    ("/v1/sla/policy", lambda v: {"durations": {"A": v}}, ["durations", "A"], ["P366D", "PT1S"],
     ["P367D", "P999999999D", "P" + "9" * 40 + "D", "P" * 33]),
    ("/v1/sla/policy", lambda v: {"warn_ratio": v}, ["warn_ratio"], [0.99, 0.01], [1.5, -0.1, "NaN"]),
    ("/v1/sla/policy", lambda v: {"calendar": {**CAL, "weekdays": [v]}}, ["calendar", "weekdays", "0"], [6, 0],
     [7, -1, 10**30]),
    ("/v1/sla/policy", lambda n: {"calendar": {**CAL, "weekdays": [0, 1, 2, 3, 4, 5, 6, 0][:n]}},
     ["calendar", "weekdays"], [7], [8]),
    ("/v1/sla/policy", lambda v: {"calendar": {**CAL, "timezone": v}}, ["calendar", "timezone"],
     ["America/Argentina/ComodRivadavia"], ["x" * 65, "UTC\x00"]),
    ("/v1/sla/policy", lambda v: {"calendar": {**CAL, "opens": v}}, ["calendar", "opens"], ["08:00:00.000000"],
     ["0" * 16]),
    ("/v1/sla/policy", lambda v: {"calendar": {**CAL, "holidays": [v]}}, ["calendar", "holidays", "0"],
     ["2025-12-25"], ["2025-12-25T00"]),
    ("/v1/sla/policy", lambda n: {"calendar": {**CAL, "holidays": [f"2025-01-01"] * n}}, ["calendar", "holidays"],
     [366], [367]),
    ("/v1/tiering/policy", lambda v: {"weights": {"order_volume": v, "collection_days": 0, "profit_margin": 0}},
     ["weights", "order_volume"], [1], [1.5, -0.1, "NaN", "Infinity"]),
    ("/v1/tiering/policy", lambda v: {"thresholds": {"A": v, "B": 60, "C": 40}}, ["thresholds", "A"], [100],
     [100.5, "Infinity"]),
    ("/v1/tiering/policy", lambda v: {"window_days": v}, ["window_days"], [3650, 1], [3651, 0, 10**30]),
    ("/v1/tiering/policy", lambda v: {"visits_per_year": {"A": v, "B": 1, "C": 0, "D": 0}},
     ["visits_per_year", "A"], [52], [53, -1]),
    ("/v1/tiering/policy", lambda v: {"weights": {v: 1}}, ["weights", "k" * 33, "[key]"], [], ["k" * 33]),
]


@pytest.mark.parametrize("path,body,loc,inside,outside", POLICY_BOUNDS,
                         ids=[f"{p.split('/')[2]}.{'.'.join(l[:2])}-{i}" for i, (p, _, l, *_) in enumerate(POLICY_BOUNDS)])
def test_policy_values_are_bounded(admin, restore_policies, path, body, loc, inside, outside) -> None:  # type: ignore[no-untyped-def]
    for value in inside:
        response = admin.put(path, content=json.dumps(body(value)), headers={"content-type": "application/json"})
        assert response.status_code == 200, (value, response.text[:300])
    for value in outside:
        before = admin.get(path).json()
        response = admin.put(path, content=json.dumps(body(value)), headers={"content-type": "application/json"})
        assert response.status_code == 422, (repr(value)[:60], response.text[:300])
        locs = [e["loc"] for e in response.json().get("errors", [])]
        assert ["body", *loc] in locs, (repr(value)[:60], locs)
        assert admin.get(path).json() == before


def test_a_tiering_run_as_of_is_a_sane_instant(fresh_system) -> None:
    rt, admin = fresh_system()
    for value in ["1899-12-31T23:59:59Z", "2101-01-01T00:00:00Z", "0001-01-01T00:00:00+05:00"]:
        response = admin.post("/v1/tiering/runs", json={"as_of": value})
        assert response.status_code == 422 and ["body", "as_of"] in [e["loc"] for e in response.json()["errors"]]
    assert admin.post("/v1/tiering/runs", json={"as_of": OLD}).status_code == 202


# ---- the body limit ---------------------------------------------------------------------------

def test_a_body_of_exactly_one_megabyte_is_read_and_one_byte_more_is_refused(admin, anonymous) -> None:
    def padded(size: int) -> bytes:
        head = b'{"name": "Padded Ltd"'
        return head + b" " * (size - len(head) - 1) + b"}"

    assert admin.post("/v1/customers", content=padded(1_000_000),
                      headers={"content-type": "application/json"}).status_code == 201
    before = position(anonymous)
    response = admin.post("/v1/customers", content=padded(1_000_001), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.headers["content-type"] == PROBLEM
    assert position(anonymous) == before


# ---- cursors ----------------------------------------------------------------------------------

def test_cursors_are_tamper_proof_and_bound_to_their_listing_and_filters(admin) -> None:
    prefix = f"cursor-{uuid.uuid4().hex[:8]}"
    ids = [ok(admin.post("/v1/customers", json={"name": f"{prefix} {i}"}))["id"] for i in range(3)]
    last = admin.post(f"/v1/customers/{ids[0]}/visits", json={"visited_on": "2020-01-01", "by": "a"})
    first = admin.get("/v1/customers", params={"q": prefix, "limit": 1}, headers=after(last)).json()
    cursor = first["next_cursor"]
    assert cursor
    same = admin.get("/v1/customers", params={"q": prefix, "limit": 2, "cursor": cursor})
    assert same.status_code == 200 and len(same.json()["items"]) == 2

    def refused(path: str, **params: Any) -> None:
        response = admin.get(path, params=params)
        assert response.status_code == 422, (params, response.text[:200])
        assert response.headers["content-type"] == PROBLEM and "items" not in response.json()

    for i in range(len(cursor)):  # every single-character change
        flipped = cursor[:i] + ("A" if cursor[i] != "A" else "B") + cursor[i + 1:]
        refused("/v1/customers", q=prefix, cursor=flipped)
    refused("/v1/customers", q=prefix, cursor=cursor[:-1])
    refused("/v1/customers", q=prefix, cursor=cursor + "AA")
    refused("/v1/customers", q=prefix, cursor="not a cursor!")
    refused("/v1/customers", cursor=cursor)  # the filter it was issued for left out
    refused("/v1/customers", q=prefix + "x", cursor=cursor)  # another filter
    refused("/v1/customers", q=prefix, tier="A", cursor=cursor)
    refused("/v1/complaints", cursor=cursor)  # another listing
    refused(f"/v1/customers/{ids[0]}/orders", cursor=cursor)


def test_complaint_queue_cursors_are_bound_to_order_and_filters(admin, customer) -> None:
    for i in range(3):
        last = admin.post("/v1/complaints", json={"customer_id": customer["id"], "category": "c", "description": f"{i}"})
    page = admin.get("/v1/complaints", params={"status": "open", "limit": 1}, headers=after(last)).json()
    cursor = page["next_cursor"]
    assert admin.get("/v1/complaints", params={"status": "open", "cursor": cursor}).status_code == 200
    for params in [{}, {"status": "closed"}, {"status": "open", "order": "filed"}, {"status": "open", "tier": "A"},
                   {"status": "open", "assignee": "ann"}]:
        response = admin.get("/v1/complaints", params={**params, "cursor": cursor})
        assert response.status_code == 422 and "items" not in response.json(), params


def test_a_customer_orders_cursor_works_for_that_customer_only(admin, customer, product) -> None:
    other = ok(admin.post("/v1/customers", json={"name": "Other"}))["id"]
    for _ in range(2):
        last = admin.post("/v1/orders", json={"customer_id": customer["id"], "lines": [
            {"sku": product["sku"], "quantity": 1, "unit_price": "1"}]})
    cursor = admin.get(f"/v1/customers/{customer['id']}/orders", params={"limit": 1},
                       headers=after(last)).json()["next_cursor"]
    assert admin.get(f"/v1/customers/{customer['id']}/orders", params={"cursor": cursor}).status_code == 200
    response = admin.get(f"/v1/customers/{other}/orders", params={"cursor": cursor})
    assert response.status_code == 422 and "items" not in response.json()


# ---- nothing internal in any error body ------------------------------------------------------

LEAKS = ["Traceback", 'File "', "SELECT ", "INSERT INTO", "UPDATE ", "psycopg", "sqlalchemy", "eventsourcing",
         "OverflowError", "DataError", "ValueError", "TypeError", "KeyError", "RecursionError", "AttributeError",
         "InvalidValueError", "ValidationError", "OperationalError", "IntegrityError", "BadCursorError",
         "crm.", "/src/", ".py", "site-packages"]


def test_no_error_body_shows_internals(admin, anonymous, customer, order, complaint, product) -> None:
    cid, oid, kid, sku = customer["id"], order["id"], complaint["id"], product["sku"]
    raw = {"content-type": "application/json"}
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/customers", {"content": b'{"name": "a\\u0000b"}', "headers": raw}),
        ("POST", "/v1/customers", {"content": b'{"name": "a\\ud800b"}', "headers": raw}),
        ("POST", "/v1/customers", {"content": b"[" * 100_000 + b"]" * 100_000, "headers": raw}),
        ("POST", "/v1/customers", {"content": b'{"name": "\xff\xfe"}', "headers": raw}),
        ("POST", "/v1/customers", {"content": b'{"name": NaN}', "headers": raw}),
        ("POST", "/v1/customers", {"content": b'{"name": "x", "birthday": 1e999999}', "headers": raw}),
        ("POST", "/v1/customers", {"content": b"{", "headers": raw}),
        ("POST", "/v1/customers", {"content": b"name=x", "headers": {"content-type": "application/x-www-form-urlencoded"}}),
        ("POST", "/v1/customers", {"json": {"name": "x", "email": "a\x00@b.example"}}),
        ("POST", "/v1/customers", {"json": {"name": "x", "special_days": [{"label": "a", "date": "2000-02-30"}]}}),
        ("POST", "/v1/customers", {"json": {"name": ["x"]}}),
        ("POST", "/v1/customers", {"json": {"name": "x", "colour": "red"}}),
        ("PATCH", f"/v1/customers/{uuid.uuid4()}", {"json": {"name": "x"}}),
        ("PATCH", f"/v1/customers/{cid}", {"json": {"name": "x"}, "headers": {"If-Match": "99"}}),
        ("POST", f"/v1/customers/{cid}/visits", {"json": {"visited_on": "2999-01-01", "by": "x"}}),
        ("POST", "/v1/orders", {"json": {"customer_id": cid, "lines": [{"sku": sku, "quantity": 1, "unit_price": "1"}],
                                         "placed_at": "0001-01-01T00:00:00+05:00"}}),
        ("POST", "/v1/orders", {"json": {"customer_id": cid, "lines": [{"sku": "NOPE-1", "quantity": 1, "unit_price": "1"}]}}),
        ("POST", "/v1/orders", {"json": {"customer_id": str(uuid.uuid4()), "lines": [
            {"sku": sku, "quantity": 1, "unit_price": "1e-99999"}]}}),
        ("POST", f"/v1/orders/{oid}/payments", {"json": {"amount": "5"}}),
        ("POST", f"/v1/orders/{oid}/invoice", {"json": {"due_on": "9999-12-31"}}),
        ("POST", f"/v1/orders/{uuid.uuid4()}/ship", {}),
        ("POST", "/v1/complaints", {"json": {"customer_id": cid, "category": "c", "description": "d",
                                             "filed_at": "0001-01-01T00:00:00+05:00"}}),
        ("POST", "/v1/complaints", {"json": {"customer_id": cid, "category": "c", "description": "d", "sku": "NO-SUCH"}}),
        ("POST", f"/v1/complaints/{kid}/confirm", {"json": {"by": "x"}}),
        ("POST", f"/v1/complaints/{kid}/rate", {"json": {"score": True}}),
        ("PUT", "/v1/sla/policy", {"json": {"durations": {"A": "P999999999D"}}}),
        ("PUT", "/v1/sla/policy", {"json": {"calendar": {**CAL, "timezone": "../../etc/passwd"}}}),
        ("PUT", "/v1/sla/policy", {"json": {"calendar": {**CAL, "opens": "25:00"}}}),
        ("PUT", "/v1/tiering/policy", {"json": {"weights": {"order_volume": 1}}}),
        ("POST", "/v1/tiering/runs", {"json": {"as_of": "0001-01-01T00:00:00+05:00"}}),
        ("GET", "/v1/customers?q=a%00b", {}),
        ("GET", "/v1/complaints?assignee=a%00b", {}),
        ("GET", "/v1/customers?q=%ED%A0%80", {}),
        ("GET", "/v1/customers?cursor=" + "A" * 64, {}),
        ("GET", "/v1/customers?cursor=%00%00", {}),
        ("GET", "/v1/customers/not-a-uuid", {}),
        ("GET", f"/v1/customers/{uuid.uuid4()}", {}),
        ("GET", "/v1/customers", {"headers": {"X-Min-Position": "9" * 30}}),
        ("GET", "/v1/reports/tier-transitions?from=0001-01-01&to=9999-12-31", {}),
        ("GET", "/v1/reports/products?from=2025-02-01&to=2025-01-01", {}),
        ("GET", "/v1/reports/profit-by-tier?year=-1", {}),
        ("GET", f"/v1/audit/customers/{cid}/state?as_of=0001-01-01T00:00:00%2B05:00", {}),
        ("GET", f"/v1/audit/customers/{cid}/state?as_of=2020-01-01T00:00:00", {}),
        ("GET", f"/v1/audit/customers/{cid}/history?format=xml", {}),
        ("GET", "/v1/nowhere", {}),
        ("DELETE", "/v1/customers", {}),
        ("PUT", f"/v1/products/{'x' * 100}/standard-cost", {"json": {"standard_cost": "1"}}),
    ]
    for method, path, kwargs in requests:
        response = admin.request(method, path, **kwargs)
        assert response.status_code < 500, (method, path, response.status_code, response.text[:300])
        if response.status_code >= 400:
            assert response.headers["content-type"] == PROBLEM, (method, path)
            for marker in LEAKS:
                assert marker not in response.text, (method, path, marker, response.text[:300])
    unauthenticated = anonymous.post("/v1/customers", json={"name": "x"})
    assert all(marker not in unauthenticated.text for marker in LEAKS)
