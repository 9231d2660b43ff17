"""Audit: history and as-of state from the event store, the hash chain and its verification, access."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator
from uuid import UUID

import pytest
from fastapi.testclient import TestClient

from crm.api.app import create_app
from crm.api.permissions import PERMISSIONS
from crm.api.routes import audit as audit_routes
from crm.infra import audit
from crm.infra.audit_chain import HashChainer
from crm.infra.runtime import Runtime
from tests.conftest import KEYS, Clock

UTC = timezone.utc




@dataclass
class AuditSystem:
    runtime: Runtime
    clock: Clock
    clients: dict[str, TestClient]
    chainer: HashChainer

    @property
    def admin(self) -> TestClient:
        return self.clients["admin"]

    @property
    def auditor(self) -> TestClient:
        return self.clients["auditor"]

    def sql(self, query: str, params: Any = ()) -> list[tuple]:
        with self.runtime.pool.connection() as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def verify(self, checkpoint: dict | None = None) -> audit.VerifyReport:
        return audit.verify(self.runtime.store, self.runtime.pool, checkpoint)


@pytest.fixture(autouse=True)
def audit_permissions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit permissions, until the shared table carries them (then this changes nothing)."""
    for action, roles in (("audit.read", {"admin", "auditor"}), ("audit.admin", {"admin"})):
        if action not in PERMISSIONS:
            monkeypatch.setitem(PERMISSIONS, action, frozenset(roles))


@pytest.fixture
def system(fresh_system: Callable[..., tuple[Runtime, TestClient]]) -> Iterator[AuditSystem]:
    """A crm on its own database, with the audit routes, a client per role and a chainer (not running)."""
    clock = Clock(datetime.now(UTC).replace(microsecond=0) - timedelta(days=30))
    runtime, _ = fresh_system(clock=clock, with_runners=False)  # audit reads never touch read models
    app = create_app(runtime, clock=clock)
    if not any(getattr(route, "path", "").startswith("/v1/audit/") for route in app.routes):
        app.include_router(audit_routes.router)
    keys = {**KEYS, "nobody": "not-a-configured-key"}
    clients = {role: TestClient(app, headers={"Authorization": f"Bearer {key}"}, raise_server_exceptions=True)
               for role, key in keys.items()}
    clients["anonymous"] = TestClient(app, raise_server_exceptions=False)
    chainer = HashChainer(runtime.store, runtime.database_url, checkpoint_every=5)
    yield AuditSystem(runtime, clock, clients, chainer)
    chainer.close()


def created(response: Any) -> dict:
    assert response.status_code in (200, 201), response.text
    return response.json()


def register(system: AuditSystem, name: str = "Globex") -> str:
    return created(system.admin.post("/v1/customers", json={"name": name, "region": "North"}))["id"]


def product(system: AuditSystem, sku: str = "WIDGET-1") -> str:
    created(system.admin.post("/v1/products", json={"sku": sku, "name": "Widget", "standard_cost": "2.50",
                                                    "list_price": "4.00"}))
    return sku


def place_order(system: AuditSystem, customer: str, sku: str) -> str:
    return created(system.admin.post("/v1/orders", json={"customer_id": customer, "lines": [
        {"sku": sku, "quantity": 2, "unit_price": "4.00"}]}))["id"]


def file_complaint(system: AuditSystem, customer: str) -> str:
    return created(system.admin.post("/v1/complaints", json={"customer_id": customer, "category": "delivery",
                                                             "description": "late"}))["id"]


def events_of(system: AuditSystem, *aggregate_ids: str) -> list[tuple]:
    return system.sql("SELECT notification_id, originator_id::text, originator_version, topic FROM crm_events "
                      "WHERE originator_id = ANY(%s::uuid[]) ORDER BY notification_id", (list(aggregate_ids),))


