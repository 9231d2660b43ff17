"""Pausing Python's cycle collector around loops that make many short-lived objects."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def cycle_collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block, back on (if it was on) after it.

    For loops that allocate many small tracked objects which reference counting alone frees
    (no cycles): every collection walks all of them again. It ran every ~100 records in the
    relay (~8 % of its CPU) and was a fifth of a million-customer re-tier run. Process-wide, so
    only around CPU-bound work (a run's grading and encoding, a relay batch), not around
    open-ended waits; whatever garbage
    other threads make meanwhile is collected as usual right after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
