"""One projection's rebuild alone, with the CPU it costs this process, and the cost of `as_json`.

`python -m bench.rebuild [--customers 20000] [--projection complaints] [--repeat 3]`: writes the
`make bench` history to a fresh embedded PostgreSQL, then rebuilds the projection `--repeat`
times and prints each run's rate (log events covered per second, as `make bench` counts them)
and the CPU seconds of this process (reading and decoding the log, the projection's writes,
psycopg; PostgreSQL's own CPU is not in it). Before that, the time of `as_json` and of the
`json.dumps` it replaced for one complaint step's details. To compare two versions of the code,
run it at each (e.g. `git checkout 331dec7 -- src/projections/base.py`, then back).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import timeit
from datetime import datetime, timezone
from decimal import Decimal
from uuid import uuid4

from bench.workload import fresh_history
from crm.infra.logging import configure_logging
from crm.infra.rebuild import rebuild
from crm.projections.base import _plain, as_json

DETAILS = {"assignee": "emp-17", "note": "Customer called again about the broken part, promised a replacement",
           "due_at": datetime(2026, 12, 2, 1, 54, 8, 688349, tzinfo=timezone.utc), "order_id": uuid4(),
           "amount": Decimal("12.50"), "tier": "B", "items": [{"sku": "SKU-1", "q": 2}]}


def micros(function, number: int = 100_000) -> float:  # type: ignore[no-untyped-def]
    return min(timeit.repeat(function, number=number, repeat=3)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--projection", default="complaints")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    configure_logging("WARNING", json=True)
    print(f"as_json: {micros(lambda: as_json(DETAILS)):.1f} µs; json.dumps(default=_plain, sort_keys=True): "
          f"{micros(lambda: json.dumps(DETAILS, default=_plain, sort_keys=True)):.1f} µs (a complaint step's details)")
    url, store, head = fresh_history("rebuild", args.customers)
    rates, cpus = [], []
    for _ in range(args.repeat):
        cpu = time.process_time()
        rates.append(rebuild(store, url, args.projection).events_per_s)
        cpus.append(time.process_time() - cpu)
        print(f"rebuild {args.projection}: {rates[-1]:,.0f} events/s, {cpus[-1]:.2f} s of this process's CPU")
    print(f"median of {args.repeat} over {head:,} events: {statistics.median(rates):,.0f} events/s, "
          f"{statistics.median(cpus):.2f} CPU s")


if __name__ == "__main__":
    main()
