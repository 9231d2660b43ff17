"""360 lookups over HTTP with different numbers of lookup threads, in alternating runs.

`python -m bench.lookup_threads [--customers 5000] [--workers 2] [--threads 40 3] [--pairs 4]
[--seconds 10]`: writes the `make bench` history to a fresh embedded PostgreSQL and rebuilds the
read models, then runs `make bench`'s queries load (wrk, 32 connections, `GET /v1/customers/{id}`
at random, after a 2 s warm-up of the same) against `crm api --workers N` once per value of
`CRM_API_LOOKUP_THREADS`, in reverse order every other round, `--pairs` rounds, and prints each
run with the CPU per request of the API processes. 40 is what the lookups had before they got a
limiter of their own (anyio's default). The machine is shared and noisy: compare runs next to
each other, not across rounds.
"""

from __future__ import annotations

import argparse
import os

from psycopg_pool import ConnectionPool

from bench.load import ApiServer, customer_ids_file, measured, wrk, wrk_available
from bench.workload import fresh_history
from crm.infra.logging import configure_logging
from crm.infra.rebuild import rebuild
from crm.projections import PROJECTIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=2, help="API processes")
    parser.add_argument("--threads", type=int, nargs="+", default=[40, 3], help="values of CRM_API_LOOKUP_THREADS")
    parser.add_argument("--pairs", type=int, default=4, help="rounds over the values")
    parser.add_argument("--seconds", type=int, default=10, help="each wrk run")
    args = parser.parse_args()
    if not wrk_available():
        raise SystemExit("wrk is missing (apt-get install wrk)")
    configure_logging("WARNING", json=True)
    url, store, _ = fresh_history("lookups", args.customers)
    for name in PROJECTIONS:
        rebuild(store, url, name)
    pool = ConnectionPool(url, min_size=1, max_size=2, kwargs={"options": "-c TimeZone=UTC"})
    ids = customer_ids_file(pool)
    try:
        for round_ in range(1, args.pairs + 1):
            # Every other round in reverse order (A B, B A, ...): the machine's speed drifts between
            # runs, and a fixed order would hand the drift to whichever value runs second.
            for threads in args.threads if round_ % 2 else args.threads[::-1]:
                with ApiServer(url, args.workers, env={"CRM_API_LOOKUP_THREADS": str(threads)}) as server:
                    wrk(server.base, "queries.lua", seconds=2, connections=32,  # warm-up, not reported
                        env={"CRM_BENCH_IDS": ids})
                    load = measured(server, "queries.lua", seconds=args.seconds, connections=32,
                                    env={"CRM_BENCH_IDS": ids})
                print(f"round {round_}, {threads:3d} lookup threads: {load.per_s:7,.0f}/s, p50 {load.p50_ms:6.1f} ms, "
                      f"p99 {load.p99_ms:6.1f} ms, {load.failures} failed, API CPU "
                      f"{load.api_cpu_ms:.2f} ms per request", flush=True)
    finally:
        os.unlink(ids)


if __name__ == "__main__":
    main()