def busy_log(system: AuditSystem) -> dict[str, Any]:
    """Two customers whose orders and complaints interleave in the log."""
    sku = product(system)
    globex, initech = register(system, "Globex"), register(system, "Initech")
    globex_order, initech_order = place_order(system, globex, sku), place_order(system, initech, sku)
    globex_complaint = file_complaint(system, globex)
    file_complaint(system, initech)
    created(system.admin.post(f"/v1/orders/{globex_order}/ship", json={}))
    created(system.admin.post(f"/v1/orders/{initech_order}/ship", json={}))
    created(system.admin.patch(f"/v1/customers/{globex}", json={"phone": "+44 1"}))
    created(system.admin.post(f"/v1/complaints/{globex_complaint}/assign", json={"assignee": "ann"}))
    return {"globex": globex, "initech": initech, "globex_order": globex_order, "globex_complaint": globex_complaint,
            "sku": sku}


# --- history -------------------------------------------------------------------------------------

def test_history_holds_the_customers_orders_and_complaints_in_global_order_and_no_one_elses(system) -> None:
    log = busy_log(system)
    system.chainer.catch_up()
    late_order = place_order(system, log["globex"], log["sku"])  # not chained yet: still in the history

    response = system.auditor.get(f"/v1/audit/customers/{log['globex']}/history")

    assert response.status_code == 200, response.text
    history = response.json()
    expected = events_of(system, log["globex"], log["globex_order"], log["globex_complaint"], late_order)
    assert [(e["position"], e["aggregate_id"], e["version"]) for e in history] == [row[:3] for row in expected]
    assert [e["aggregate_type"] for e in history] == [
        "Customer", "Order", "Complaint", "Order", "Customer", "Complaint", "Order"]
    assert [e["type"] for e in history] == [
        "Registered", "Placed", "Filed", "Shipped", "ProfileUpdated", "Assigned", "Placed"]
    assert history[0]["data"]["name"] == "Globex" and history[1]["data"]["customer_id"] == log["globex"]
    assert all(e["occurred_at"] == system.clock.now.isoformat() for e in history)
    assert all(datetime.fromisoformat(e["recorded_at"]) > system.clock.now for e in history)
    chain = dict(system.sql("SELECT position, encode(hash, 'hex') FROM audit.chain"))
    assert [e["hash"] for e in history] == [chain.get(e["position"]) for e in history]
    assert history[-1]["hash"] is None and history[0]["hash"] is not None


def test_history_cut_from_the_stored_json_equals_the_event_decoded_by_the_librarys_mapper(system,
                                                                                        monkeypatch) -> None:
    from crm.infra import audit_history
    from crm.infra.audit_history import _entry, history

    log = busy_log(system)
    created(system.admin.post(f"/v1/customers/{log['globex']}/tier-override", json={
        "tier": "B", "reason": "trial", "approved_by": "cfo", "expires_on": "2099-01-01"}))
    created(system.admin.post(f"/v1/customers/{log['globex']}/visits",
                              json={"visited_on": "2024-02-01", "by": "ann"}))
    system.chainer.catch_up()

    slow: list[str] = []

    def decoded_by_the_mapper(*args):  # type: ignore[no-untyped-def]
        slow.append(args[2].topic.rsplit(".", 1)[1])
        return _entry(*args)

    with monkeypatch.context() as patched:  # only events with sealed personal data need the mapper
        patched.setattr(audit_history, "_entry", decoded_by_the_mapper)
        fast = [json.loads(line) for line in history(system.runtime.store, system.runtime.pool, UUID(log["globex"]))]
    assert slow == ["Registered", "ProfileUpdated"]
    recorder = system.runtime.store.recorder
    decoded = [_entry(system.runtime.store, e["position"],
                      recorder.select_events(UUID(e["aggregate_id"]), gt=e["version"] - 1, lte=e["version"])[0],
                      bytes.fromhex(e["hash"]))
               for e in fast]

    assert len(fast) == 8 and fast == decoded


