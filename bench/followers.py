"""Benchmarks of the log's followers: the Kafka relay, hash-chain verification, audit history."""

from __future__ import annotations

import bisect
import itertools
import multiprocessing
import statistics
import time
from datetime import datetime, timezone
from queue import Empty
from typing import Any, Callable, Iterable
from uuid import UUID

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
from crm.infra.followers import open_tracking
from crm.infra.relay import APP, Relay, RelayThread, Shard, forget_positions, lease_holders
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
        group = _ShardProcesses(_shard_process, (url, broker.bootstrap), shards)
        try:
            started = time.perf_counter()
            group.start()
            group.results(600)
            elapsed = time.perf_counter() - started
        finally:  # a shard that failed leaves the others waiting: none is left behind
            group.close()
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


def _shard_process(url: str, bootstrap: str, shard: Shard, ready: Any, go: Any, out: Any) -> None:
    """One shard of relay_events_per_s, in a process of its own: reports as `_reporting` says."""

    def publish(connected: Callable[[], None]) -> float:
        from crm.infra.event_store import open_event_store
        from crm.infra.logging import configure_logging

        configure_logging("WARNING", json=True)

        def connected_then_started() -> None:
            connected()
            _wait_for_start(go)

        return _publish_all(open_event_store(url), url, bootstrap, shard, connected_then_started)

    _reporting(ready, out, shard.index, publish)


class _ShardProcesses:
    """One spawned daemon process per shard, running target(*args, Shard(i, shards), ready, go, out)
    under `_reporting`. Built once every shard has reported connected; start() lets them all go at
    once; results(seconds) gathers one result per shard. A shard's error or silent exit is raised by
    shard (`_gather`). close() lets finished processes end and terminates any other, so none is
    left behind after a failure."""

    def __init__(self, target: Callable[..., None], args: tuple[Any, ...], shards: int) -> None:
        self.finished = False
        spawn = multiprocessing.get_context("spawn")
        ready, self.go, self.out = spawn.Queue(), spawn.Event(), spawn.Queue()
        self.processes = [spawn.Process(target=target, daemon=True,
                                        args=(*args, Shard(i, shards), ready, self.go, self.out))
                          for i in range(shards)]
        try:
            for process in self.processes:
                process.start()
            _gather(ready, self.processes, 60, "relay shards failed to start")
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        self.go.set()

    def results(self, seconds: float) -> dict[int, Any]:
        results = _gather(self.out, self.processes, seconds, "relay shards failed")
        self.finished = True
        return results

    def close(self) -> None:
        for process in self.processes:
            if process.pid is None:
                continue  # never started
            process.join(timeout=30 if self.finished else 0)  # finished: it is closing its relay
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)


START_WAIT_SECONDS = 600  # how long a connected shard process waits for the benchmark to start it


def _wait_for_start(go: Any) -> None:
    if not go.wait(timeout=START_WAIT_SECONDS):
        raise TimeoutError(f"no start signal in {START_WAIT_SECONDS} s")


def _reporting(ready: Any, out: Any, index: int, work: Callable[[Callable[[], None]], Any]) -> None:
    """Run `work(connected)` in a shard process so that the benchmark always hears of it: exactly
    one (index, None) on `ready` when work calls connected(), then one (index, result) on `out`;
    an exception instead goes, as text, to whichever of the two the benchmark waits on."""
    connected = False

    def report_connected() -> None:
        nonlocal connected
        ready.put((index, None))
        connected = True

    try:
        result = work(report_connected)
    except Exception as error:
        (out if connected else ready).put((index, f"{type(error).__name__}: {error}"))
        return
    out.put((index, result))


