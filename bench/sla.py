"""SLA benchmark: with 100,000 open complaints, how late after its due time is each breach recorded?

Setup (not timed): N `Complaint.Filed` events appended in bulk; `due_soon` of them fall due within
a 20-second window starting after the saga has caught up (the rest are due in 30 days). Their
warning marks equal their due times, so at each due instant the saga records both a warning and
a breach. The saga runs in its thread on the real clock; lateness = the breach's occurred_at
minus its due_at.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from eventsourcing.utils import get_topic

from crm.aggregates.complaint import Complaint
from crm.infra.event_store import CrmEventStore, insert_in_safe_calls, open_event_store
from crm.infra.logging import configure_logging
from crm.infra.postgres import start_embedded
from crm.infra.sla_saga import SagaThread, SlaSaga


def _filed(complaint_id: uuid.UUID, filed_at: datetime, due_at: datetime) -> Complaint.Filed:
    return Complaint.Filed(  # type: ignore[call-arg]
        originator_id=complaint_id, originator_version=1, timestamp=filed_at, originator_topic=get_topic(Complaint),
        customer_id=uuid.uuid4(), tier=None, category="bench", description="bench", order_id=None, sku=None,
        channel=None, sla_seconds=864_000, warn_ratio=0.8, sla_policy_version=0, due_at=due_at, warn_at=due_at,
        calendar=None, occurred_at=filed_at, actor="bench")


def breach_lag_ms(store: CrmEventStore, url: str, open_complaints: int = 100_000, due_soon: int = 2_000,
                  window_s: float = 20.0, lead_s: float = 10.0) -> tuple[float, float, int]:
    """(p50 ms, p99 ms, breaches) for the complaints that fell due in the window.

    The complaints due in 30 days go first and the saga catches up on them; only then are the
    `due_soon` ones appended, due from `lead_s` seconds on, so the window opens after the setup
    however long the setup took on this machine (a fixed lead of 130 s from the start was not
    enough on a slow day and measured the catch-up instead of the saga)."""
    now = datetime.now(timezone.utc)
    later = [(uuid.uuid4(), now + timedelta(days=30)) for _ in range(open_complaints - due_soon)]
    insert_in_safe_calls(store, [store.mapper.to_stored_event(_filed(i, now, due)) for i, due in later])
    saga = SlaSaga(store, url)
    while saga.follow():
        pass  # catch up on the bulk (not timed)
    opens = datetime.now(timezone.utc) + timedelta(seconds=lead_s)
    soon = [(uuid.uuid4(), opens + timedelta(seconds=window_s * i / due_soon)) for i in range(due_soon)]
    insert_in_safe_calls(store, [store.mapper.to_stored_event(_filed(i, now, due)) for i, due in soon])
    while saga.follow():
        pass
    if datetime.now(timezone.utc) >= opens:
        raise RuntimeError(f"the saga caught up after the window opened; raise lead_s (now {lead_s} s)")
    thread = SagaThread(saga).start()
    end = soon[-1][1] + timedelta(seconds=10)
    while datetime.now(timezone.utc) < end:
        time.sleep(0.5)
    thread.stop()
    lags = []
    for complaint_id, due in soon:
        breaches = [e for e in store.events.get(complaint_id) if isinstance(e, Complaint.SlaBreached)]
        if breaches:
            lags.append((breaches[0].occurred_at - due).total_seconds() * 1000)
    lags.sort()
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))] if lags else float("nan")
    return (statistics.median(lags) if lags else float("nan")), p99, len(lags)


def backlog_per_s(store: CrmEventStore, url: str, overdue: int = 2_000) -> tuple[float, int]:
    """(deadlines/s, deadlines) for a backlog: `overdue` complaints five minutes past their due
    time (a warning and a breach each, as after an outage), fired in the saga's own rounds of
    `follow()` and `fire_due()` from the first round to the last."""
    now = datetime.now(timezone.utc)
    saga = SlaSaga(store, url)
    items = [(uuid.uuid4(), now - timedelta(minutes=5)) for _ in range(overdue)]
    insert_in_safe_calls(store, [store.mapper.to_stored_event(_filed(i, now - timedelta(days=1), due))
                                 for i, due in items])
    while saga.follow():
        pass  # the deadlines known (not timed)
    started, fired = time.perf_counter(), 0
    while round_fired := saga.fire_due():
        fired += round_fired
        while saga.follow():
            pass  # the marks just recorded retire their deadlines, as in the saga's run()
    return fired / (time.perf_counter() - started), fired


def main() -> None:
    """`python -m bench.sla [--complaints N]`: the SLA breach-lag figure of `make bench` alone, on a
    fresh embedded PostgreSQL; `--backlog N`: the rate at which the saga clears N overdue complaints."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--complaints", type=int, default=100_000, help="open complaints")
    parser.add_argument("--backlog", type=int, default=0,
                        help="instead: how fast the saga fires this many overdue complaints' deadlines")
    args = parser.parse_args()
    configure_logging("WARNING", json=True)
    url = start_embedded(Path(tempfile.mkdtemp(prefix="crm-bench-sla-")))
    if args.backlog:
        rate, fired = backlog_per_s(open_event_store(url), url, args.backlog)
        print(f"backlog: {fired:,} deadlines of {args.backlog:,} overdue complaints fired at {rate:,.0f}/s")
        return
    p50, p99, breaches = breach_lag_ms(open_event_store(url), url, args.complaints)
    print(f"breach lateness p50 {p50:,.1f} ms, p99 {p99:,.1f} ms; {breaches:,} breaches among "
          f"{args.complaints:,} open complaints")


if __name__ == "__main__":
    main()
