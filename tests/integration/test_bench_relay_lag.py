"""`make bench`'s relay lag with the relay sharded as `crm relay` runs it (one process per shard):
every event appended is acknowledged by its own shard's relay and gets a lag, and the shards'
processes are gone afterwards."""

from __future__ import annotations

import multiprocessing

from bench.followers import relay_lag_ms


def test_the_relay_lag_of_two_shards_covers_every_event(fresh_system) -> None:  # type: ignore[no-untyped-def]
    rt, _ = fresh_system(with_runners=False)
    p50, p99, achieved, events = relay_lag_ms(rt.store, rt.database_url, rate=60, seconds=1, writer="log", shards=2)
    assert events == 60  # 3 writer processes of 20 customers, one event each
    assert 0 < p50 <= p99
    assert achieved > 0
    assert multiprocessing.active_children() == []