def _gather(queue: Any, processes: list[Any], seconds: float, what: str) -> dict[int, Any]:
    """One report from each shard process (see `_reporting`): {index: result}. RuntimeError naming
    the shards that reported an error, or when a process exited without reporting (a crash);
    TimeoutError naming the shards not heard from within `seconds`."""
    reports: dict[int, Any] = {}
    deadline, suspect = time.monotonic() + seconds, False
    while len(reports) < len(processes):
        try:
            index, result = queue.get(timeout=1)
        except Empty:
            if time.monotonic() > deadline:
                missing = sorted(set(range(len(processes))) - set(reports))
                raise TimeoutError(f"{what}: shards {missing} not heard from in {seconds:g} s") from None
            # A process writes its report before it exits: one that exited and is not heard from
            # a second later never reported.
            if sum(process.exitcode is not None for process in processes) > len(reports):
                if suspect:
                    codes = {i: p.exitcode for i, p in enumerate(processes) if i not in reports}
                    raise RuntimeError(f"{what}: a shard process exited without reporting (exit codes {codes})")
                suspect = True
            continue
        reports[index], suspect = result, False
    failed = [f"shard {index}: {result}" for index, result in sorted(reports.items()) if isinstance(result, str)]
    if failed:
        raise RuntimeError(f"{what}: " + "; ".join(failed))
    return reports


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
                 writer: str = "commands", shards: int = 1) -> tuple[float, float, float, int]:
    """End-to-end relay lag under load, while the relay runs as in `crm up` (shards=1: one relay in
    a thread of this process) or as `crm relay` with CRM_RELAY_SHARDS=shards (one process per
    shard). Returns (p50 ms, p99 ms, commits/s achieved, events).

    writer="commands": RegisterCustomer through the command bus at `rate` per second (3 writer
    processes of 8 paced threads each, as API processes with their request threads would be, so
    group commit batches them). An event's lag runs from its recording (the stored timestamp, taken
    when the command made it, before its commit) until the broker acknowledged its batch (when the
    relay of its shard advanced its position past it).

    writer="log": the same RegisterCustomer events, mapped and sealed beforehand by the real mapper,
    appended one customer per call at `rate` per second (3 processes of 8 paced threads, through
    each process's group commit, as the commands mode's are). It puts the rate the target names
    on the log when the command path cannot reach it on this machine; the relay sees the same
    events in the same kind of transactions, but the writers spend far less CPU than commands do,
    so the relay has more of the 2 cores than it would at 1,000 real commands/s. An event's lag
    runs from the call that appends it (before group commit's queue and the commit itself) until
    the broker acknowledged it."""
    broker = start_local_broker()
    relays: _LagRelays | None = None
    try:
        start_position = store.position()
        forget_positions(url)  # every shard goes on from start_position: the APP row says all up to it is out
        tracking = open_tracking(url, "relay")
        try:
            tracking.insert_tracking(Tracking(APP, start_position))
        finally:
            tracking.datastore.close()
        relays = _LagRelays(store, url, broker.bootstrap, shards)  # connected, positions at start_position
        processes = 3
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            if writer == "log":  # the events are made before the relay starts: only the commits are timed
                made = pool.starmap(_registrations, [(url, n, round(rate * seconds / processes)) for n in range(processes)])
            relays.start()
            if writer == "log":
                parts = pool.starmap(_append_paced, [(url, events, rate / processes, seconds, 8) for events in made])
                commits, counted = [part for part, _ in parts], sum(len(part) for part, _ in parts)
            else:
                parts = pool.starmap(_write_customers, [(url, n, rate / processes, seconds, 8) for n in range(processes)])
                commits, counted = [], sum(count for count, _ in parts)
            took = max(seconds_taken for _, seconds_taken in parts)  # the writers' own window, start-up left out
        head = store.position()
        acks = relays.finish(head)
    finally:  # a failed run leaves no relay holding a lease, nor a broker
        if relays is not None:
            relays.close()
        broker.stop()
    committed = {position: at for part in commits for position, at in part}
    began = []
    for notification in store.recorder.select_notifications(start=start_position + 1, limit=head):
        at = committed.get(notification.id) if writer == "log" else \
            store.mapper.to_domain_event(notification).timestamp.timestamp()
        if at is not None:  # None: an event of another writer (each call here appends one event)
            began.append((notification.id, notification.originator_id, at))
    lags = event_lags_ms(began, acks, shards)
    achieved = counted / took
    cuts = statistics.quantiles(lags, n=100)
    return cuts[49], cuts[98], achieved, len(lags)


Acks = list[tuple[int, float]]  # (position the broker has acknowledged everything up to, time.time())


