"""Loading a long-lived customer with and without its snapshot, in the same run.

`python -m bench.snapshots`: for customers of 100, 1,000 and 10,000 events on a fresh embedded
PostgreSQL, the median of 5 loads through the repository (the newest snapshot, taken
99 events before the end: the worst case of the policy, then the events after
it) against replaying every event (what a load cost before snapshots; the baseline). Then what
snapshots cost where they do not help: the lookup every load makes, for a 10-event customer.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from functools import reduce
from pathlib import Path

from bench.workload import long_history_customer
from crm.infra.event_store import SNAPSHOT_INTERVAL, open_event_store
from crm.infra.logging import configure_logging
from crm.infra.postgres import start_embedded


def median_ms(load, repeat: int = 5) -> float:  # type: ignore[no-untyped-def]
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        load()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def main() -> None:
    configure_logging("WARNING", json=True)
    store = open_event_store(start_embedded(Path(tempfile.mkdtemp(prefix="crm-bench-snapshots-"))))
    print("| events | replay every event (ms) | newest snapshot + the events after it (ms) | ratio |")
    print("|---|---|---|---|")
    for events in (100, 1_000, 10_000):
        customer = long_history_customer(store, events)
        store.take_snapshot(customer.id, version=max(1, events - (SNAPSHOT_INTERVAL - 1)))
        replay = median_ms(lambda: reduce(lambda a, e: e.mutate(a), store.events.get(customer.id), None))
        loaded = median_ms(lambda: store.customers.get(customer.id))
        assert vars(store.customers.get(customer.id)) == vars(reduce(lambda a, e: e.mutate(a),
                                                                      store.events.get(customer.id), None))
        print(f"| {events:,} | {replay:.1f} | {loaded:.1f} | {replay / loaded:.1f} × |")
    short = long_history_customer(store, 10)  # most customers: no snapshot yet, and the lookup finds none
    lookup = median_ms(lambda: list(store.snapshots.get(short.id, desc=True, limit=1)), 21)  # type: ignore[union-attr]
    loaded = median_ms(lambda: store.customers.get(short.id), 21)
    print(f"\nA customer of 10 events: the snapshot lookup every load now makes costs {lookup:.2f} ms "
          f"of a {loaded:.2f} ms load.")


if __name__ == "__main__":
    main()