def test_history_streams_json_lines_when_asked(system) -> None:
    log = busy_log(system)
    system.chainer.catch_up()
    path = f"/v1/audit/customers/{log['globex']}/history"
    as_array = system.auditor.get(path).json()

    by_accept = system.auditor.get(path, headers={"Accept": "application/x-ndjson"})
    by_query = system.auditor.get(path, params={"format": "jsonl"})

    for response in (by_accept, by_query):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        assert [json.loads(line) for line in response.text.splitlines()] == as_array


def test_history_of_an_unknown_customer_or_of_an_order_id_is_404(system) -> None:
    log = busy_log(system)
    for unknown in ("0" * 8 + "-0000-4000-8000-" + "0" * 12, log["globex_order"]):
        response = system.auditor.get(f"/v1/audit/customers/{unknown}/history")
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")
    assert system.auditor.get(f"/v1/audit/customers/{log['globex']}/history?fromat=jsonl").status_code == 422


def test_a_history_of_ten_thousand_events_is_complete_in_both_formats(system) -> None:
    """Its speed (≤ 250 ms) is measured by `make bench`, not asserted here."""
    log = busy_log(system)
    visit = created(system.admin.post(f"/v1/customers/{log['globex']}/visits",
                                      json={"visited_on": "2024-03-01", "by": "ann"}))
    # 10,000 more of the customer's visits, copied in SQL (writing them through the API takes a minute).
    system.sql("INSERT INTO crm_events (originator_id, originator_version, topic, state) "
               "SELECT originator_id, originator_version + v, topic, state "
               "FROM crm_events, generate_series(1, 10000) v WHERE notification_id = %s ORDER BY v",
               (visit["position"],))
    system.chainer.catch_up()
    path = f"/v1/audit/customers/{log['globex']}/history"

    as_array = system.auditor.get(path)
    as_lines = system.auditor.get(path, params={"format": "jsonl"})
    assert as_array.status_code == as_lines.status_code == 200
    assert len(as_lines.text.splitlines()) == len(as_array.json()) == 10_007


# --- the customer as of an instant --------------------------------------------------------------

def test_state_as_of_replays_the_customers_events_known_at_that_instant(system) -> None:
    registered_at = system.clock.now
    customer = register(system, "Globex")
    system.clock.advance(days=5)
    overridden_at = system.clock.now
    created(system.admin.post(f"/v1/customers/{customer}/tier-override",
                              json={"tier": "A", "reason": "strategic account", "approved_by": "cfo"}))
    system.clock.advance(days=5)
    renamed_at = system.clock.now
    created(system.admin.patch(f"/v1/customers/{customer}", json={"name": "Globex Holdings"}))
    recorded = [datetime.fromisoformat(e["recorded_at"])
                for e in system.auditor.get(f"/v1/audit/customers/{customer}/history").json()]
    second = timedelta(seconds=1)
    micro = timedelta(microseconds=1)

    def state(as_of: datetime, basis: str = "recorded") -> Any:
        return system.auditor.get(f"/v1/audit/customers/{customer}/state",
                                  params={"as_of": as_of.isoformat(), "basis": basis})

    # Recorded basis (the default): what the system had stored by then.
    assert state(recorded[0] - micro).status_code == 404
    first = state(recorded[0]).json()
    assert (first["version"], first["profile"]["name"], first["tier"], first["override"]) == (1, "Globex", None, None)
    before_rename = state(recorded[2] - micro).json()
    assert (before_rename["version"], before_rename["tier"], before_rename["profile"]["name"]) == (2, "A", "Globex")
    assert before_rename["override"] == {"tier": "A", "expires_on": None}
    latest = state(recorded[2] + second).json()
    assert (latest["version"], latest["tier"], latest["profile"]["name"]) == (3, "A", "Globex Holdings")
    assert latest["basis"] == "recorded" and latest["active"] is True and latest["computed_tier"] is None

    # Occurred basis: business time, which the test's clock set.
    assert state(registered_at - second, "occurred").status_code == 404
    assert state(overridden_at - second, "occurred").json()["tier"] is None
    assert state(overridden_at, "occurred").json()["tier"] == "A"
    assert state(renamed_at - second, "occurred").json()["profile"]["name"] == "Globex"
    assert state(renamed_at, "occurred").json()["profile"]["name"] == "Globex Holdings"