def event_lags_ms(events: Iterable[tuple[int, UUID, float]], acks: dict[int, Acks], shards: int) -> list[float]:
    """Each event's lag in ms, from (position, aggregate id, when it began) to the first time its
    own shard's relay had the broker's acknowledgement of every message up to a position at or past
    it (another shard's relay moving past the position says nothing about this event). Each shard's
    acks are in the order its relay advanced, so their positions rise."""
    owners = [Shard(i, shards) for i in range(shards)]
    acked_up_to = {i: [position for position, _ in acks[i]] for i in range(shards)}
    lags = []
    for position, originator_id, began in events:
        shard = next(owner.index for owner in owners if owner.owns(originator_id))
        first = bisect.bisect_left(acked_up_to[shard], position)
        if first == len(acked_up_to[shard]):
            raise ValueError(f"shard {shard} never acknowledged position {position}")
        lags.append((acks[shard][first][1] - began) * 1000)
    return lags


def _record_acks(relay: Relay) -> Acks:
    """From now on, each time the relay advances its position (after the broker acknowledged every
    message up to it), note the position and the time."""
    acks: Acks = []
    advance = relay._advance

    def tracked(position: int) -> None:
        advance(position)
        acks.append((position, time.time()))

    relay._advance = tracked  # type: ignore[method-assign]
    return acks


class _LagRelays:
    """The relays of relay_lag_ms, connected to the broker on creation, publishing from start(),
    stopped by finish(head) once each has published up to head: acks per shard index. A shard
    process that fails says so (its error, named by shard), and none is left behind on a failure
    (they are daemons, terminated by close(), and wait for start() a bounded time)."""

    def __init__(self, store: CrmEventStore, url: str, bootstrap: str, shards: int) -> None:
        self.shards, self.thread = shards, None  # type: ignore[var-annotated]
        if shards == 1:
            self.relay = Relay(store, url, bootstrap)
            try:
                self.relay._ensure_producer()
            except BaseException:
                self.relay.close()
                raise
            self.acks = _record_acks(self.relay)
            return
        self.head = multiprocessing.get_context("spawn").Queue()  # one head per shard process, put by finish()
        self.processes = _ShardProcesses(_lag_shard_process, (url, bootstrap, self.head), shards)

    def start(self) -> None:
        if self.shards == 1:
            self.thread = RelayThread(self.relay).start()
        else:
            self.processes.start()

    def finish(self, head: int) -> dict[int, Acks]:
        if self.shards == 1:
            if not _caught_up(self.relay, head):
                raise TimeoutError(f"the relay did not reach {head} in {CATCH_UP_SECONDS} s")
            return {0: self.acks}
        for _ in range(self.shards):
            self.head.put(head)
        results = self.processes.results(CATCH_UP_SECONDS + 30)
        late = sorted(index for index, result in results.items() if result is None)
        if late:
            raise TimeoutError(f"shards {late} did not reach {head} in {CATCH_UP_SECONDS} s")
        return results

    def close(self) -> None:
        if self.shards == 1:
            if self.thread is not None:
                self.thread.stop()  # stops and closes the relay
            else:
                self.relay.close()
        else:
            self.processes.close()


CATCH_UP_SECONDS = 30


def _caught_up(relay: Relay, head: int) -> bool:
    deadline = time.monotonic() + CATCH_UP_SECONDS
    while relay.status.position < head:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _lag_shard_process(url: str, bootstrap: str, head: Any, shard: Shard, ready: Any, go: Any, out: Any) -> None:
    """One shard's relay of relay_lag_ms, in a process of its own as `crm relay` runs it; reports as
    `_reporting` says: connected, then its acks once it has published up to the head it is given
    (None: not in time)."""
    _reporting(ready, out, shard.index, lambda connected: _lag_shard(url, bootstrap, shard, connected, go, head))


def _lag_shard(url: str, bootstrap: str, shard: Shard, connected: Callable[[], None], go: Any,
               head: Any) -> Acks | None:
    from crm.infra.event_store import open_event_store
    from crm.infra.logging import configure_logging

    configure_logging("WARNING", json=True)
    relay = Relay(open_event_store(url), url, bootstrap, shard=shard)
    thread: RelayThread | None = None
    try:
        relay._ensure_producer()
        acks = _record_acks(relay)
        connected()
        _wait_for_start(go)
        thread = RelayThread(relay).start()
        return acks if _caught_up(relay, head.get(timeout=START_WAIT_SECONDS)) else None
    finally:
        if thread is not None:
            thread.stop()  # stops and closes the relay
        else:
            relay.close()


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
