"""Re-tier benchmark: N customers with their indicator facts, then one timed tiering run.

How the facts are loaded (setup, not timed): N `Customer.Registered` events through the
library's mapper and recorder (1,000 per transaction, their personal-data keys made in one
statement per 1,000), because TierAssigned must follow real
aggregates; then the read models those customers would have, with COPY: a customer row each,
one invoiced order with one line each, and a payment for most of them; then every projection's
tracking position is set to the log's head. Only `tiering_runs.execute` is timed: indicators in
SQL, grading, and appending a TierAssigned for every customer (all are unrated, so all change).
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from eventsourcing.persistence import Tracking
from eventsourcing.utils import get_topic

from crm.aggregates.customer import Customer
from crm.aggregates.tiering import DEFAULT_TIERING_POLICY
from crm.infra.event_store import CrmEventStore
from crm.infra.read_models import open_view
from crm.infra.read_store import PgReadStore
from crm.infra.event_store import insert_in_safe_calls
from crm.infra.tiering_runs import RunStore, execute
from crm.projections import PROJECTIONS

AS_OF = datetime(2026, 6, 1, tzinfo=timezone.utc)


def load(store: CrmEventStore, url: str, pool, customers: int, seed: int = 11) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    ids = [uuid.uuid4() for _ in range(customers)]
    for start in range(0, customers, 1_000):  # the recorder deadlocks above ~1,000 per call
        events = [Customer.Registered(originator_id=i, originator_version=1, timestamp=AS_OF,  # type: ignore[call-arg]
                                      originator_topic=get_topic(Customer),
                                      name=f"C{n}", email=None, phone=None, industry=None, region=None, birthday=None,
                                      special_days=[], owner=None, occurred_at=AS_OF, actor="bench")
                  for n, i in enumerate(ids[start:start + 1_000], start)]
        insert_in_safe_calls(store, [store.mapper.to_stored_event(e) for e in events])
    views = {name: open_view(url, p) for name, p in PROJECTIONS.items()}  # creates the read-model tables
    with pool.connection() as conn:
        with conn.cursor().copy("COPY read_customers.customers (id, name, special_days, active, registered_at, "
                                "version) FROM STDIN") as copy:
            for n, i in enumerate(ids):
                copy.write_row((i, f"C{n}", "[]", True, AS_OF, 1))
        _copy_sales(conn, ids, rng)
    head = store.position()
    for view in views.values():
        view.insert_tracking(Tracking("crm", head))
        view.datastore.close()


def _copy_sales(conn, ids, rng) -> None:  # type: ignore[no-untyped-def]
    placed = AS_OF - timedelta(days=100)
    orders, lines, payments = [], [], []
    for i in ids:
        order, revenue = uuid.uuid4(), Decimal(rng.randint(10, 10_000))
        cost = (revenue * Decimal(rng.randint(30, 110)) / 100).quantize(Decimal("0.01"))
        orders.append((order, i, placed, "invoiced", "EUR", revenue, cost, revenue - cost, 1, "[]", placed, revenue, 0))
        lines.append((order, 1, i, placed, "B-1", 1, revenue, cost, revenue, cost))
        if rng.random() < 0.8:
            payments.append((f"{order}:3", order, i, revenue, placed + timedelta(days=rng.randint(1, 90))))
    for table, columns, rows in [
        ("orders", "id, customer_id, placed_at, status, currency, revenue, cost, forecast_profit, line_count, "
                   "warned_complaint_ids, invoiced_at, invoice_amount, version", orders),
        ("order_lines", "order_id, line_no, customer_id, placed_at, sku, quantity, unit_price, standard_cost, "
                        "revenue, cost", lines),
        ("payments", "event_id, order_id, customer_id, amount, received_at", payments)]:
        with conn.cursor().copy(f"COPY read_sales.{table} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    conn.execute("ANALYZE read_sales.orders; ANALYZE read_sales.order_lines; ANALYZE read_sales.payments; "
                 "ANALYZE read_customers.customers")


def retier_seconds(store: CrmEventStore, url: str, pool, customers: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    load(store, url, pool, customers)
    print(f"  loaded {customers:,} customers with their facts in {time.perf_counter() - started:.1f} s", flush=True)
    runs = RunStore(pool)
    run_id = runs.begin(AS_OF, 0, "bench")
    report = execute(store, pool, PgReadStore(pool), runs, run_id, DEFAULT_TIERING_POLICY, AS_OF)
    return report.seconds, report.changed