def test_state_as_of_an_expired_override_falls_back_to_the_computed_tier(system) -> None:
    customer = register(system)
    expires_on = (system.clock.now + timedelta(days=10)).date()
    created(system.admin.post(f"/v1/customers/{customer}/tier-override", json={
        "tier": "B", "reason": "trial", "approved_by": "cfo", "expires_on": expires_on.isoformat()}))
    path = f"/v1/audit/customers/{customer}/state"

    during = system.auditor.get(path, params={"as_of": (system.clock.now + timedelta(days=9)).isoformat(),
                                              "basis": "occurred"}).json()
    after = system.auditor.get(path, params={"as_of": (system.clock.now + timedelta(days=11)).isoformat(),
                                             "basis": "occurred"}).json()

    assert (during["tier"], after["tier"]) == ("B", None)
    assert after["override"]["expires_on"] == expires_on.isoformat()


def test_state_as_of_needs_an_instant_with_an_offset_and_a_known_customer(system) -> None:
    customer = register(system)
    path = f"/v1/audit/customers/{customer}/state"
    assert system.auditor.get(path, params={"as_of": "2030-01-01T00:00:00"}).status_code == 422
    assert system.auditor.get(path).status_code == 422
    assert system.auditor.get(path, params={"as_of": "2030-01-01T00:00:00Z", "basis": "booked"}).status_code == 422
    unknown = "00000000-0000-4000-8000-000000000000"
    response = system.auditor.get(f"/v1/audit/customers/{unknown}/state", params={"as_of": "2030-01-01T00:00:00Z"})
    assert response.status_code == 404


# --- the hash chain ------------------------------------------------------------------------------

def write_events(system: AuditSystem, customers: int = 4) -> None:
    """A log of a product and, per customer, registration, a visit, an order and a complaint."""
    sku = product(system)
    for n in range(customers):
        customer = register(system, f"Customer {n}")
        created(system.admin.post(f"/v1/customers/{customer}/visits", json={"visited_on": "2024-02-01", "by": "ann"}))
        place_order(system, customer, sku)
        file_complaint(system, customer)


def positions(system: AuditSystem) -> list[int]:
    return [row[0] for row in system.sql("SELECT notification_id FROM crm_events ORDER BY 1")]


def test_verify_passes_on_an_untouched_log_and_reports_how_far_it_is_chained(system) -> None:
    write_events(system)
    head = positions(system)[-1]
    assert system.verify().ok and system.verify().chained_position == 0  # nothing chained yet: nothing to judge

    assert system.chainer.catch_up() == head
    report = system.verify()

    assert report == audit.VerifyReport(ok=True, events_checked=head, first_broken_position=None,
                                        chained_position=head, from_position=1, problem=None)
    response = system.auditor.get("/v1/audit/verify")
    assert response.status_code == 200
    assert response.json() | {"problem": None} == {"ok": True, "events_checked": head, "first_broken_position": None,
                                                    "chained_position": head, "from_position": 1, "problem": None}


def tamper_edit(system: AuditSystem, target: int, other: int) -> None:
    system.sql("UPDATE crm_events SET state = overlay(state PLACING '\\x58'::bytea FROM 20 FOR 1) "
               "WHERE notification_id = %s", (target,))


def tamper_delete(system: AuditSystem, target: int, other: int) -> None:
    system.sql("DELETE FROM crm_events WHERE notification_id = %s", (target,))


