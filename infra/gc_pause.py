"""Pausing Python's cycle collector around loops that make many short-lived objects."""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Iterator


_lock = threading.Lock()
_depth = 0  # pauses in force, over all threads
_resume = False  # whether the collector was on when the first of them began


@contextmanager
def cycle_collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block, back on (if it was on) after it.

    For loops that allocate many small tracked objects which reference counting alone frees
    (no cycles): every collection walks all of them again. It ran every ~100 records in the
    relay (~8 % of its CPU) and was a fifth of a million-customer re-tier run. Process-wide, so
    only around CPU-bound work (a run's grading and encoding, a relay batch), not around
    open-ended waits; whatever garbage other threads make meanwhile is collected as usual right
    after. Pauses of several threads (a run's two fetches, the relay beside a run) are counted:
    the collector comes back when the last one ends, not when the first does."""
    global _depth, _resume
    with _lock:
        if _depth == 0:
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _resume:
                gc.enable()


def freeze_startup_objects() -> int:
    """Collect once, then move every object alive now into the collector's permanent generation
    (`gc.freeze`); returns how many were moved. For a server process once it is built: its modules,
    routes, models and pools (about 96,000 objects in an API worker) live as long as the process,
    yet every full collection walked all of them, 60-90 ms each on this machine, stopping every
    request in flight on that process; under load a worker ran one every 2 s or so (BENCHMARKS.md,
    "Levers tried for commands and queries"). After the freeze a full collection walks only what
    was made since. The price: cyclic garbage among the frozen objects is never freed, so call it
    once, after start-up, not around work."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
