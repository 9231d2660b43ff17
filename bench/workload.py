"""Synthetic but realistic history for benchmarks, written in bulk through the domain model."""

from __future__ import annotations

import random
import tempfile
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from crm.aggregates.complaint import Complaint
from crm.aggregates.customer import Customer
from crm.aggregates.order import Order
from crm.aggregates.product import Product
from crm.aggregates.sla import DEFAULT_SLA_POLICY
from crm.infra.event_store import CrmEventStore, insert_in_safe_calls, open_event_store
from crm.infra.postgres import start_embedded

START = datetime(2024, 1, 1, tzinfo=timezone.utc)


def fresh_history(name: str, customers: int) -> tuple[str, CrmEventStore, int]:
    """A fresh embedded PostgreSQL (under a temp dir named for the benchmark) holding the history of
    `write_history` for `customers` customers: (url, event store, head position)."""
    url = start_embedded(Path(tempfile.mkdtemp(prefix=f"crm-bench-{name}-")))
    store = open_event_store(url)
    return url, store, write_history(store, customers)


def write_history(store: CrmEventStore, customers: int, *, seed: int = 7, per_save: int = 50) -> int:
    """Customers with visits, orders (shipped, invoiced, paid or cancelled) and complaints.
    About 11 events per customer; aggregates are saved `per_save` at a time (one transaction)."""
    rng = random.Random(seed)
    products = [Product.register(sku=f"B-{n}", name=f"Bench {n}", standard_cost=Decimal(rng.randint(1, 50)),
                                 list_price=Decimal(rng.randint(5, 80)), supplier=None, occurred_at=START,
                                 actor="bench") for n in range(50)]
    store.save(*products)
    catalogue = {p.sku: p for p in products}
    pending: list = []
    for n in range(customers):
        at = START + timedelta(minutes=n)
        customer = Customer.register(name=f"Customer {n}", email=f"c{n}@bench.example", birthday=date(1980, 1 + n % 12, 1 + n % 28),
                                     occurred_at=at, actor="bench")
        customer.record_visit(visited_on=at.date(), by="rep", notes=None, occurred_at=at, actor="bench")
        order = Order.place(customer=customer, products=catalogue, currency="EUR", occurred_at=at, actor="bench",
                            lines=[{"sku": f"B-{rng.randrange(50)}", "quantity": rng.randint(1, 9),
                                    "unit_price": Decimal(rng.randint(5, 90))} for _ in range(rng.randint(1, 4))])
        order.ship(occurred_at=at, actor="bench")
        order.invoice(due_on=at.date() + timedelta(days=30), occurred_at=at, actor="bench")
        order.receive_payment(amount=order.revenue, occurred_at=at, actor="bench")
        complaint = Complaint.file(customer_id=customer.id, tier=None, category="quality", description="bench",
                                   order_id=order.id, sku=None, channel=None, policy=DEFAULT_SLA_POLICY,
                                   occurred_at=at, actor="bench")
        complaint.assign(assignee="agent", occurred_at=at, actor="bench")
        complaint.resolve(resolution="fixed", root_cause=None, by="agent", occurred_at=at, actor="bench")
        pending += [customer, order, complaint]
        if len(pending) >= per_save:
            store.save(*pending)
            pending = []
    store.save(*pending)
    return store.position()


def long_history_customer(store: CrmEventStore, events: int) -> Customer:
    """A customer registered and then visited until it has `events` events, appended through the
    recorder in bounded calls (for the audit-history and snapshot benchmarks)."""
    at = datetime.now(timezone.utc)
    customer = Customer.register(name="Long History", occurred_at=at, actor="bench")
    while customer.version < events:
        customer.record_visit(visited_on=date(2020, 1, 1), by="rep", notes=None, occurred_at=at, actor="bench")
    insert_in_safe_calls(store, [store.mapper.to_stored_event(e) for e in customer.collect_events()])
    return customer