def tamper_swap_states(system: AuditSystem, target: int, other: int) -> None:
    system.sql("UPDATE crm_events e SET state = o.state FROM crm_events o "
               "WHERE (e.notification_id, o.notification_id) IN ((%s, %s), (%s, %s))", (target, other, other, target))


def tamper_reorder(system: AuditSystem, target: int, other: int) -> None:
    for old, new in ((target, -1), (other, target), (-1, other)):  # the id index is checked row by row
        system.sql("UPDATE crm_events SET notification_id = %s WHERE notification_id = %s", (new, old))


def tamper_chain_row(system: AuditSystem, target: int, other: int) -> None:
    system.sql("UPDATE audit.chain SET hash = sha256(hash) WHERE position = %s", (target,))


@pytest.mark.parametrize("tamper", [tamper_edit, tamper_delete, tamper_swap_states, tamper_reorder, tamper_chain_row],
                         ids=["edited", "deleted", "swapped-states", "reordered", "chain-row-edited"])
def test_verify_reports_the_first_tampered_position_exactly(system, tamper) -> None:
    write_events(system)
    system.chainer.catch_up()
    log = positions(system)
    target, other = log[6], log[11]

    tamper(system, target, other)
    report = system.verify()

    assert (report.ok, report.first_broken_position) == (False, target), report
    assert report.events_checked == log.index(target) + (0 if tamper is tamper_delete else 1)
    answer = system.auditor.get("/v1/audit/verify").json()
    assert (answer["ok"], answer["first_broken_position"]) == (False, target)


def test_an_event_slipped_into_a_gap_of_the_chained_range_is_reported(system) -> None:
    write_events(system, customers=1)
    hole = system.sql("SELECT nextval(pg_get_serial_sequence('crm_events', 'notification_id'))")[0][0]
    write_events_after = register(system, "Later")  # ids can have holes: the store skips the burnt one
    system.chainer.catch_up()
    assert hole not in positions(system) and system.verify().ok

    system.sql("INSERT INTO crm_events (originator_id, originator_version, topic, state, notification_id) "
               "SELECT originator_id, 99, topic, state, %s FROM crm_events WHERE originator_id = %s "
               "AND originator_version = 1", (hole, write_events_after))
    report = system.verify()

    assert (report.ok, report.first_broken_position) == (False, hole), report
    assert "inserted" in report.problem


def test_events_after_the_chained_position_are_not_judged_until_chained(system) -> None:
    write_events(system, customers=1)
    system.chainer.catch_up()
    chained = positions(system)[-1]
    register(system, "Later")
    assert system.verify().ok and system.verify().chained_position == chained
    system.chainer.catch_up()
    assert system.verify().chained_position == chained + 1


def test_rows_deleted_from_the_end_of_the_chain_are_noticed(system) -> None:
    write_events(system, customers=1)
    system.chainer.catch_up()
    last = positions(system)[-1]
    system.sql("DELETE FROM audit.chain WHERE position = %s", (last,))

    report = system.verify()

    assert (report.ok, report.first_broken_position) == (False, last)
    restarted = HashChainer(system.runtime.store, system.runtime.database_url)
    try:
        with pytest.raises(RuntimeError, match="no row at its tracked position"):
            restarted.chain_once()  # a chainer does not extend a chain that was cut
    finally:
        restarted.close()



# --- checkpoints ---------------------------------------------------------------------------------

def test_a_checkpoint_is_written_every_n_chained_events_and_verification_can_start_from_it(system) -> None:
    write_events(system)  # 17 events; the fixture's chainer checkpoints every 5
    system.chainer.catch_up()
    log = positions(system)
    assert [row[0] for row in system.sql("SELECT position FROM audit.checkpoints ORDER BY 1")] == [
        log[4], log[9], log[14]]

    checkpoint = system.auditor.get("/v1/audit/checkpoints/latest").json()
    assert (checkpoint["position"], checkpoint["events"]) == (log[14], 15)
    assert checkpoint == audit.export_checkpoint(system.runtime.pool) | {"exported_at": checkpoint["exported_at"]}
    report = system.verify(checkpoint)

    assert (report.ok, report.events_checked, report.from_position) == (True, len(log) - 14, log[14])


