"""Benchmarks of the log's followers: the Kafka relay, hash-chain verification, audit history."""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timezone

from psycopg_pool import ConnectionPool

from crm.aggregates.customer import Customer
from crm.infra.audit_chain import HashChainer
from crm.infra.audit_history import history
from crm.infra.audit_verify import verify
from crm.infra.event_store import CrmEventStore
from crm.infra.kafka import start_local_broker
from crm.infra.relay import Relay, forget_position
from crm.infra.event_store import insert_in_safe_calls


def relay_events_per_s(store: CrmEventStore, url: str) -> float:
    """Publish the whole log to a fresh local broker (acks=all, idempotent): events per second."""
    broker = start_local_broker()
    relay = Relay(store, url, broker.bootstrap)
    forget_position(relay.tracking)  # every repeat publishes the whole log again
    relay.status.position = 0
    try:
        head, started = store.position(), time.perf_counter()
        while relay.status.position < head:
            relay.publish_next()
        return head / (time.perf_counter() - started)
    finally:
        relay.close()
        broker.stop()


def verify_events_per_s(store: CrmEventStore, url: str, pool: ConnectionPool, repeat: int) -> float:
    chainer = HashChainer(store, url)
    chainer.catch_up()  # building the chain is the follower's job, not part of verification
    rates = []
    for _ in range(repeat):
        started = time.perf_counter()
        report = verify(store, pool)
        assert report.ok, report
        rates.append(report.events_checked / (time.perf_counter() - started))
    return statistics.median(rates)


def audit_history_10k_ms(store: CrmEventStore, url: str, pool: ConnectionPool, repeat: int) -> float:
    """A customer with 10,000 visits (appended through the recorder), its full history read to the end."""
    customer = Customer.register(name="Long History", occurred_at=datetime.now(timezone.utc), actor="bench")
    for day in range(9_999):
        customer.record_visit(visited_on=datetime(2020, 1, 1).date(), by="rep", notes=None,
                              occurred_at=datetime.now(timezone.utc), actor="bench")
    insert_in_safe_calls(store, [store.mapper.to_stored_event(e) for e in customer.collect_events()])
    HashChainer(store, url).catch_up()
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        lines = sum(1 for _ in history(store, pool, customer.id))
        timings.append((time.perf_counter() - started) * 1000)
        assert lines == 10_000, lines
    return statistics.median(timings)
