"""Tiering: the versioned policy, runs that append only changes, overrides, service rules."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from uuid import UUID

import pytest

from crm.aggregates.customer import Customer

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


def run(admin, **body) -> dict:  # type: ignore[no-untyped-def]
    started = admin.post("/v1/tiering/runs", json=body or None)
    assert started.status_code == 202, started.text
    run_id = started.json()["run_id"]
    deadline = time.monotonic() + 60
    while True:
        view = admin.get(f"/v1/tiering/runs/{run_id}").json()
        if view["status"] != "running":
            return view
        assert time.monotonic() < deadline, view
        time.sleep(0.05)


def head(rt) -> dict:  # type: ignore[no-untyped-def]
    return {"X-Min-Position": str(rt.store.position())}


def a_graded_market(rt, admin) -> dict:  # type: ignore[no-untyped-def]
    """Big (revenue 1000, margin 50 %, paid in 10 days), Mid (500, 30 %, 30 days), Small (100, 10 %,
    unpaid) and Idle (no orders): ranks 100 / 50 / 0 on every indicator."""
    admin.post("/v1/products", json={"sku": "T-1", "name": "Thing", "standard_cost": "1", "list_price": "2"})
    ids = {}
    for name, price, cost, paid_on in [("Big", "1000", "500", "2026-01-20"), ("Mid", "500", "350", "2026-02-09"),
                                       ("Small", "100", "90", None)]:
        admin.put("/v1/products/T-1/standard-cost", json={"standard_cost": cost, "effective_from": "2026-01-01"})
        ids[name] = admin.post("/v1/customers", json={"name": name}).json()["id"]
        order = admin.post("/v1/orders", json={"customer_id": ids[name], "placed_at": "2026-01-10T00:00:00Z",
                                               "lines": [{"sku": "T-1", "quantity": 1, "unit_price": price}]}).json()
        admin.post(f"/v1/orders/{order['id']}/invoice", json={"due_on": "2026-02-10",
                                                              "invoiced_at": "2026-01-10T00:00:00Z"})
        if paid_on:
            admin.post(f"/v1/orders/{order['id']}/payments", json={"amount": price,
                                                                   "received_at": f"{paid_on}T00:00:00Z"})
    ids["Idle"] = admin.post("/v1/customers", json={"name": "Idle"}).json()["id"]
    return ids


def tier_of(rt, admin, customer_id: str) -> dict:  # type: ignore[no-untyped-def]
    return admin.get(f"/v1/customers/{customer_id}", headers=head(rt)).json()


def test_a_run_grades_by_weighted_percentiles_and_records_why(fresh_system) -> None:
    rt, admin = fresh_system(clock=lambda: NOW)
    ids = a_graded_market(rt, admin)
    view = run(admin)
    assert view["status"] == "succeeded" and view["evaluated"] == 4 and view["changed"] == 4
    assert view["transitions"] == {"unrated->A": 1, "unrated->C": 1, "unrated->D": 2}
    assert {n: tier_of(rt, admin, i)["tier"] for n, i in ids.items()} == {"Big": "A", "Mid": "C", "Small": "D",
                                                                           "Idle": "D"}
    (big,) = admin.get(f"/v1/customers/{ids['Big']}/tier-history").json()
    assert big["score"] == "100.0" and big["policy_version"] == 0 and big["reason"] == "weighted score"
    assert big["indicators"]["order_volume"] == {"raw": "1000", "percentile": 100.0}
    assert big["indicators"]["collection_days"] == {"raw": 10.0, "percentile": 100.0}
    (idle,) = admin.get(f"/v1/customers/{ids['Idle']}/tier-history").json()
    assert idle["reason"] == "no orders in window" and idle["to_tier"] == "D"


def test_running_again_with_the_same_policy_and_as_of_changes_nothing(fresh_system) -> None:
    rt, admin = fresh_system(clock=lambda: NOW)
    a_graded_market(rt, admin)
    run(admin, as_of="2026-06-01T00:00:00Z")
    position = rt.store.position()
    again = run(admin, as_of="2026-06-01T00:00:00Z")
    assert again["status"] == "succeeded" and again["changed"] == 0 and again["transitions"] == {}
    assert rt.store.position() == position


def test_only_changed_tiers_are_appended(fresh_system) -> None:
    rt, admin = fresh_system(clock=lambda: NOW)
    ids = a_graded_market(rt, admin)
    run(admin)
    before = {n: tier_of(rt, admin, i)["tier"] for n, i in ids.items()}
    order = admin.post("/v1/orders", json={"customer_id": ids["Small"], "placed_at": "2026-05-01T00:00:00Z",
                                           "lines": [{"sku": "T-1", "quantity": 10, "unit_price": "1000"}]})
    assert order.status_code == 201
    view = run(admin)
    after = {n: tier_of(rt, admin, i)["tier"] for n, i in ids.items()}
    moved = {n for n in ids if before[n] != after[n]}
    assert "Small" in moved and view["changed"] == len(moved)
    for name, customer_id in ids.items():
        events = [e for e in rt.store.events.get(UUID(customer_id)) if isinstance(e, Customer.TierAssigned)]
        assert len(events) == (2 if name in moved else 1), name


def test_a_second_run_while_one_runs_is_refused(fresh_system) -> None:
    rt, admin = fresh_system(clock=lambda: NOW)
    running = rt.runs.begin(NOW, 0, "test")
    with rt.pool.connection() as alive:  # the advisory lock says: its process is alive
        alive.execute("SELECT pg_advisory_lock(hashtext(%s::text))", (str(running),))
        refused = admin.post("/v1/tiering/runs")
        assert refused.status_code == 409
        assert refused.headers["content-type"] == "application/problem+json"
        alive.execute("SELECT pg_advisory_unlock(hashtext(%s::text))", (str(running),))
    # its process "died" (no lock held): the next run marks it abandoned and goes ahead
    assert run(admin)["status"] == "succeeded"
    assert rt.runs.get(running)["status"] == "failed"


def test_an_override_holds_until_it_expires_while_runs_record_the_computed_tier(fresh_system) -> None:
    now = [NOW]
    rt, admin = fresh_system(clock=lambda: now[0])
    ids = a_graded_market(rt, admin)
    admin.post(f"/v1/customers/{ids['Small']}/tier-override",
               json={"tier": "A", "reason": "strategic", "approved_by": "cfo", "expires_on": "2026-07-01"})
    run(admin)
    small = tier_of(rt, admin, ids["Small"])
    assert small["tier"] == "A" and small["computed_tier"] == "D"
    now[0] = datetime(2026, 7, 2, tzinfo=timezone.utc)
    assert tier_of(rt, admin, ids["Small"])["tier"] == "D"  # expired: the computed tier applies


def test_a_policy_change_is_versioned_and_a_bad_one_changes_nothing(fresh_system) -> None:
    rt, admin = fresh_system(clock=lambda: NOW)
    assert admin.get("/v1/tiering/policy").json()["version"] == 0
    changed = admin.put("/v1/tiering/policy", json={"weights": {"order_volume": 0.5, "collection_days": 0.25,
                                                                "profit_margin": 0.25}})
    assert changed.status_code == 200 and changed.json()["version"] == 1
    for bad in [{"weights": {"order_volume": 0.5, "collection_days": 0.5, "profit_margin": 0.5}},
                {"thresholds": {"A": 60, "B": 60, "C": 40}}, {"thresholds": {"A": 120, "B": 60, "C": 40}},
                {"weights": {"order_volume": -0.2, "collection_days": 0.6, "profit_margin": 0.6}},
                {"window_days": 0}, {"colour": "red"}]:
        refused = admin.put("/v1/tiering/policy", json=bad)
        assert refused.status_code == 422, bad
    policy = admin.get("/v1/tiering/policy").json()
    assert policy["version"] == 1 and policy["weights"]["order_volume"] == 0.5


def test_runs_record_the_policy_version_they_used(fresh_system) -> None:
    rt, admin = fresh_system(clock=lambda: NOW)
    ids = a_graded_market(rt, admin)
    admin.put("/v1/tiering/policy", json={"thresholds": {"A": 90, "B": 45, "C": 20}})
    view = run(admin)
    assert view["policy_version"] == 1
    (mid,) = admin.get(f"/v1/customers/{ids['Mid']}/tier-history", headers=head(rt)).json()
    assert mid["policy_version"] == 1 and mid["to_tier"] == "B"  # 50 ≥ 45 under the new thresholds


def test_visits_due_follow_the_policys_service_rules(fresh_system) -> None:
    rt, admin = fresh_system(clock=lambda: NOW)
    ids = a_graded_market(rt, admin)
    run(admin)
    admin.post(f"/v1/customers/{ids['Big']}/visits", json={"visited_on": "2026-05-01", "by": "sam"})
    due = admin.get("/v1/care/visits-due", headers=head(rt)).json()
    assert {d["customer_name"]: d["visits_missing"] for d in due} == {"Big": 3, "Mid": 1}
    admin.put("/v1/tiering/policy", json={"visits_per_year": {"A": 1, "B": 1, "C": 0, "D": 0}})
    assert admin.get("/v1/care/visits-due").json() == []


def test_the_transitions_report_counts_the_runs_changes(fresh_system) -> None:
    rt, admin = fresh_system(clock=lambda: NOW)
    a_graded_market(rt, admin)
    run(admin)
    report = admin.get("/v1/reports/tier-transitions", headers=head(rt)).json()
    assert {(t["from_tier"], t["to_tier"]): t["count"] for t in report["transitions"]} == {
        ("unrated", "A"): 1, ("unrated", "C"): 1, ("unrated", "D"): 2}


@pytest.mark.parametrize("role,status", [("sales", 403), ("agent", 403), ("auditor", 403)])
def test_only_admins_change_the_policy_or_start_runs(clients, role, status) -> None:
    assert clients[role].put("/v1/tiering/policy", json={}).status_code == status
    assert clients[role].post("/v1/tiering/runs").status_code == status


def test_an_unknown_run_is_not_found(admin) -> None:
    assert admin.get("/v1/tiering/runs/00000000-0000-0000-0000-000000000000").status_code == 404


def test_a_run_over_thousands_of_customers_appends_in_safe_batches(fresh_system) -> None:
    """2,500 changes: more than one batch, and more than the recorder can take in one call
    (2,000 events in one insert_events deadlocked the driver's pipeline)."""
    from bench.retier import AS_OF, load
    from crm.aggregates.tiering import DEFAULT_TIERING_POLICY
    from crm.infra.tiering_runs import execute

    rt, admin = fresh_system(with_runners=False)
    load(rt.store, rt.database_url, rt.pool, 2_500)
    run_id = rt.runs.begin(AS_OF, 0, "test")
    report = execute(rt.store, rt.pool, rt.reads, rt.runs, run_id, DEFAULT_TIERING_POLICY, AS_OF)
    assert report.evaluated == report.changed == 2_500
    assert sum(report.transitions.values()) == 2_500 and rt.store.position() == 5_000
    assert rt.runs.get(run_id)["status"] == "succeeded"
    assert_events_say_what_the_pure_grading_says(rt, AS_OF, DEFAULT_TIERING_POLICY)


def assert_events_say_what_the_pure_grading_says(rt, as_of, policy) -> None:  # type: ignore[no-untyped-def]
    """Every TierAssigned the run appended (bulk-encoded, ranked by columns) holds what `grade`, the
    documented pure function, gives for the same facts, in exactly the bytes the mapper writes."""
    from datetime import timedelta
    from decimal import Decimal

    from crm.aggregates.tiering import Indicators, grade
    from crm.infra.tiering_runs import _indicators

    rows = _indicators(rt.pool, as_of - timedelta(days=policy.window_days), as_of, parts=1)
    assert sorted(rows) == sorted(_indicators(rt.pool, as_of - timedelta(days=policy.window_days), as_of, parts=3))
    facts = {row[0]: Indicators(order_volume=row[3], profit_margin=row[4], collection_days=row[5])
             for row in rows if row[3] is not None}
    expected = grade(facts, policy)
    stored = [n for n in rt.store.recorder.select_notifications(start=1, limit=100_000) if "TierAssigned" in n.topic]
    assert len(stored) == len(expected)
    for notification in stored:
        event = rt.store.mapper.to_domain_event(notification)
        should = expected[event.originator_id]
        assert (event.tier, event.score) == (should.tier, Decimal(str(should.score)))
        assert event.indicators == {name: {"raw": str(value) if isinstance(value, Decimal) else value,
                                           "percentile": should.percentiles[name]}
                                    for name, value in should.raw.items()}
        assert rt.store.mapper.to_stored_event(event).state == notification.state


def test_a_customer_changed_since_the_read_model_saw_it_still_gets_its_tier(fresh_system) -> None:
    """The COPY batch meets the concurrent change and is refused whole; the fallback appends the
    others in recorder calls and that customer through its aggregate, after its new event."""
    import uuid

    from bench.retier import load
    from crm.infra.tiering_runs import Outcome, append_tiers

    rt, _ = fresh_system(with_runners=False)
    load(rt.store, rt.database_url, rt.pool, 300)
    ids = [r["id"] for r in rt.reads.all("SELECT id FROM read_customers.customers")]
    outcomes = [Outcome(i, 1, None, "B", None, {}, "weighted score") for i in ids]  # as the read model saw them
    customer = rt.store.repository.get(ids[7])  # a write in between
    customer.update_profile({"region": "North"}, occurred_at=datetime.now(timezone.utc), actor="t")
    rt.store.save(customer)
    appended = append_tiers(rt.store, outcomes, policy_version=0, run_id=uuid.uuid4(),
                            as_of=datetime.now(timezone.utc), batch_size=200)
    # (the refused COPY used up log ids, as any failed insert does: count events, not positions)
    assert appended == 300 and rt.reads.one("SELECT count(*) AS n FROM crm_events")["n"] == 601
    after = rt.store.repository.get(ids[7])
    assert after.version == 3 and after.tier == "B" and after.profile["region"] == "North"
    assert all(rt.store.repository.get(i).tier == "B" for i in ids[::50])


def test_the_bulk_encoding_stores_exactly_the_mappers_bytes(runtime) -> None:
    from decimal import Decimal
    from uuid import uuid4

    from crm.infra import tiering_runs

    as_of, now, run_id = datetime(2026, 6, 1, tzinfo=timezone.utc), datetime.now(timezone.utc), uuid4()
    batch = [tiering_runs.Outcome(uuid4(), 3, "B", "A", Decimal("81.25"),
                                  {"order_volume": {"raw": "1200.50", "percentile": 93.75},
                                   "collection_days": {"raw": 12.5, "percentile": 80.0},
                                   "profit_margin": {"raw": "0.31", "percentile": 70.0}}, "weighted score"),
             tiering_runs.Outcome(uuid4(), 1, None, "D", None, {}, "no orders in window")]
    mapped = [runtime.store.mapper.to_stored_event(tiering_runs._event(o, 4, run_id, as_of, now)) for o in batch]
    assert tiering_runs._stored_events(runtime.store, batch, 4, run_id, as_of, now) == [
        (e.originator_id, e.originator_version, e.topic, e.state) for e in mapped]
    decoded = runtime.store.mapper.to_domain_event(mapped[0])
    assert decoded.score == Decimal("81.25") and decoded.tier == "A" and decoded.run_id == str(run_id)


def test_the_bulk_encoding_falls_back_to_the_mapper_when_they_differ(runtime, monkeypatch) -> None:
    from decimal import Decimal
    from uuid import uuid4

    from crm.infra import tiering_runs

    as_of, now, run_id = datetime(2026, 6, 1, tzinfo=timezone.utc), datetime.now(timezone.utc), uuid4()
    batch = [tiering_runs.Outcome(uuid4(), 1, None, "C", Decimal("50"), {}, "weighted score") for _ in range(3)]
    monkeypatch.setattr(tiering_runs, "ACTOR", "someone-else")  # the fast path's fixed part now disagrees
    original = tiering_runs._event
    monkeypatch.setattr(tiering_runs, "_event", lambda o, *a: _with_actor(original(o, *a), "tiering-run"))
    stored = tiering_runs._stored_events(runtime.store, batch, 1, run_id, as_of, now)
    assert all(b'"actor":"tiering-run"' in state for *_, state in stored)


def _with_actor(event, actor: str):  # type: ignore[no-untyped-def]
    object.__setattr__(event, "actor", actor)
    return event