def test_verifying_from_a_checkpoint_fails_when_its_hash_does_not_match(system) -> None:
    write_events(system)
    system.chainer.catch_up()
    checkpoint = audit.export_checkpoint(system.runtime.pool)
    forged = checkpoint | {"hash": "0" * 64}

    report = system.verify(forged)

    assert (report.ok, report.first_broken_position) == (False, checkpoint["position"])
    with pytest.raises(audit.BadCheckpointError):
        system.verify({"position": "12", "hash": "abc"})


def test_an_exported_checkpoint_exposes_a_history_rewritten_together_with_its_chain(system) -> None:
    """Whoever can rewrite the events can rewrite the chain; the checkpoint kept elsewhere cannot be."""
    write_events(system)
    system.chainer.catch_up()
    checkpoint = audit.export_checkpoint(system.runtime.pool)
    first_event = positions(system)[0]
    system.sql("UPDATE crm_events SET state = overlay(state PLACING '\\x58'::bytea FROM 20 FOR 1) "
               "WHERE notification_id = %s", (first_event,))
    system.sql("TRUNCATE audit.chain, audit.checkpoints, audit.customer_links")
    system.sql("DELETE FROM audit.audit_tracking WHERE application_name = 'crm'")
    rechained = HashChainer(system.runtime.store, system.runtime.database_url, checkpoint_every=5)
    try:
        rechained.catch_up()
    finally:
        rechained.close()

    assert system.verify().ok  # the rewritten chain is consistent with the rewritten log...
    report = system.verify(checkpoint)  # ...but not with the checkpoint exported before
    assert (report.ok, report.first_broken_position) == (False, checkpoint["position"])


def test_verifying_from_a_checkpoint_still_finds_tampering_after_it(system) -> None:
    write_events(system)
    system.chainer.catch_up()
    checkpoint = audit.export_checkpoint(system.runtime.pool)
    log = positions(system)
    before, after = log[2], log[-1]
    tamper_edit(system, before, 0)
    tamper_edit(system, after, 0)

    assert system.verify().first_broken_position == before
    assert system.verify(checkpoint).first_broken_position == after


# --- the chainer as a follower ------------------------------------------------------------------

def test_the_chainer_thread_follows_writes_and_two_chainers_never_fork_the_chain(system) -> None:
    other = HashChainer(system.runtime.store, system.runtime.database_url, checkpoint_every=5)
    threads = [audit.ChainerThread(system.chainer).start(), audit.ChainerThread(other).start()]
    try:
        write_events(system, customers=6)
        head = positions(system)[-1]
        deadline = time.monotonic() + 10
        while system.verify().chained_position < head and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for thread in threads:
            thread.stop_event.set()
            thread.thread.join(timeout=10)
        other.close()

    report = system.verify()
    assert (report.ok, report.chained_position, report.events_checked) == (True, head, head)
    assert system.sql("SELECT count(*), count(DISTINCT seq), max(seq) FROM audit.chain")[0] == (head, head, head)


def test_verification_covers_a_large_log(system) -> None:
    """Its speed (≥ 100,000 events/s) is measured by `make bench`, not asserted here."""
    write_events(system, customers=1)
    system.sql("INSERT INTO crm_events (originator_id, originator_version, topic, state) "
               "SELECT gen_random_uuid(), 1, topic, state FROM crm_events, generate_series(1, 7000) "
               "WHERE originator_version = 1 AND topic NOT LIKE '%%Product%%'")
    system.chainer.catch_up()
    report = system.verify()
    assert report.ok and report.events_checked > 20_000 and report.first_broken_position is None


# --- access --------------------------------------------------------------------------------------

