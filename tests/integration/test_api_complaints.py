"""Write API for complaints: filing with its SLA clock and every step of the state machine, over HTTP."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from uuid import UUID, uuid4

import pytest
from fastapi.testclient import TestClient

from crm.aggregates.complaint import Complaint
from crm.api.app import create_app
from crm.infra.runtime import Runtime
from tests.conftest import Clock

PROBLEM = "application/problem+json"
UNRATED_SLA, TIER_A_SLA = timedelta(days=10), timedelta(days=3)

# A body each step accepts (from a state that allows it).
BODIES = {
    "assign": {"assignee": "dana"},
    "notes": {"text": "called the customer", "by": "dana"},
    "escalate": {"reason": "second complaint this month"},
    "await-customer": {"reason": "waiting for photos"},
    "resume": {},
    "resolve": {"resolution": "replacement sent", "root_cause": "carrier delay", "by": "dana"},
    "confirm": {"by": "team lead"},
    "rate": {"score": 4, "comment": "fine in the end"},
    "reopen": {"reason": "replacement also late"},
    "close": {"reason": "done"},
}
HANDLER_STEPS = [name for name in BODIES if name != "rate"]


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


def ok(response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert response.headers["ETag"] == f'"{body["version"]}"'
    return body


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def file(client: TestClient, customer_id: str, **fields):
    body = {"customer_id": customer_id, "category": "delivery", "description": "arrived late", **fields}
    return client.post("/v1/complaints", json=body)


def step(client: TestClient, complaint_id: str, name: str, body: dict | None = None,
         if_match: int | str | None = None):
    headers = {} if if_match is None else {"If-Match": str(if_match)}
    return client.post(f"/v1/complaints/{complaint_id}/{name}", json=BODIES[name] if body is None else body,
                       headers=headers)


def take(client: TestClient, complaint_id: str, *names: str) -> dict:
    """Take the complaint through these steps, each of which must succeed; the last result."""
    result: dict = {}
    for name in names:
        result = ok(step(client, complaint_id, name))
    return result


def new_customer(admin: TestClient, name: str = "Initech") -> dict:
    response = admin.post("/v1/customers", json={"name": name, "email": "ops@initech.example"})
    assert response.status_code == 201, response.text
    return response.json()




@pytest.fixture
def clock() -> Clock:
    # In the past, so that nothing recorded here lies in the future of the shared store.
    return Clock(datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=40))


@pytest.fixture
def clocked_admin(runtime: Runtime, clock: Clock) -> TestClient:
    """An admin client of an app whose clock the test controls."""
    key = f"test-clocked-admin-{uuid.uuid4().hex}"
    keyed = Runtime(**{**runtime.__dict__, "api_keys": {**runtime.api_keys, key: "admin"}})
    return TestClient(create_app(keyed, clock=clock), headers={"Authorization": f"Bearer {key}"},
                      raise_server_exceptions=False)


def stored(runtime: Runtime, complaint_id: str) -> Complaint:
    complaint = runtime.store.repository.get(UUID(complaint_id))
    assert isinstance(complaint, Complaint)
    return complaint


# --- filing -------------------------------------------------------------------------------------

def test_filing_a_complaint_answers_201_with_an_unrated_customers_ten_day_clock(admin, customer):
    before = datetime.now(timezone.utc)
    response = file(admin, customer["id"], channel="phone")
    after = datetime.now(timezone.utc)

    body = ok(response, 201)
    assert body["id"] and body["version"] == 1
    assert isinstance(body["position"], int) and body["position"] > 0
    assert body["tier"] is None
    due, warn = at(body["due_at"]), at(body["warn_at"])
    assert before + UNRATED_SLA <= due <= after + UNRATED_SLA
    assert due - warn == UNRATED_SLA * 0.2  # the warning comes at 80 % of the time
    assert response.headers["Location"] == f"/v1/complaints/{body['id']}"


def test_a_back_dated_complaint_is_accepted_and_due_ten_days_after_its_filing(admin, customer):
    filed_at = datetime(2025, 3, 1, 9, 30, tzinfo=timezone.utc)

    body = ok(file(admin, customer["id"], filed_at=filed_at.isoformat()), 201)

    assert at(body["due_at"]) == filed_at + UNRATED_SLA
    assert at(body["warn_at"]) == filed_at + UNRATED_SLA * 0.8


def test_deadlines_of_a_complaint_filed_with_an_offset_are_returned_in_utc(admin, customer):
    filed_at = datetime(2025, 3, 1, 11, 30, tzinfo=timezone(timedelta(hours=2)))

    body = ok(file(admin, customer["id"], filed_at=filed_at.isoformat()), 201)

    due = at(body["due_at"])
    assert due == filed_at + UNRATED_SLA
    assert due.utcoffset() == timedelta(0)


def test_a_tier_a_customer_gets_a_three_day_clock(admin, customer):
    override = admin.post(f"/v1/customers/{customer['id']}/tier-override",
                          json={"tier": "A", "reason": "strategic account", "approved_by": "head of sales"})
    assert override.status_code == 201, override.text
    before = datetime.now(timezone.utc)

    body = ok(file(admin, customer["id"]), 201)

    assert body["tier"] == "A"
    due = at(body["due_at"])
    assert before + TIER_A_SLA <= due <= datetime.now(timezone.utc) + TIER_A_SLA
    assert due - at(body["warn_at"]) == TIER_A_SLA * 0.2


def test_a_complaint_may_name_the_customers_own_order_and_its_sku(admin, customer, order, product):
    body = ok(file(admin, customer["id"], order_id=order["id"], sku=product["sku"]), 201)

    assert body["position"] > order["position"]


@pytest.mark.parametrize("role", ["admin", "agent", "customer"])
def test_staff_and_the_customer_itself_may_file_complaints(clients, customer_client, customer, role):
    caller = customer_client(customer["id"]) if role == "customer" else clients[role]

    body = ok(file(caller, customer["id"]), 201)

    assert body["version"] == 1 and body["tier"] is None


def test_a_customer_key_filing_for_another_customer_is_forbidden(admin, customer_client, customer):
    other = new_customer(admin)

    assert_problem(file(customer_client(customer["id"]), other["id"]), 403)


@pytest.mark.parametrize("role", ["sales", "auditor"])
def test_roles_without_complaints_file_may_not_file(clients, customer, role):
    assert_problem(file(clients[role], customer["id"]), 403)


# --- filing: bad input --------------------------------------------------------------------------

@pytest.mark.parametrize("missing", ["customer_id", "category", "description"])
def test_a_complaint_without_a_required_field_is_invalid_input(admin, customer, missing):
    body = {"customer_id": customer["id"], "category": "delivery", "description": "arrived late"}
    del body[missing]

    problem = assert_problem(admin.post("/v1/complaints", json=body), 422)
    assert any(missing in error["loc"] for error in problem["errors"])


BAD_FILINGS = {
    "empty category": {"category": ""},
    "empty description": {"description": ""},
    "filed in the future": {"filed_at": (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()},
    "filed without utc offset": {"filed_at": "2025-03-01T09:30:00"},
    "unknown order": {"order_id": str(uuid4())},
    "unknown sku": {"sku": f"NOPE-{uuid4().hex[:8]}"},
    "malformed sku": {"sku": "no spaces allowed"},
    "unknown field": {"severity": "high"},
}


@pytest.mark.parametrize("fields", BAD_FILINGS.values(), ids=BAD_FILINGS.keys())
def test_a_complaint_with_bad_input_is_refused(admin, customer, fields):
    assert_problem(file(admin, customer["id"], **fields), 422)


def test_a_complaint_for_an_unknown_customer_is_invalid_input(admin):
    assert "customer" in assert_problem(file(admin, str(uuid4())), 422)["detail"]


def test_a_complaint_naming_another_customers_order_is_invalid_input(admin, order):
    other = new_customer(admin)

    problem = assert_problem(file(admin, other["id"], order_id=order["id"]), 422)
    assert "order" in problem["detail"]


# --- steps: success -----------------------------------------------------------------------------

def test_the_full_lifecycle_of_a_complaint(clocked_admin, clock, runtime, customer):
    filed = ok(file(clocked_admin, customer["id"]), 201)
    cid, filed_at = filed["id"], clock.now
    assert at(filed["due_at"]) == filed_at + UNRATED_SLA
    versions, positions = [filed["version"]], [filed["position"]]

    def go(name: str, status: str, advance: timedelta = timedelta(minutes=5)) -> dict:
        clock.advance(advance)
        result = ok(step(clocked_admin, cid, name, if_match=versions[-1]))
        assert result["id"] == cid
        assert result["status"] == status, name
        versions.append(result["version"])
        positions.append(result["position"])
        return result

    go("assign", "in_progress")
    go("notes", "in_progress")
    go("escalate", "in_progress")
    go("await-customer", "awaiting_customer")
    due_before_pause = stored(runtime, cid).deadlines.due_at
    go("resume", "in_progress", advance=timedelta(days=2))
    assert stored(runtime, cid).deadlines.due_at == due_before_pause + timedelta(days=2)
    go("resolve", "resolved")
    go("confirm", "confirmed")
    go("rate", "confirmed")
    go("reopen", "in_progress")
    assert stored(runtime, cid).deadlines.due_at == clock.now + UNRATED_SLA  # the clock starts afresh
    go("resolve", "resolved")
    go("close", "closed")

    assert versions == list(range(1, 13))
    assert positions == sorted(positions) and len(set(positions)) == len(positions)


def test_resuming_after_awaiting_the_customer_answers_with_a_status_and_work_goes_on(admin, complaint):
    take(admin, complaint["id"], "await-customer")

    resumed = ok(step(admin, complaint["id"], "resume"))

    assert resumed["status"] == "open"  # never assigned, so back to open
    assert resumed["version"] == 3
    assigned = ok(step(admin, complaint["id"], "assign", if_match=3))
    assert assigned["status"] == "in_progress"
    assert ok(step(admin, complaint["id"], "resolve"))["status"] == "resolved"


def test_an_agent_may_handle_a_complaint_from_assignment_to_closing(clients, complaint):
    agent = clients["agent"]

    results = [ok(step(agent, complaint["id"], name)) for name in ("assign", "resolve", "confirm", "close")]

    assert [r["status"] for r in results] == ["in_progress", "resolved", "confirmed", "closed"]
    assert [r["version"] for r in results] == [2, 3, 4, 5]


def test_notes_may_still_be_added_to_a_resolved_complaint(admin, complaint):
    take(admin, complaint["id"], "resolve")

    assert ok(step(admin, complaint["id"], "notes"))["status"] == "resolved"


def test_a_complaint_may_be_escalated_more_than_once(admin, complaint):
    first = ok(step(admin, complaint["id"], "escalate"))
    second = ok(step(admin, complaint["id"], "escalate", {}))

    assert second["version"] == first["version"] + 1 and second["status"] == "open"


def test_a_customer_key_may_rate_its_own_resolved_complaint(admin, customer_client, customer, complaint):
    take(admin, complaint["id"], "resolve")

    body = ok(step(customer_client(customer["id"]), complaint["id"], "rate", {"score": 5}))

    assert body["status"] == "resolved" and body["version"] == 3


def test_a_reopened_complaint_may_be_rated_again_after_its_new_resolution(admin, complaint):
    take(admin, complaint["id"], "resolve", "rate", "reopen", "resolve")

    assert ok(step(admin, complaint["id"], "rate", {"score": 2}))["version"] == 6


# --- steps: bad input ---------------------------------------------------------------------------

BAD_STEPS = {
    "assign without assignee": ("assign", {}),
    "assign to nobody": ("assign", {"assignee": ""}),
    "note without text": ("notes", {"by": "dana"}),
    "note without author": ("notes", {"text": "called"}),
    "resolve without resolution": ("resolve", {"by": "dana"}),
    "resolve without by": ("resolve", {"resolution": "refund"}),
    "confirm without by": ("confirm", {}),
    "reopen without reason": ("reopen", {}),
    "resume with a field it does not take": ("resume", {"at": "now"}),
}


@pytest.mark.parametrize(("name", "body"), BAD_STEPS.values(), ids=BAD_STEPS.keys())
def test_a_complaint_step_with_bad_input_is_refused_and_changes_nothing(admin, complaint, name, body):
    assert_problem(step(admin, complaint["id"], name, body), 422)

    assert ok(step(admin, complaint["id"], "assign", if_match=1))["version"] == 2


@pytest.mark.parametrize("score", [0, 6, -1, "5", 4.5, None], ids=["0", "6", "-1", "string", "fraction", "null"])
def test_a_rating_outside_one_to_five_whole_numbers_is_invalid_input(admin, complaint, score):
    resolved = take(admin, complaint["id"], "resolve")

    assert_problem(step(admin, complaint["id"], "rate", {"score": score}), 422)

    assert ok(step(admin, complaint["id"], "rate", {"score": 1}, if_match=resolved["version"]))["version"] == 3


# --- access -------------------------------------------------------------------------------------

def every_endpoint(complaint_id: str, customer_id: str) -> list[tuple[str, dict]]:
    filing = {"customer_id": customer_id, "category": "delivery", "description": "late"}
    return [("/v1/complaints", filing)] + [(f"/v1/complaints/{complaint_id}/{name}", body)
                                          for name, body in BODIES.items()]


ENDPOINT_IDS = ["file", *BODIES]


@pytest.mark.parametrize("endpoint", range(len(ENDPOINT_IDS)), ids=ENDPOINT_IDS)
@pytest.mark.parametrize("key", [None, "not-a-key-anyone-has"], ids=["no key", "unknown key"])
def test_complaint_endpoints_refuse_callers_without_a_valid_key(anonymous, complaint, customer, endpoint, key):
    path, body = every_endpoint(complaint["id"], customer["id"])[endpoint]
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}

    response = anonymous.post(path, json=body, headers=headers)

    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("name", HANDLER_STEPS)
@pytest.mark.parametrize("role", ["sales", "auditor"])
def test_roles_without_complaints_handle_may_not_take_steps(clients, admin, complaint, role, name):
    assert_problem(step(clients[role], complaint["id"], name), 403)

    assert ok(step(admin, complaint["id"], "assign", if_match=1))["version"] == 2


@pytest.mark.parametrize("name", HANDLER_STEPS)
def test_a_customer_key_may_not_handle_even_its_own_complaint(customer_client, customer, complaint, name):
    assert_problem(step(customer_client(customer["id"]), complaint["id"], name), 403)


@pytest.mark.parametrize("role", ["sales", "auditor"])
def test_roles_without_complaints_rate_may_not_rate(clients, admin, complaint, role):
    take(admin, complaint["id"], "resolve")

    assert_problem(step(clients[role], complaint["id"], "rate"), 403)

    assert ok(step(admin, complaint["id"], "rate", if_match=2))["version"] == 3


def test_a_customer_key_rating_another_customers_complaint_is_forbidden(admin, customer_client, complaint):
    other = new_customer(admin)
    take(admin, complaint["id"], "resolve")

    assert_problem(step(customer_client(other["id"]), complaint["id"], "rate", {"score": 1}), 403)

    assert ok(step(admin, complaint["id"], "rate", {"score": 4}, if_match=2))["version"] == 3


@pytest.mark.parametrize("name", list(BODIES))
def test_a_step_on_an_unknown_complaint_is_not_found(admin, name):
    assert_problem(step(admin, str(uuid4()), name), 404)


def test_a_step_on_the_id_of_an_order_is_not_found(admin, order):
    assert_problem(step(admin, order["id"], "assign"), 404)


# --- conflicts ----------------------------------------------------------------------------------

def test_a_stale_if_match_is_a_conflict_and_changes_nothing(admin, complaint):
    take(admin, complaint["id"], "assign")  # now at version 2

    problem = assert_problem(step(admin, complaint["id"], "resolve", if_match=1), 409)
    assert "version" in problem["detail"]

    assert ok(step(admin, complaint["id"], "resolve", if_match=2))["version"] == 3


# (steps taken first, the illegal step, a legal step that must still find the old version)
ILLEGAL = {
    "confirm before resolve": ((), "confirm", "resolve"),
    "rate before resolve": ((), "rate", "assign"),
    "close an open complaint": ((), "close", "notes"),
    "reopen an open complaint": ((), "reopen", "escalate"),
    "resume what is not paused": (("assign",), "resume", "await-customer"),
    "await the customer twice": (("await-customer",), "await-customer", "resume"),
    "resolve while awaiting the customer": (("await-customer",), "resolve", "resume"),
    "resolve twice": (("resolve",), "resolve", "confirm"),
    "assign a resolved complaint": (("resolve",), "assign", "reopen"),
    "rate twice": (("resolve", "rate"), "rate", "close"),
    "confirm twice": (("resolve", "confirm"), "confirm", "close"),
    "close twice": (("resolve", "close"), "close", "reopen"),
    "note on a closed complaint": (("resolve", "close"), "notes", "reopen"),
    "escalate a closed complaint": (("resolve", "close"), "escalate", "reopen"),
}


@pytest.mark.parametrize(("before", "name", "then"), ILLEGAL.values(), ids=ILLEGAL.keys())
def test_an_illegal_transition_is_a_conflict_and_changes_nothing(admin, complaint, before, name, then):
    version = take(admin, complaint["id"], *before)["version"] if before else complaint["version"]

    problem = assert_problem(step(admin, complaint["id"], name), 409)
    assert problem["type"] == "urn:crm:problem:business-rule"

    # The complaint is still at the version it had: a step expecting that version succeeds.
    assert ok(step(admin, complaint["id"], then, if_match=version))["version"] == version + 1


@pytest.mark.parametrize("step", ["escalate", "await-customer"])
def test_steps_whose_fields_are_all_optional_need_no_body(admin, complaint, step) -> None:
    response = admin.post(f"/v1/complaints/{complaint['id']}/{step}")
    assert response.status_code == 200


def test_a_back_dated_complaint_gets_the_tier_the_customer_held_then(admin, customer) -> None:
    cid = customer["id"]
    assert admin.post(f"/v1/customers/{cid}/tier-override",
                      json={"tier": "A", "reason": "key account", "approved_by": "cfo"}).status_code == 201
    earlier = admin.post("/v1/complaints", json={"customer_id": cid, "category": "billing", "description": "old",
                                                 "filed_at": "2024-01-10T09:00:00+00:00"})
    now = admin.post("/v1/complaints", json={"customer_id": cid, "category": "billing", "description": "new"})
    assert earlier.json()["tier"] is None and earlier.json()["due_at"] == "2024-01-20T09:00:00Z"
    assert now.json()["tier"] == "A"
