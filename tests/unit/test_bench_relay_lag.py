"""How `make bench` turns the relays' acknowledgements into each event's lag: an event's lag ends
when its own shard's relay has it acknowledged, not when any relay has moved past its position."""

from __future__ import annotations

import math
import multiprocessing
import os
import uuid

import pytest

from bench.followers import _gather, _reporting, event_lags_ms
from crm.infra.relay import Shard


def aggregate_of(shard: Shard) -> uuid.UUID:
    while True:
        candidate = uuid.uuid4()
        if shard.owns(candidate):
            return candidate


def test_an_event_waits_for_its_own_shards_acknowledgement() -> None:
    first, second = aggregate_of(Shard(0, 2)), aggregate_of(Shard(1, 2))
    acks = {0: [(5, 100.0), (12, 101.0)],   # shard 0 moved past 7 at 101.0 (at 100.0 only up to 5)
            1: [(8, 100.5), (12, 103.0)]}   # shard 1 had 7 acknowledged at 100.5, 10 at 103.0
    events = [(7, first, 99.0), (7, second, 99.0), (10, second, 99.5), (5, first, 99.9)]
    assert event_lags_ms(events, acks, 2) == pytest.approx([2_000.0, 1_500.0, 3_500.0, 100.0])


def test_one_relay_acknowledges_every_aggregate() -> None:
    acks = {0: [(3, 10.0), (9, 10.25)]}
    assert event_lags_ms([(4, uuid.uuid4(), 10.0), (3, uuid.uuid4(), 9.5)], acks, 1) == pytest.approx([250.0, 500.0])


def test_an_event_its_shard_never_acknowledged_is_an_error_not_a_lag() -> None:
    late = aggregate_of(Shard(1, 2))
    with pytest.raises(ValueError, match="shard 1 never acknowledged position 9"):
        event_lags_ms([(9, late, 1.0)], {0: [(20, 2.0)], 1: [(8, 2.0)]}, 2)


def test_a_shard_process_that_exits_without_reporting_is_named_at_once() -> None:
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Queue()
    crashed = spawn.Process(target=os._exit, args=(3,))  # as a crash would: no report at all
    crashed.start()
    with pytest.raises(RuntimeError, match=r"relay shards: a shard process exited without reporting \(exit codes \{0: 3\}\)"):
        _gather(ready, [crashed], 60, "relay shards")


def test_a_shard_that_fails_before_it_connects_reports_its_error_by_shard() -> None:
    spawn = multiprocessing.get_context("spawn")
    ready, out = spawn.Queue(), spawn.Queue()
    failing = spawn.Process(target=_reporting, args=(ready, out, 0, math.sqrt))  # sqrt(a function): TypeError
    failing.start()
    with pytest.raises(RuntimeError, match=r"relay shards failed to start: shard 0: TypeError"):
        _gather(ready, [failing], 60, "relay shards failed to start")
    failing.join(timeout=10)
    assert out.empty()
