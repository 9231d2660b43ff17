"""Customer snapshots: taken every SNAPSHOT_INTERVAL events, loaded like the events say, sealed."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from functools import reduce
from typing import Any
from uuid import UUID

from crm.aggregates.customer import Customer
from crm.infra.event_store import SNAPSHOT_INTERVAL
from crm.infra.personal_data import shred

START = datetime(2024, 1, 1, tzinfo=timezone.utc)


def replayed(store: Any, customer_id: UUID, version: int | None = None) -> Customer:
    """The customer from its events alone, as if there were no snapshots."""
    events = store.events.get(customer_id, lte=version)
    return reduce(lambda aggregate, event: event.mutate(aggregate), events, None)


def snapshot_rows(rt: Any, customer_id: UUID) -> list[tuple[int, bytes]]:
    with rt.pool.connection() as conn:
        return [(r[0], bytes(r[1])) for r in conn.execute(
            "SELECT originator_version, state FROM crm_snapshots WHERE originator_id = %s "
            "ORDER BY originator_version", (customer_id,))]


def a_long_history(store: Any, events: int) -> Customer:
    """A customer with every kind of state (profile, visits, tiers with scores, an override with an
    expiry, deactivation), saved through the command path (group commit) a few events at a time."""
    customer = Customer.register(name="Ada Lovelace", email="ada@example.com", phone="+44 20 7946 0000",
                                 birthday=date(1915, 12, 10), special_days=[{"label": "first program",
                                                                             "date": date(1843, 7, 1)}],
                                 occurred_at=START, actor="test")
    n = 0
    while customer.version < events:
        n += 1
        at = START + timedelta(hours=n)
        kind = n % 5
        if not customer.active:
            customer.reactivate(occurred_at=at, actor="test")
        elif kind == 0:
            customer.assign_tier(tier="ABCD"[n % 4], score=Decimal(n) / 7, indicators={"orders": n},
                                 policy_version=1, reason="run", run_id=f"r{n}", occurred_at=at, actor="test")
        elif kind == 1:
            customer.override_tier(tier="A", reason="pilot", approved_by="cfo",
                                   expires_on=at.date() + timedelta(days=9), occurred_at=at, actor="test")
        elif kind == 2 and n % 10 == 2:
            customer.deactivate(reason="pause", occurred_at=at, actor="test")
        elif kind == 3:
            customer.update_profile({"phone": f"+44 20 7946 {n:04d}"}, occurred_at=at, actor="test")
        else:
            customer.record_visit(visited_on=at.date(), by="rep", notes=None, occurred_at=at, actor="test")
        if n % 7 == 0 or customer.version >= events:
            store.group_commit.save(customer)
    store.group_commit.save(customer)
    return customer


def test_a_customer_is_snapshotted_every_interval_and_loads_as_its_events_say(fresh_system) -> None:
    rt, _ = fresh_system(with_runners=False)
    customer = a_long_history(rt.store, 2 * SNAPSHOT_INTERVAL + 30)
    versions = [v for v, _ in snapshot_rows(rt, customer.id)]
    assert versions == [SNAPSHOT_INTERVAL, 2 * SNAPSHOT_INTERVAL]
    loaded = rt.store.customers.get(customer.id)  # the newest snapshot, then 30 events
    assert loaded.version == customer.version
    assert vars(loaded) == vars(replayed(rt.store, customer.id)) == vars(customer)
    assert isinstance(loaded.tier_log[0], tuple)  # JSON has no tuples: the snapshot class restores them
    for version in (SNAPSHOT_INTERVAL, SNAPSHOT_INTERVAL + 1, 2 * SNAPSHOT_INTERVAL - 1):
        assert vars(rt.store.customers.get(customer.id, version=version)) == \
            vars(replayed(rt.store, customer.id, version))
    when = customer.tier_log[-1][0]
    assert loaded.tier_at(when) == customer.tier_at(when)
    # The customers repository starts from the snapshot, the default one replays events only:
    # a snapshot changed by hand shows through the first and not the second.
    with rt.pool.connection() as conn:
        conn.execute("UPDATE crm_snapshots SET state = convert_to(replace(convert_from(state, 'UTF8'), "
                     "'\"industry\":null', '\"industry\":\"from the snapshot\"'), 'UTF8') "
                     "WHERE originator_id = %s AND originator_version = %s", (customer.id, 2 * SNAPSHOT_INTERVAL))
    assert rt.store.customers.get(customer.id).profile["industry"] == "from the snapshot"
    assert rt.store.repository.get(customer.id).profile["industry"] is None


def test_a_snapshot_seals_the_personal_fields_and_erasure_makes_them_unreadable(fresh_system) -> None:
    rt, _ = fresh_system(with_runners=False)
    customer = a_long_history(rt.store, SNAPSHOT_INTERVAL + 5)
    [(_, state)] = snapshot_rows(rt, customer.id)
    for secret in (b"Ada Lovelace", b"ada@example.com", b"+44 20 7946", b"1915-12-10", b"first program"):
        assert secret not in state
    assert b'"industry"' in state  # what is not personal stays readable
    customer.erase_personal_data(reason="request", occurred_at=START + timedelta(days=400), actor="test")
    rt.store.group_commit.save(customer)
    shred(rt.store, customer.id)
    rt.store.mapper.keys.forget(customer.id, erased=True)
    from_snapshot = rt.store.customers.get(customer.id, version=SNAPSHOT_INTERVAL)
    assert from_snapshot.profile["name"] == "[erased]" and from_snapshot.profile["email"] is None
    assert from_snapshot.profile["birthday"] is None and from_snapshot.profile["special_days"] == []
    assert vars(from_snapshot) == vars(replayed(rt.store, customer.id, SNAPSHOT_INTERVAL))
    assert vars(rt.store.customers.get(customer.id)) == vars(replayed(rt.store, customer.id))


def test_commands_on_a_snapshotted_customer_still_answer_conflicts_and_succeed(fresh_system) -> None:
    rt, admin = fresh_system(with_runners=False)
    customer = a_long_history(rt.store, SNAPSHOT_INTERVAL + 2)
    if not customer.active:
        customer.reactivate(occurred_at=START + timedelta(days=500), actor="test")
        rt.store.group_commit.save(customer)
    version = rt.store.customers.get(customer.id).version
    stale = admin.post(f"/v1/customers/{customer.id}/visits", headers={"If-Match": f'"{version - 1}"'},
                       json={"visited_on": "2026-03-01", "by": "sam"})
    assert stale.status_code == 409, stale.text
    fresh = admin.post(f"/v1/customers/{customer.id}/visits", headers={"If-Match": f'"{version}"'},
                       json={"visited_on": "2026-03-01", "by": "sam"})
    assert fresh.status_code == 201, fresh.text
    assert rt.store.customers.get(customer.id).visits[-1] == {"visited_on": date(2026, 3, 1), "by": "sam"}
