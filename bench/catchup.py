"""Live projection catch-up: how fast the library's ProjectionRunners (as `crm projections` runs
them) apply a backlog, with events written in groups (the default) and one transaction per event
(MAX_PENDING = 1), in the same run. `python -m bench.catchup [--customers N]`."""

from __future__ import annotations

import argparse
import time

from crm.infra.logging import configure_logging
from crm.infra.read_models import ProjectionView, start_runners, stop_runners
from crm.infra.read_store import PgReadStore
from crm.infra.rebuild import _drop_schema
from crm.projections import PROJECTIONS


def catch_up_events_per_s(url: str, store, reads: PgReadStore, head: int) -> float:  # type: ignore[no-untyped-def]
    for projection in PROJECTIONS.values():
        _drop_schema(store, projection.schema)  # from position 0 again
    started = time.perf_counter()
    runners = start_runners(url)
    try:
        while min(reads.positions().values()) < head:
            time.sleep(0.05)
    finally:
        stop_runners(runners)
    return head / (time.perf_counter() - started)


def main() -> None:
    from psycopg_pool import ConnectionPool

    from bench.workload import fresh_history

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=2_000, help="history size (about 9 events each)")
    args = parser.parse_args()
    configure_logging("WARNING", json=True)
    url, store, head = fresh_history("catchup", args.customers)
    reads = PgReadStore(ConnectionPool(url, min_size=1, max_size=2))
    grouped = catch_up_events_per_s(url, store, reads, head)
    ProjectionView.MAX_PENDING = 1  # the old way: one transaction per event per projection
    single = catch_up_events_per_s(url, store, reads, head)
    print(f"{head:,} events, 3 projections: grouped {grouped:,.0f} events/s, one per transaction "
          f"{single:,.0f} events/s ({grouped / single:.1f}x)")


if __name__ == "__main__":
    main()
