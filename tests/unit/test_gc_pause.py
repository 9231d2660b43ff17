"""The cycle-collector pause: counted across threads, restored to what it was."""

import gc
import threading

from crm.infra.gc_pause import cycle_collector_paused


def test_the_collector_comes_back_when_the_last_of_overlapping_pauses_ends():
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def second() -> None:
        first_in.wait()
        with cycle_collector_paused():
            second_in.set()
            first_out.wait()
            seen.append(gc.isenabled())  # the first pause has ended; this one still holds

    assert gc.isenabled()
    thread = threading.Thread(target=second)
    thread.start()
    with cycle_collector_paused():
        first_in.set()
        second_in.wait()
    first_out.set()
    thread.join()
    assert seen == [False] and gc.isenabled()


def test_a_pause_leaves_a_disabled_collector_disabled():
    gc.disable()
    try:
        with cycle_collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
