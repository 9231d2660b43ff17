"""Benchmarks of the log's followers: the Kafka relay, hash-chain verification, audit history."""

from __future__ import annotations

import itertools
import multiprocessing
import statistics
import time
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from eventsourcing.persistence import Tracking
from psycopg_pool import ConnectionPool

from crm.infra.audit_chain import HashChainer
from crm.infra.audit_history import history
from crm.infra.audit_verify import verify
from crm.infra.event_store import CrmEventStore
from crm.infra.kafka import start_local_broker
from crm.commands.base import Context
from crm.commands.bus import dispatch
from crm.commands.customers import RegisterCustomer
from crm.infra.relay import Relay, RelayThread, Shard, forget_position, forget_positions, lease_holders
from crm.infra.unit_of_work import EventStoreUnitOfWork
from bench.workload import long_history_customer


def relay_events_per_s(store: CrmEventStore, url: str, shards: int = 1) -> float:
    """Publish the whole log to a fresh local broker (acks=all, idempotent): events per second. With
    shards > 1, one process per shard (as `crm relay` runs them), timed from when all are connected."""
    forget_positions(url)  # every repeat publishes the whole log again (every shard's position)
    broker = start_local_broker()
    try:
        if shards == 1:
            return store.position() / _publish_all(store, url, broker.bootstrap, Shard())
        spawn = multiprocessing.get_context("spawn")
        ready, go, done = spawn.Queue(), spawn.Event(), spawn.Queue()
        processes = [spawn.Process(target=_shard_process,
                                   args=(url, broker.bootstrap, Shard(i, shards), ready, go, done))
                     for i in range(shards)]
        for process in processes:
            process.start()
        for _ in processes:
            ready.get(timeout=60)
        started = time.perf_counter()
        go.set()
        for _ in processes:
            done.get(timeout=600)
        elapsed = time.perf_counter() - started
        for process in processes:
            process.join()
        return store.position() / elapsed
    finally:
        broker.stop()


def _publish_all(store: CrmEventStore, url: str, bootstrap: str, shard: Shard,
                 ready: Callable[[], None] = lambda: None) -> float:
    """One relay (or shard) from position 0 to the log's head: seconds, from connected to done."""
    relay = Relay(store, url, bootstrap, shard=shard)
    try:
        relay._ensure_producer()  # connected and topics created: the steady state is timed
        ready()
        head, started = store.position(), time.perf_counter()
        while relay.status.position < head:
            relay.publish_next()
            if relay.status.standby:
                raise RuntimeError("another relay holds the lease: " + ", ".join(lease_holders(url)))
        return time.perf_counter() - started
    finally:
        relay.close()


def _shard_process(url: str, bootstrap: str, shard: Shard, ready: Any, go: Any, done: Any) -> None:
    from crm.infra.event_store import open_event_store
    from crm.infra.logging import configure_logging

    configure_logging("WARNING", json=True)

    def connected() -> None:
        ready.put(shard.index)
        go.wait()

    done.put(_publish_all(open_event_store(url), url, bootstrap, shard, connected))


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
    customer = long_history_customer(store, 10_000)
    HashChainer(store, url).catch_up()
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        lines = sum(1 for _ in history(store, pool, customer.id))
        timings.append((time.perf_counter() - started) * 1000)
        assert lines == 10_000, lines
    return statistics.median(timings)