def test_auditors_and_admins_read_the_audit_and_other_roles_may_not(system) -> None:
    customer = register(system)
    reads = [f"/v1/audit/customers/{customer}/history",
             f"/v1/audit/customers/{customer}/state?as_of=2100-01-01T00:00:00Z", "/v1/audit/verify"]
    for path in reads:
        assert system.clients["auditor"].get(path).status_code == 200, path
        assert system.clients["admin"].get(path).status_code == 200, path
        assert system.clients["sales"].get(path).status_code == 403, path
        assert system.clients["agent"].get(path).status_code == 403, path
        assert system.clients["nobody"].get(path).status_code == 401, path
        assert system.clients["anonymous"].get(path).status_code == 401, path
    assert system.clients["admin"].get("/v1/audit/access-log").status_code == 200
    assert system.clients["auditor"].get("/v1/audit/access-log").status_code == 403
    documented = system.clients["anonymous"].get("/openapi.json").json()["paths"]
    assert {"/v1/audit/verify", "/v1/audit/customers/{customer_id}/state", "/v1/audit/access-log"} <= set(documented)


def test_every_audit_read_is_itself_logged_with_who_what_and_when(system) -> None:
    customer = register(system)
    before = datetime.now(UTC)
    system.auditor.get(f"/v1/audit/customers/{customer}/history", params={"format": "jsonl"})
    system.auditor.get("/v1/audit/verify")
    system.clients["sales"].get("/v1/audit/verify")  # refused: not an audit read

    log = system.admin.get("/v1/audit/access-log", params={"limit": 10}).json()

    auditor_actor = log[1]["actor"]
    assert auditor_actor.startswith("auditor:") and KEYS["auditor"] not in auditor_actor
    assert [(e["role"], e["method"], e["path"], e["query"]) for e in log] == [
        ("admin", "GET", "/v1/audit/access-log", "limit=10"),
        ("auditor", "GET", "/v1/audit/verify", ""),
        ("auditor", "GET", f"/v1/audit/customers/{customer}/history", "format=jsonl")]
    assert all(before - timedelta(seconds=5) <= datetime.fromisoformat(e["at"]) <= datetime.now(UTC) for e in log)
    assert system.admin.get("/v1/audit/access-log", params={"limit": 1}).json()[0]["query"] == "limit=1"
    assert system.admin.get("/v1/audit/access-log", params={"limit": 0}).status_code == 422


# --- the command-line functions ------------------------------------------------------------------

def test_the_cli_functions_print_history_verify_from_a_checkpoint_file_and_log_themselves(system, tmp_path) -> None:
    import io

    write_events(system)
    system.chainer.catch_up()
    customer = system.sql("SELECT originator_id FROM crm_events WHERE topic LIKE '%%Customer.Registered' "
                          "ORDER BY notification_id LIMIT 1")[0][0]
    as_array, as_lines = io.StringIO(), io.StringIO()

    assert audit.print_history(system.runtime, customer, as_array) == 0
    assert audit.print_history(system.runtime, customer, as_lines, jsonl=True) == 0
    assert json.loads(as_array.getvalue()) == [json.loads(line) for line in as_lines.getvalue().splitlines()]
    assert len(json.loads(as_array.getvalue())) == 4

    exported = io.StringIO()
    assert audit.print_checkpoint(system.runtime, exported) == 0
    checkpoint_file = tmp_path / "checkpoint.json"
    checkpoint_file.write_text(exported.getvalue())
    report = io.StringIO()
    assert audit.print_verify(system.runtime, report, checkpoint_file) == 0
    assert json.loads(report.getvalue())["ok"] is True
    tamper_edit(system, positions(system)[-1], 0)
    assert audit.print_verify(system.runtime, io.StringIO(), checkpoint_file) == 1

    logged = system.sql("SELECT role, path FROM audit.access_log ORDER BY id")
    assert [role for role, _ in logged] == ["cli"] * 5
    assert logged[0][1] == f"audit history {customer}"
