"""`make bench`'s relay figures with the relay sharded as `crm relay` runs it (one process per
shard): every event appended is acknowledged by its own shard's relay and gets a lag, each shard's
relay published up to the head, and no shard process is left behind, after a failure either."""

from __future__ import annotations

import multiprocessing
import time
from urllib.parse import urlparse, urlunparse

import pytest

from bench.followers import _LagRelays, relay_events_per_s, relay_lag_ms
from bench.workload import write_history
from crm.infra.followers import open_tracking
from crm.infra.relay import Shard, tracked_positions


def test_the_relay_lag_of_two_shards_covers_every_event(fresh_system) -> None:  # type: ignore[no-untyped-def]
    rt, _ = fresh_system(with_runners=False)
    p50, p99, achieved, events = relay_lag_ms(rt.store, rt.database_url, rate=60, seconds=1, writer="log", shards=2)
    assert events == 60  # 3 writer processes of 20 customers, one event each
    assert 0 < p50 <= p99
    assert achieved > 0
    tracking = open_tracking(rt.database_url, "relay")
    try:
        rows = tracked_positions(tracking)
    finally:
        tracking.datastore.close()
    head = rt.store.position()
    assert rows[Shard(0, 2).name] >= head and rows[Shard(1, 2).name] >= head  # each shard's own relay ran
    assert multiprocessing.active_children() == []


def test_a_shard_that_cannot_start_is_reported_and_leaves_no_process(fresh_system) -> None:  # type: ignore[no-untyped-def]
    rt, _ = fresh_system(with_runners=False)
    gone = urlunparse(urlparse(rt.database_url)._replace(path="/no_such_database"))
    with pytest.raises(RuntimeError, match=r"relay shards failed to start: shard [01]: OperationalError"):
        _LagRelays(rt.store, gone, "127.0.0.1:1", 2)
    assert multiprocessing.active_children() == []


def test_shards_connected_but_never_started_are_stopped_by_close(fresh_system, kafka_broker) -> None:  # type: ignore[no-untyped-def]
    rt, _ = fresh_system(with_runners=False)
    relays = _LagRelays(rt.store, rt.database_url, kafka_broker.bootstrap, 2)  # both connected, waiting for start()
    assert len(multiprocessing.active_children()) == 2
    started = time.monotonic()
    relays.close()
    assert multiprocessing.active_children() == []
    assert time.monotonic() - started < 30  # terminated, not waited out (they would wait 600 s)


def test_two_relay_shards_publish_the_whole_log_and_end(fresh_system) -> None:  # type: ignore[no-untyped-def]
    rt, _ = fresh_system(with_runners=False)
    head = write_history(rt.store, 20)
    assert relay_events_per_s(rt.store, rt.database_url, shards=2) > 0
    tracking = open_tracking(rt.database_url, "relay")
    try:
        rows = tracked_positions(tracking)
    finally:
        tracking.datastore.close()
    assert rows[Shard(0, 2).name] >= head and rows[Shard(1, 2).name] >= head  # both shards went through the log
    assert multiprocessing.active_children() == []
