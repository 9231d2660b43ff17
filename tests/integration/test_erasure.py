"""GDPR erasure: personal data sealed per customer; erasure destroys the key, history stays verifiable."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from uuid import UUID

import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from crm.aggregates.complaint import Complaint
from crm.infra import audit
from crm.infra.audit_chain import HashChainer
from crm.infra.audit_history import customer_as_of, history
from crm.infra.rebuild import checksums, rebuild
from crm.projections import PROJECTIONS
from tests.conftest import KEYS, _client
from tests.integration.test_kafka import consume_all, start_relay, wait_published

PERSONAL = {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 7946 0000",
            "birthday": "1915-12-10", "special_days": [{"label": "first program", "date": "1843-07-01"}]}


def stored_bytes(rt) -> bytes:  # type: ignore[no-untyped-def]
    with rt.pool.connection() as conn:
        return b"".join(bytes(r[0]) for r in conn.execute("SELECT state FROM crm_events ORDER BY notification_id"))


def ok(response) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code in (200, 201), response.text
    return response.json()


def a_customer_with_business(rt, admin) -> dict:  # type: ignore[no-untyped-def]
    """A customer with personal data, an order, a profile change and a complaint the customer was
    told the resolution of (CustomerNotified recorded through the aggregate, as the notifier does)."""
    sku = f"S-{uuid.uuid4().hex[:6]}"
    ok(admin.post("/v1/products", json={"sku": sku, "name": "Gear", "standard_cost": "6", "list_price": "10"}))
    customer = ok(admin.post("/v1/customers", json={**PERSONAL, "industry": "maths", "region": "London"}))["id"]
    ok(admin.patch(f"/v1/customers/{customer}", json={"phone": "+44 20 7946 0001", "region": "Surrey"}))
    order = ok(admin.post("/v1/orders", json={"customer_id": customer,
                                              "lines": [{"sku": sku, "quantity": 3, "unit_price": "10"}]}))["id"]
    complaint = ok(admin.post("/v1/complaints", json={"customer_id": customer, "category": "quality",
                                                      "description": "gear slips"}))["id"]
    for step, body in (("resolve", {"resolution": "replaced", "by": "dana"}), ("confirm", {"by": "lead"})):
        ok(admin.post(f"/v1/complaints/{complaint}/{step}", json=body))
    aggregate = rt.store.repository.get(UUID(complaint))
    aggregate.record_customer_notified(channel="email", address=PERSONAL["email"],
                                       occurred_at=datetime.now(timezone.utc), actor="notifier")
    rt.store.save(aggregate)
    return {"customer": customer, "order": order, "complaint": complaint, "position": rt.store.position()}


def test_personal_data_is_never_stored_in_the_clear(fresh_system) -> None:
    rt, admin = fresh_system(with_runners=False)
    made = a_customer_with_business(rt, admin)
    stored = stored_bytes(rt)
    for value in ("Ada Lovelace", "ada@example.com", "7946", "1915-12-10", "first program"):
        assert value.encode() not in stored, value
    assert b"London" in stored and b"gear slips" in stored  # business data stays readable
    # ... yet every reader gets it back through the mapper
    profile = rt.store.repository.get(UUID(made["customer"])).profile
    assert profile["name"] == PERSONAL["name"] and profile["email"] == PERSONAL["email"]
    assert profile["phone"] == "+44 20 7946 0001" and profile["birthday"].isoformat() == PERSONAL["birthday"]
    assert profile["special_days"][0]["label"] == "first program"
    notified = rt.store.repository.get(UUID(made["complaint"]))
    (event,) = [e for e in rt.store.events.get(notified.id) if type(e).__name__ == "CustomerNotified"]
    assert event.address == PERSONAL["email"] and str(event.customer_id) == made["customer"]


def test_only_admins_erase_and_bad_requests_change_nothing(fresh_system) -> None:
    rt, admin = fresh_system(with_runners=False)
    customer = a_customer_with_business(rt, admin)["customer"]
    path = f"/v1/customers/{customer}/erase"
    for role in ("sales", "agent", "auditor"):
        assert _client(admin.app, KEYS[role]).post(path, json={"reason": "x"}).status_code == 403, role
    head = rt.store.position()
    assert admin.post(path, json={}).status_code == 422
    assert admin.post(path, json={"reason": ""}).status_code == 422
    assert admin.post(f"/v1/customers/{uuid.uuid4()}/erase", json={"reason": "x"}).status_code == 404
    assert admin.post(path, json={"reason": "x"}, headers={"If-Match": "1"}).status_code == 409
    assert rt.store.position() == head
    assert rt.store.repository.get(UUID(customer)).profile["name"] == PERSONAL["name"]


def test_erasure_end_to_end(fresh_system, kafka_broker) -> None:
    rt, admin = fresh_system()
    made = a_customer_with_business(rt, admin)
    customer, complaint = made["customer"], made["complaint"]
    chainer = HashChainer(rt.store, rt.database_url, checkpoint_every=3)
    before_erasure = datetime.now(timezone.utc)
    timeline = ok(admin.get(f"/v1/complaints/{complaint}", headers={"X-Min-Position": str(made["position"])}))
    notified = [s for s in timeline["timeline"] if s["type"] == "CustomerNotified"]
    assert notified and notified[0]["details"]["address"] == PERSONAL["email"]
    try:
        chainer.catch_up()
        erased = ok(admin.post(f"/v1/customers/{customer}/erase", json={"reason": "GDPR art. 17 request"}))
        assert admin.post(f"/v1/customers/{customer}/erase", json={"reason": "again"}).status_code == 409
        chainer.catch_up()
        report = audit.verify(rt.store, rt.pool, None)
    finally:
        chainer.close()
    assert report.ok and report.events_checked == erased["position"], report

    # The aggregate, the as-of state (even before the erasure: the data itself is gone) and history.
    for state in (rt.store.repository.get(UUID(customer)), customer_as_of(rt.store, UUID(customer), before_erasure)):
        assert state.profile == {**state.profile, "name": "[erased]", "email": None, "phone": None,
                                 "birthday": None, "special_days": []}
        assert state.profile["region"] == "Surrey" and state.profile["industry"] == "maths"
    lines = [json.loads(line) for line in history(rt.store, rt.pool, UUID(customer))]
    registered = next(e for e in lines if e["type"] == "Registered")["data"]
    assert registered["name"] == "[erased]" and registered["email"] is None and registered["region"] == "London"
    assert next(e for e in lines if e["type"] == "ProfileUpdated")["data"]["changes"] == {
        "phone": None, "region": "Surrey"}
    assert next(e for e in lines if e["type"] == "CustomerNotified")["data"]["address"] == "[erased]"
    assert [e["type"] for e in lines][-1] == "PersonalDataErased"
    assert all(PERSONAL["email"] not in json.dumps(e) and PERSONAL["name"] not in json.dumps(e) for e in lines)

    # Read models: the profile is erased, business facts (orders, profit, complaints) remain.
    min_pos = {"X-Min-Position": str(erased["position"])}
    view = ok(admin.get(f"/v1/customers/{customer}", headers=min_pos))
    assert view["erased"] is True and view["name"] == "[erased]" and view["email"] is None
    assert view["birthday"] is None and view["special_days"] == []
    assert len(ok(admin.get(f"/v1/customers/{customer}/orders", headers=min_pos))["items"]) == 1
    steps = ok(admin.get(f"/v1/complaints/{complaint}", headers=min_pos))["timeline"]
    assert [s["details"]["address"] for s in steps if s["type"] == "CustomerNotified"] == ["[erased]"]

    # A rebuild after the erasure derives the same erased read models from the unchanged log.
    before = checksums(rt.store)
    for name in PROJECTIONS:
        rebuild(rt.store, rt.database_url, name)
    assert checksums(rt.store) == before

    # Downstream: Kafka consumers receive the erasure, and nothing published since holds the data.
    relay = start_relay(rt, kafka_broker.bootstrap)
    try:
        wait_published(relay, erased["position"])
    finally:
        relay.stop()
    events = [json.loads(r.value) for r in consume_all(kafka_broker.bootstrap, erased["position"])]
    ours = [e for e in events if e["subject"] == customer]
    assert ours[-1]["type"] == "crm.customer.PersonalDataErased.v1"
    assert ours[-1]["data"]["reason"] == "GDPR art. 17 request"
    assert ours[0]["data"]["name"] == "[erased]" and ours[0]["data"]["region"] == "London"


def test_a_repeated_erase_finishes_one_that_crashed_before_destroying_the_key(fresh_system) -> None:
    rt, admin = fresh_system(with_runners=False)
    customer = UUID(a_customer_with_business(rt, admin)["customer"])
    aggregate = rt.store.repository.get(customer)  # the event saved, the key destruction never ran
    aggregate.erase_personal_data(reason="crash test", occurred_at=datetime.now(timezone.utc), actor="admin")
    rt.store.save(aggregate)
    rt.store.mapper.keys.forget(customer, erased=False)
    with rt.pool.connection() as conn:
        assert conn.execute("SELECT key IS NOT NULL FROM crm_personal_keys WHERE customer_id = %s",
                            (customer,)).fetchone() == (True,)
    assert admin.post(f"/v1/customers/{customer}/erase", json={"reason": "again"}).status_code == 409
    with rt.pool.connection() as conn:
        assert conn.execute("SELECT key IS NULL, erased_at IS NOT NULL FROM crm_personal_keys "
                            "WHERE customer_id = %s", (customer,)).fetchone() == (True, True)


def test_sealed_data_moved_to_another_event_does_not_open(fresh_system) -> None:
    rt, admin = fresh_system(with_runners=False)
    customer = UUID(a_customer_with_business(rt, admin)["customer"])
    registered, updated = rt.store.recorder.select_events(customer, limit=2)
    seal = json.loads(registered.state)["_personal"]
    forged_state = json.loads(updated.state)
    forged_state["_personal"] = {**seal, "fields": ["phone"]}
    forged = StoredEvent(originator_id=updated.originator_id, originator_version=updated.originator_version,
                         topic=updated.topic, state=json.dumps(forged_state).encode())
    with pytest.raises(ValueError, match="does not open"):
        rt.store.mapper.to_domain_event(forged)


def test_a_version_1_customer_notified_is_upcast_without_a_customer(fresh_system) -> None:
    rt, _ = fresh_system(with_runners=False)
    v1 = {"timestamp": {"_type_": "datetime_iso", "_data_": "2026-01-02T03:04:05+00:00"},
          "originator_topic": "crm.aggregates.complaint:Complaint", "channel": "email", "address": "old@example.com",
          "confirmation_version": 7, "occurred_at": {"_type_": "datetime_iso", "_data_": "2026-01-02T03:04:05+00:00"},
          "actor": "notifier"}
    stored = StoredEvent(originator_id=uuid.uuid4(), originator_version=9, topic=get_topic(Complaint.CustomerNotified),
                         state=json.dumps(v1).encode())
    event = rt.store.mapper.to_domain_event(stored)
    assert event.customer_id is None and event.address == "old@example.com" and event.confirmation_version == 7


def _key_rows(rt, customer: UUID) -> list:  # type: ignore[no-untyped-def]
    """(key, xmin of the key row, xmin of the customer's first event): the rows one transaction
    wrote carry the same xmin."""
    with rt.pool.connection() as conn:
        return conn.execute("SELECT k.key, k.xmin::text, e.xmin::text FROM crm_personal_keys k "
                            "LEFT JOIN crm_events e ON e.originator_id = k.customer_id AND e.originator_version = 1 "
                            "WHERE k.customer_id = %s", (customer,)).fetchall()


def _registered(customer: UUID, name: str):  # type: ignore[no-untyped-def]
    """A customer's first event with a chosen id (Customer.register makes its own)."""
    from crm.aggregates.customer import Customer

    now = datetime.now(timezone.utc)
    return Customer.Registered(originator_id=customer, originator_version=1, timestamp=now,  # type: ignore[call-arg]
                               originator_topic=get_topic(Customer), name=name, email=PERSONAL["email"], phone=None,
                               industry=None, region=None, birthday=None, special_days=[], owner=None,
                               occurred_at=now, actor="test")


def test_a_new_customer_s_key_is_stored_in_the_transaction_of_its_first_event(fresh_system) -> None:
    from crm.aggregates.customer import Customer
    from crm.infra.event_store import open_event_store
    from crm.infra.personal_data import WithNewKey

    rt, admin = fresh_system(with_runners=False)
    customer = UUID(ok(admin.post("/v1/customers", json=PERSONAL))["id"])
    [(key, key_xmin, event_xmin)] = _key_rows(rt, customer)
    assert key_xmin == event_xmin  # one transaction: the key exists exactly when the customer does
    assert rt.store.mapper.keys._cache[customer][0] == bytes(key)  # cached once committed
    # the key goes with the mapped event; the library's own save path stores it the same way
    assert type(rt.store.mapper.to_stored_event(_registered(uuid.uuid4(), "Mapped"))) is WithNewKey
    saved = Customer.register(name="Via save", occurred_at=datetime.now(timezone.utc), actor="test")
    rt.store.save(saved)
    [(_, key_xmin, event_xmin)] = _key_rows(rt, saved.id)
    assert key_xmin == event_xmin
    other = open_event_store(rt.database_url)  # a process that never saw the keys reads them from the table
    try:
        assert other.customers.get(customer).profile["name"] == PERSONAL["name"]
        assert other.customers.get(saved.id).profile["name"] == "Via save"
    finally:
        other.close()


def test_a_registration_that_fails_leaves_its_key_out_and_a_taken_key_fails_it(fresh_system) -> None:
    from eventsourcing.persistence import IntegrityError

    rt, _ = fresh_system(with_runners=False)
    keys, commit = rt.store.mapper.keys, rt.store.group_commit
    first = uuid.uuid4()
    commit.append([rt.store.mapper.to_stored_event(_registered(first, "First"))])
    [(key, _, _)] = _key_rows(rt, first)
    # the same id registered again: its event clashes, and the key made with it is neither stored
    # nor cached (the first key stays, and still opens the first event)
    clash = rt.store.mapper.to_stored_event(_registered(first, "Again"))
    assert clash.new_key != bytes(key)
    with pytest.raises(IntegrityError):
        commit.append([clash])
    assert [bytes(row[0]) for row in _key_rows(rt, first)] == [bytes(key)]
    assert rt.store.customers.get(first).profile["name"] == "First"
    # a key row for an id with no events (here a tombstone) fails that id's registration, which
    # stores nothing: never an event sealed under a key other than the stored one
    erased = uuid.uuid4()
    keys.destroy(erased)  # (this process now has the tombstone cached, too)
    position = rt.store.position()
    with pytest.raises(IntegrityError):
        commit.append([rt.store.mapper.to_stored_event(_registered(erased, "Late"))])
    assert rt.store.position() == position and len(_key_rows(rt, erased)) == 1


def test_a_customer_s_later_events_saved_with_its_first_are_sealed_with_its_new_key(fresh_system) -> None:
    """A new customer's profile changed before its first save: every event goes in one transaction,
    sealed with the one new key; no second key is made on the side."""
    from crm.aggregates.customer import Customer
    from crm.infra.event_store import open_event_store

    rt, _ = fresh_system(with_runners=False)
    customer = Customer.register(name="Early", email="early@example.com", occurred_at=datetime.now(timezone.utc),
                                 actor="test")
    customer.update_profile({"phone": "+44 20 7946 0002"}, occurred_at=datetime.now(timezone.utc), actor="test")
    rt.store.group_commit.save(customer)
    [(_, key_xmin, event_xmin)] = _key_rows(rt, customer.id)
    assert key_xmin == event_xmin
    other = open_event_store(rt.database_url)
    try:
        assert other.customers.get(customer.id).profile["phone"] == "+44 20 7946 0002"
    finally:
        other.close()
    assert rt.store.mapper.keys._pending == {}  # nothing left pending once stored


def test_a_pending_key_serves_only_the_thread_that_made_it(fresh_system) -> None:
    """Until its registration commits, a new key seals only the events the same thread maps with
    it (the same save): another thread's event for that id must not be sealed with a key whose
    registration may yet fail."""
    from concurrent.futures import ThreadPoolExecutor

    from crm.infra.personal_data import MissingKeyError

    rt, _ = fresh_system(with_runners=False)
    keys, customer = rt.store.mapper.keys, uuid.uuid4()
    made = rt.store.mapper.to_stored_event(_registered(customer, "Pending"))  # not stored
    assert keys.key_for(customer, create=False) == made.new_key  # this thread: its own save
    with ThreadPoolExecutor(1) as other:
        with pytest.raises(MissingKeyError):
            other.submit(keys.key_for, customer, create=False).result()
    keys.settle([made], committed=False)
    with pytest.raises(MissingKeyError):
        keys.key_for(customer, create=False)


def test_group_commit_stores_each_new_customer_s_key_with_its_batch(fresh_system) -> None:
    """Concurrent registrations share transactions; one that clashes fails alone, the others are
    stored with their keys, each key in the transaction of its customer's event."""
    from concurrent.futures import ThreadPoolExecutor

    from eventsourcing.persistence import IntegrityError

    rt, _ = fresh_system(with_runners=False)
    taken = uuid.uuid4()
    rt.store.group_commit.append([rt.store.mapper.to_stored_event(_registered(taken, "Taken"))])
    ids = [uuid.uuid4() for _ in range(40)] + [taken]
    batches = rt.store.group_commit.batches

    def register(customer: UUID) -> str:
        try:
            rt.store.group_commit.append([rt.store.mapper.to_stored_event(_registered(customer, "Batch"))])
            return "stored"
        except IntegrityError:
            return "conflict"

    with ThreadPoolExecutor(16) as pool:
        results = dict(zip(ids, pool.map(register, ids)))
    assert results.pop(taken) == "conflict" and set(results.values()) == {"stored"}
    assert rt.store.group_commit.batches - batches < len(ids)  # some shared a transaction
    for customer in results:
        [(_, key_xmin, event_xmin)] = _key_rows(rt, customer)
        assert key_xmin == event_xmin
        rt.store.mapper.keys.forget(customer, erased=False)
        assert rt.store.customers.get(customer).profile["name"] == "Batch"


def test_copy_events_refuses_events_whose_key_it_would_not_store(fresh_system) -> None:
    from crm.infra.event_store import copy_events

    rt, _ = fresh_system(with_runners=False)
    position = rt.store.position()
    with pytest.raises(ValueError, match="no personal-data keys"):
        copy_events(rt.store, [rt.store.mapper.to_stored_event(_registered(uuid.uuid4(), "Copied"))])
    assert rt.store.position() == position


def test_the_event_store_refuses_a_recorder_that_would_not_store_new_customers_keys(fresh_system, monkeypatch) -> None:
    from eventsourcing.postgres import PostgresApplicationRecorder

    from crm.infra.event_store import open_event_store

    rt, _ = fresh_system(with_runners=False)
    monkeypatch.setenv("CRM_APPLICATION_RECORDER_TOPIC", get_topic(PostgresApplicationRecorder))
    with pytest.raises(ValueError, match="needs CrmRecorder"):
        open_event_store(rt.database_url)
