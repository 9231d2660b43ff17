"""360 lookups right after a rebuild, with and without the planner statistics the rebuild gathers.

`python -m bench.rebuild_stats [--customers 5000] [--pairs 3] [--lookups 500]`: writes the
`make bench` history to a fresh embedded PostgreSQL, then, `--pairs` rounds, rebuilds the three
projections as `crm rebuild` does (which runs ANALYZE on the fresh tables before the swap) and
once with that step left out (`crm.infra.rebuild._analyze` replaced by a no-op in this process
only), in reverse order every other round. Right after each rebuild it times `--lookups`
sequential 360 views (`crm.queries.customers.customer_360`, the route's query and model) and
prints the rebuilds' seconds, the time per lookup, and how many of the live read-model tables
have no statistics (`reltuples` -1). Sequential and in one process: it shows the database's plan
and cost, not HTTP throughput (BENCHMARKS.md has the wrk pairs).
"""

from __future__ import annotations

import argparse
import time
from datetime import date

from psycopg_pool import ConnectionPool

import crm.infra.rebuild as rebuilds
from bench.workload import fresh_history
from crm.infra.logging import configure_logging
from crm.infra.read_store import PgReadStore
from crm.projections import PROJECTIONS
from crm.queries.customers import customer_360


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--lookups", type=int, default=500)
    args = parser.parse_args()
    configure_logging("WARNING", json=True)
    url, store, _ = fresh_history("rebuild-stats", args.customers)
    analyze = rebuilds._analyze
    pool = ConnectionPool(url, min_size=1, max_size=2, kwargs={"options": "-c TimeZone=UTC"})
    reads, today = PgReadStore(pool), date.today()
    try:
        for round_ in range(1, args.pairs + 1):
            for gathered in (True, False) if round_ % 2 else (False, True):
                rebuilds._analyze = analyze if gathered else (lambda view: None)
                started = time.perf_counter()
                for name in PROJECTIONS:
                    rebuilds.rebuild(store, url, name)
                took = time.perf_counter() - started
                rebuilds._analyze = analyze
                without = reads.one("SELECT count(*) FILTER (WHERE c.reltuples < 0) AS n, count(*) AS of "
                                    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                    "WHERE n.nspname = ANY(%(schemas)s) AND c.relkind = 'r'",
                                    {"schemas": [p.schema for p in PROJECTIONS.values()]})
                ids = [row["id"] for row in reads.all("SELECT id FROM read_customers.customers ORDER BY id LIMIT %(n)s",
                                                        {"n": args.lookups})]
                started = time.perf_counter()
                for customer in ids:
                    assert customer_360(reads, customer, today) is not None
                per_lookup = (time.perf_counter() - started) / len(ids) * 1000
                print(f"round {round_}, {'with statistics   ' if gathered else 'without statistics'}: rebuilds "
                      f"{took:5.2f} s, 360 view {per_lookup:.3f} ms per lookup ({len(ids)} in a row), "
                      f"{without['n']} of {without['of']} read-model tables without statistics", flush=True)
    finally:
        pool.close()
        store.close()


if __name__ == "__main__":
    main()