def relay_lag_ms(store: CrmEventStore, url: str, rate: int = 1_000, seconds: float = 10.0, *,
                 writer: str = "commands") -> tuple[float, float, float, int]:
    """End-to-end relay lag under load, while the relay runs as in `crm up`. Returns (p50 ms, p99 ms,
    commits/s achieved, events).

    writer="commands": RegisterCustomer through the command bus at `rate` per second (3 writer
    processes of 8 paced threads each, as API processes with their request threads would be, so
    group commit batches them). An event's lag runs from its recording (the stored timestamp, taken
    when the command made it, before its commit) until the broker acknowledged its batch (when the
    relay advanced its position past it).

    writer="log": the same RegisterCustomer events, mapped and sealed beforehand by the real mapper,
    appended one customer per call at `rate` per second (3 processes of 8 paced threads, through
    each process's group commit, as the commands mode's are). It puts the rate the target names
    on the log when the command path cannot reach it on this machine; the relay sees the same
    events in the same kind of transactions, but the writers spend far less CPU than commands do,
    so the relay has more of the 2 cores than it would at 1,000 real commands/s. An event's lag
    runs from the call that appends it (before group commit's queue and the commit itself) until
    the broker acknowledged it."""
    broker = start_local_broker()
    relay = Relay(store, url, broker.bootstrap)
    thread: RelayThread | None = None
    try:
        relay._ensure_producer()
        acks: list[tuple[int, float]] = []
        advance = relay._advance

        def tracked(position: int) -> None:  # the broker acknowledged everything up to position
            advance(position)
            acks.append((position, time.time()))

        relay._advance = tracked  # type: ignore[method-assign]
        start_position = store.position()
        forget_position(relay.tracking)
        relay.tracking.insert_tracking(Tracking("crm", start_position))
        relay.status.position = start_position  # the relay keeps its position in memory between rounds
        processes = 3
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            if writer == "log":  # the events are made before the relay starts: only the commits are timed
                made = pool.starmap(_registrations, [(url, n, round(rate * seconds / processes)) for n in range(processes)])
            thread = RelayThread(relay).start()
            if writer == "log":
                parts = pool.starmap(_append_paced, [(url, events, rate / processes, seconds, 8) for events in made])
                commits, counted = [part for part, _ in parts], sum(len(part) for part, _ in parts)
            else:
                parts = pool.starmap(_write_customers, [(url, n, rate / processes, seconds, 8) for n in range(processes)])
                commits, counted = [], sum(count for count, _ in parts)
            took = max(seconds_taken for _, seconds_taken in parts)  # the writers' own window, start-up left out
        head, deadline = store.position(), time.monotonic() + 30
        while relay.status.position < head and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:  # a failed run leaves no relay holding the lease, nor a broker
        if thread is not None:
            thread.stop()
        else:
            relay.close()
        broker.stop()
    committed = {position: at for part in commits for position, at in part}
    lags = []
    for notification in store.recorder.select_notifications(start=start_position + 1, limit=head):
        began = committed.get(notification.id) if writer == "log" else \
            store.mapper.to_domain_event(notification).timestamp.timestamp()
        if began is None:
            continue  # an event of another writer (each call here appends one event)
        acked = next(at for position, at in acks if position >= notification.id)
        lags.append((acked - began) * 1000)
    achieved = counted / took
    cuts = statistics.quantiles(lags, n=100)
    return cuts[49], cuts[98], achieved, len(lags)


def _registrations(url: str, n: int, count: int) -> list[list[Any]]:
    """`count` new customers' RegisterCustomer events, fields sealed by the real mapper under keys
    made with them (each stored in its event's commit, as a command's), ready to append (a writer process of relay_lag_ms with writer="log")."""
    from crm.aggregates.customer import Customer
    from crm.infra.event_store import open_event_store

    store = open_event_store(url)
    now = datetime.now(timezone.utc)  # as the commands mode's RegisterCustomer: a name and a region
    customers = [Customer.register(name=f"Lag {n}-{i}", region="North", occurred_at=now, actor="bench")
                 for i in range(count)]
    made = [[store.mapper.to_stored_event(e) for e in c.collect_events()] for c in customers]
    store.close()
    return made


def _paced(threads: int, rate: float, seconds: float, items: Callable[[int], Iterable[Any]],
           act: Callable[[Any], Any]) -> tuple[list[Any], float]:
    """`act` on each of thread t's `items(t)`, from `threads` threads paced at `rate` per second in
    total for at most `seconds` (their turns interleave; a thread behind schedule acts as fast as
    it can until it catches up); what every call returned, and the seconds from the first turn to
    the last call's end."""
    from concurrent.futures import ThreadPoolExecutor

    interval, started = threads / rate, time.perf_counter()

    def paced(t: int) -> list[Any]:
        done, next_at = [], started + t * interval / threads
        for item in items(t):
            if time.perf_counter() >= started + seconds:
                break
            time.sleep(max(0.0, next_at - time.perf_counter()))
            done.append(act(item))
            next_at += interval
        return done

    with ThreadPoolExecutor(threads) as pool:
        results = [result for part in pool.map(paced, range(threads)) for result in part]
    return results, time.perf_counter() - started


def _append_paced(url: str, events: list[list[Any]], rate: float, seconds: float, threads: int
                  ) -> tuple[list[tuple[int, float]], float]:
    """Append each customer's events at `rate` per second for at most `seconds`, from `threads`
    paced threads sharing the process's group commit: (notification id, time of the call) of
    each, and the seconds the appends took."""
    from crm.infra.event_store import open_event_store

    store = open_event_store(url)

    def append(stored: list[Any]) -> tuple[int, float]:
        called = time.time()  # before the queue and the commit: the lag is never understated
        return store.group_commit.append(stored), called

    committed = _paced(threads, rate, seconds, lambda t: events[t::threads], append)
    store.close()
    return committed


def _write_customers(url: str, n: int, rate: float, seconds: float, threads: int) -> tuple[int, float]:
    """A writer process of relay_lag_ms: RegisterCustomer at `rate` per second for `seconds`, from
    `threads` paced threads sharing the process's event store (and so its group commit): how many,
    and the seconds they took."""
    from crm.infra.event_store import open_event_store

    store, ctx = open_event_store(url), Context(actor="bench")

    def register(name: str) -> None:
        dispatch(RegisterCustomer(name=name, region="North"), EventStoreUnitOfWork(store, "EUR"), ctx)

    def names(t: int) -> Iterable[str]:
        return (f"Lag {n}-{t}-{count}" for count in itertools.count())

    registered, took = _paced(threads, rate, seconds, names, register)
    store.close()
    return len(registered), took
